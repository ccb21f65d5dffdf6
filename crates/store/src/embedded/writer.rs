//! The embedded store's one writer thread and its group commit.
//!
//! Every write of the embedded store is a job on this thread. A round takes
//! every queued job (up to [`MAX_ROUND`]), runs each (reads, checks, one
//! fjall batch commit into the journal, no fsync), then fsyncs once and only
//! then answers the round's callers. So:
//! - async tasks never block on fjall's journal or on disk writeback: they
//!   queue a job and await its answer;
//! - the disk is busy back to back under load, one fsync covering everything
//!   written while the previous one ran (the group commit);
//! - read-check-write sequences need no locks: writes run one at a time.
//!
//! Reads do not go through the writer; they run on the caller's task.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use fjall::PersistMode;
use natter_types::{Error, Result, UserId};
use tokio::sync::oneshot;

use super::{Inner, storage_err};
use crate::Appended;

/// Jobs per round at most, so one round's callers wait a bounded time.
const MAX_ROUND: usize = 1024;

/// Called once the round's fsync is done (or failed).
type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// Runs on the writer thread; `Some` if its caller waits for the fsync.
type Job = Box<dyn FnOnce(&mut Round<'_>) -> Option<Reply> + Send>;

/// What a job sees: the store, and the round it is part of.
pub(super) struct Round<'a> {
    pub(super) inner: &'a Inner,
    dirty: bool,
    /// Log appends of this round, published to readers after the fsync.
    appended: Vec<(Vec<UserId>, Vec<Appended>)>,
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

    /// Forces an fsync at the end of the round (for `sync_all`).
    pub(super) fn sync(&mut self) {
        self.dirty = true;
    }
}

/// The handle to the writer thread. Dropping it lets the thread finish the
/// queued jobs and waits for it to stop.
pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

fn stopped() -> Error {
    Error::unavailable("storage: the store's writer has stopped")
}

impl Writer {
    pub(super) fn start(inner: Arc<Inner>) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("natter-store-writer".into())
            .spawn(move || run(&inner, &queue))
            .map_err(storage_err)?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Runs `op` on the writer thread. Its writes are durable when this
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
        let job: Job = Box::new(move |round| match op(round) {
            Ok(value) if durable => Some(Box::new(move |synced: Result<()>| {
                let _ = answer.send(synced.map(|()| value));
            })),
            result => {
                let _ = answer.send(result);
                None
            }
        });
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

fn run(inner: &Inner, queue: &mpsc::Receiver<Job>) {
    let mut replies: Vec<Reply> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut round = Round { inner, dirty: false, appended: Vec::new() };
        let mut next = Some(first);
        let mut ran = 0;
        while let Some(job) = next {
            // A bug in one job must not stop every later write: its caller
            // gets an error (its answer is dropped), the others go on.
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut round))) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => {}
                Err(_) => tracing::error!("store write job panicked"),
            }
            ran += 1;
            next = if ran < MAX_ROUND { queue.try_recv().ok() } else { None };
        }
        let synced = if round.dirty { inner.db.persist(PersistMode::SyncAll).map_err(storage_err) } else { Ok(()) };
        if synced.is_ok() {
            inner.publish_durable(&round.appended);
        }
        for reply in replies.drain(..) {
            reply(synced.clone());
        }
    }
}
