//! The embedded store's one writer and its group commit.
//!
//! Every write of the embedded store is a job for the writer. A round takes
//! every queued job (up to [`MAX_ROUND`]), runs each (reads, checks, one
//! fjall batch commit into the journal, no fsync), then fsyncs once and only
//! then answers the round's callers. So:
//! - async tasks never block on fjall's journal or on disk writeback: they
//!   queue a job and await its answer;
//! - the disk is busy back to back under load, one fsync covering everything
//!   written while the previous one ran (the group commit);
//! - read-check-write sequences need no locks: writes run one at a time.
//!
//! Log appends and sends are the exception to "one batch per job": a job
//! assigns the seqs, and the round writes each user's entries of the whole
//! round as one row, in one batch after its jobs and before the fsync. A
//! group's concurrent sends to the same members then cost one row per member
//! and round, not per message, and none for a member whose open group run
//! already covers them ([`super::log`]). A send's
//! message and idempotency record go into that batch too, so a send is
//! atomic; later jobs of the round see it through the round
//! (`Round::sends`). A job whose own batch must come after those rows in
//! the journal writes them first ([`Round::flush_rows`]).
//!
//! Rounds run on tokio's blocking pool, one task while jobs are queued: it
//! ends when the queue is empty (an idle store holds no thread) and under load
//! runs rounds back to back on one pool thread. Being a blocking task also
//! keeps a paused test clock from jumping ahead while a write is in flight, as
//! it would if the runtime looked idle while waiting for a thread of its own.
//!
//! The store's stop closes the writer ([`Writer::close`]): a job submitted
//! after that is refused with UNAVAILABLE, and the stop waits until every
//! job queued or in a running round has been answered.
//!
//! Reads do not go through the writer; they run on the caller's task.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::PersistMode;
use natter_proto::v1;
use natter_types::{Error, Result, UserId};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::conversations::ConversationRows;
use super::log::Run;
use super::{Inner, UserMap, storage_err};
use crate::Appended;

/// Jobs per round at most, so one round's callers wait a bounded time.
const MAX_ROUND: usize = 1024;
/// A round this long is logged (at debug) with the time of each phase.
const SLOW_ROUND: Duration = Duration::from_millis(20);

/// Called once the round's fsync is done (or failed).
type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// Runs in a writer round; `Some` if its caller waits for the fsync.
type Job = Box<dyn FnOnce(&mut Round<'_>) -> Option<Reply> + Send>;

/// What a job sees: the store, and the round it is part of.
pub(super) struct Round<'a> {
    pub(super) inner: &'a Inner,
    pub(super) dirty: bool,
    /// Log appends of this round, published to readers after the fsync.
    appended: Vec<(Vec<UserId>, Vec<Appended>)>,
    /// The log entries appended in this round, one run of consecutive seqs
    /// per user, written as one row each after the round's jobs.
    pub(super) runs: UserMap<Run>,
    /// The sends fanned out in this round, by idempotency key; the batch
    /// that writes their log entries writes them too.
    pub(super) sends: HashMap<Vec<u8>, RoundSend>,
    /// Group timeline rows of this round, written with the log rows.
    pub(super) timeline_rows: Vec<(Vec<u8>, fjall::Slice)>,
    /// The timelines this round moved, and where they were, to put back if
    /// its rows fail.
    pub(super) timeline_before: HashMap<Arc<str>, u64>,
    /// Conversation heads and users' states of this round, written with
    /// the log rows.
    pub(super) conversations: ConversationRows,
    /// A rows batch written early ([`Round::flush_rows`]) failed: so does
    /// the round, and its later jobs do not run.
    failed: Option<Error>,
}

/// A send fanned out in a round.
pub(super) struct RoundSend {
    /// Its idempotency record, marked fanned out.
    pub(super) record: v1::DedupRecord,
    /// Its message's key and value in `messages`, if the message was first
    /// stored in this round.
    pub(super) message: Option<(Vec<u8>, Vec<u8>)>,
}

impl Round<'_> {
    /// Commits a batch into fjall's journal; the round's fsync makes it durable.
    pub(super) fn commit(&mut self, batch: fjall::OwnedWriteBatch) -> Result<()> {
        self.dirty = true;
        batch.commit().map_err(storage_err)
    }

    /// Makes the appended log entries readable once the round is durable.
    pub(super) fn appended(&mut self, users: Vec<UserId>, at: Vec<Appended>) {
        self.appended.push((users, at));
    }

    /// Writes the rows the round's jobs staged so far, before a job's own
    /// batch that must follow them in the journal.
    pub(super) fn flush_rows(&mut self) -> Result<()> {
        let written = self.write_rows();
        if let Err(e) = &written {
            self.failed = Some(e.clone());
        }
        written
    }

    /// Forces an fsync at the end of the round (for `sync_all`).
    pub(super) fn sync(&mut self) {
        self.dirty = true;
    }
}

/// The handle to the writer: the job queue. Dropping it waits for a running
/// round to finish, so the database is closed when the store is gone.
pub(super) struct Writer {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    idle: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// A blocking task is running rounds.
    running: bool,
    /// The store is stopping: no new jobs.
    closed: bool,
}

fn stopped() -> Error {
    Error::unavailable("storage: the store's writer has stopped")
}

fn stopping() -> Error {
    Error::unavailable("the store is stopping")
}

impl Writer {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner, shared: Arc::new(Shared { state: Mutex::new(State::default()), idle: Condvar::new() }) }
    }

    /// Runs `op` in a writer round. Its writes are durable when this
    /// returns `Ok`; an `Err` from `op` is returned at once (it wrote nothing).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Round<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.submit(true, op).await
    }

    /// Like [`write`](Self::write) but answers right after the commit,
    /// without waiting for the fsync: for records whose loss in a crash is
    /// harmless (a later fsync still covers them).
    pub(super) async fn write_unsynced<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Round<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.submit(false, op).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        durable: bool,
        op: impl FnOnce(&mut Round<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |round| match round.failed.clone().map_or_else(|| op(round), Err) {
            Ok(value) if durable => Some(Box::new(move |synced: Result<()>| {
                let _ = answer.send(synced.map(|()| value));
            })),
            result => {
                let _ = answer.send(result);
                None
            }
        });
        let start = {
            let mut state = self.shared.state.lock();
            if state.closed {
                return Err(stopping());
            }
            state.queue.push_back(job);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let inner = self.inner.clone();
            let mut rounds = Rounds { shared: self.shared.clone(), armed: true };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || rounds.run(&inner))),
                // Not on a runtime: `rounds` is dropped and fails the queue.
                Err(_) => drop(rounds),
            }
        }
        answered.await.map_err(|_| stopped())?
    }

    /// Refuses new jobs, then returns once every job already queued or in a
    /// running round has been answered: what was accepted is not lost.
    pub(super) async fn close(&self) {
        self.shared.state.lock().closed = true;
        let shared = self.shared.clone();
        // Waits on the writer's condvar: on a blocking thread, not a worker.
        let drained = tokio::task::spawn_blocking(move || {
            let mut state = shared.state.lock();
            while state.running {
                shared.idle.wait(&mut state);
            }
        });
        if let Err(e) = drained.await {
            tracing::error!(error = %e, "waiting for the store's writer failed");
        }
    }
}

#[cfg(test)]
impl Writer {
    /// Jobs waiting for a round.
    pub(super) fn queued(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Whether new jobs are refused.
    pub(super) fn closed(&self) -> bool {
        self.shared.state.lock().closed
    }

    /// Holds the writer in a round of its own until the returned sender
    /// sends (or is dropped), so that jobs queued meanwhile share the next
    /// round. Returns once the hold is in place, with the holding task.
    pub(super) async fn hold(self: &Arc<Self>) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<Result<()>>) {
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let writer = self.clone();
        let holder = tokio::spawn(async move {
            writer
                .write(move |_: &mut Round<'_>| {
                    let _ = started.send(());
                    // An error only means the test is over.
                    let _ = held.recv();
                    Ok(())
                })
                .await
        });
        while running.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        (release, holder)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        while state.running {
            self.shared.idle.wait(&mut state);
        }
    }
}

/// The task that runs rounds. Dropped without finishing (its runtime shut
/// down before it ran, or a round panicked outside a job), it fails the
/// queued jobs and marks the writer idle, so nothing waits for it forever.
struct Rounds {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.shared.state.lock();
            state.queue.clear();
            state.running = false;
            self.shared.idle.notify_all();
        }
    }
}

impl Rounds {
    /// Runs rounds until the queue is empty.
    fn run(&mut self, inner: &Inner) {
        let mut replies: Vec<Reply> = Vec::new();
        loop {
            let jobs: Vec<Job> = {
                let mut state = self.shared.state.lock();
                if state.queue.is_empty() {
                    state.running = false;
                    self.armed = false;
                    self.shared.idle.notify_all();
                    return;
                }
                let take = state.queue.len().min(MAX_ROUND);
                state.queue.drain(..take).collect()
            };
            let (count, started) = (jobs.len(), Instant::now());
            inner.trim_heads();
            let mut round = Round {
                inner,
                dirty: false,
                appended: Vec::new(),
                runs: UserMap::default(),
                sends: HashMap::new(),
                timeline_rows: Vec::new(),
                timeline_before: HashMap::new(),
                conversations: ConversationRows::default(),
                failed: None,
            };
            for job in jobs {
                // A bug in one job must not stop every later write: its caller
                // gets an error (its answer is dropped), the others go on.
                match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut round))) {
                    Ok(Some(reply)) => replies.push(reply),
                    Ok(None) => {}
                    Err(_) => tracing::error!("store write job panicked"),
                }
            }
            let jobs_done = Instant::now();
            let rows = match round.failed.take() {
                Some(e) => Err(e),
                None => round.write_rows(),
            };
            let rows_done = Instant::now();
            let synced = rows.and_then(|()| {
                if round.dirty { inner.db.persist(PersistMode::SyncAll).map_err(storage_err) } else { Ok(()) }
            });
            let synced_at = Instant::now();
            if synced_at - started >= SLOW_ROUND {
                // Every message of the round waited this long; which phase
                // says what held it (docs/PERFORMANCE.md#11-tail-latency).
                let ms = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1e3;
                tracing::debug!(
                    jobs = count,
                    total_ms = ms(started, synced_at),
                    jobs_ms = ms(started, jobs_done),
                    rows_ms = ms(jobs_done, rows_done),
                    fsync_ms = ms(rows_done, synced_at),
                    "slow store round"
                );
            }
            if synced.is_ok() {
                inner.publish_durable(&round.appended);
            }
            for reply in replies.drain(..) {
                reply(synced.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use natter_types::{ErrorCode, UserId};

    use crate::UserLog;
    use crate::embedded::EmbeddedOptions;
    use crate::embedded::test_util::open_with;

    /// A job that panics (a bug) fails its own caller only; the other jobs
    /// of its round, and later ones, are written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_fails_only_its_caller() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), EmbeddedOptions::default());
        // The next two jobs queue up and run in one round together.
        let (release, holder) = store.writer.hold().await;
        let failed = {
            let store = store.clone();
            tokio::spawn(async move {
                store.writer.write(|_: &mut super::Round<'_>| -> natter_types::Result<()> { panic!("a bug") }).await
            })
        };
        let ann = UserId::parse("ann", "u").unwrap();
        let acked = {
            let (store, ann) = (store.clone(), ann.clone());
            tokio::spawn(async move { store.ack(&ann, 3).await })
        };
        while store.writer.queued() < 2 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(failed.await.unwrap().unwrap_err().code, ErrorCode::Unavailable);
        acked.await.unwrap().unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(store.acked(&ann).await.unwrap(), 3, "the round's other job was written");
        store.ack(&ann, 4).await.unwrap();
        assert_eq!(store.acked(&ann).await.unwrap(), 4, "later writes still run");
    }
}
