//! The lifecycle every long-lived component of natter follows:
//! `Options` (its config section) → `start(options, deps, &tasks)` → a cheap
//! `Handle`. [`Tasks`] is the one owner of the work that outlives a call: each
//! task is spawned into a [`Stage`], is handed that stage's cancellation
//! token, and must end soon after it fires.
//!
//! A process stops in stage order under one deadline ([`Tasks::stop`]):
//! first nothing new comes in (listeners, health), then sessions are told to
//! go (and given time to), then background jobs end, and storage is drained
//! and synced last, so that everything accepted before the stop is on disk.
//! A task that fails requests the stop of the whole process: one broken part
//! must not leave a half-alive process behind (an orchestrator restarts it).

mod clock;
pub use clock::Clock;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The stop order: a stage is cancelled only once every task of the stages
/// before it has ended (or the deadline passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Listeners and servers: stop accepting, report NOT_SERVING.
    Ingress,
    /// Client sessions: tell each to reconnect elsewhere, wait for them.
    Sessions,
    /// Services' background jobs: sweepers, webhooks, lease renewals.
    Services,
    /// Storage: finish queued writes, sync, stop its threads.
    Storage,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Ingress, Stage::Sessions, Stage::Services, Stage::Storage];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Sessions => "sessions",
            Self::Services => "services",
            Self::Storage => "storage",
        }
    }
}

/// Storage is drained even when the earlier stages used up the deadline:
/// its last writes are what the stop exists for.
pub const STORAGE_FLOOR: Duration = Duration::from_secs(5);

struct Task {
    stage: Stage,
    name: &'static str,
    handle: JoinHandle<anyhow::Result<()>>,
}

struct Inner {
    /// Fired when the process should stop: by its owner (a signal) or by a
    /// failed task. Cancels nothing by itself; the owner then calls `stop`.
    stop_requested: CancellationToken,
    stages: [CancellationToken; 4],
    tasks: Mutex<Vec<Task>>,
}

impl Drop for Inner {
    /// A task set dropped without `stop` still ends its tasks.
    fn drop(&mut self) {
        for stage in &self.stages {
            stage.cancel();
        }
    }
}

/// The long-lived tasks of one process (or of one test's deployment).
/// Cheap to clone; the tasks are cancelled when the last clone is dropped.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").field("tasks", &self.inner.tasks.lock().len()).finish()
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                stop_requested: CancellationToken::new(),
                stages: std::array::from_fn(|_| CancellationToken::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Fires when `stage` is being stopped.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.inner.stages[stage.index()].clone()
    }

    /// Spawns `task` into `stage`; it gets the stage's token and must end
    /// soon after the token fires. A failure (error or panic) requests the
    /// process's stop.
    pub fn spawn<F, Fut>(&self, stage: Stage, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let future = task(self.token(stage));
        let stop = self.inner.stop_requested.clone();
        let handle = tokio::spawn(async move {
            let result = future.await;
            if let Err(e) = &result {
                tracing::error!(task = name, stage = stage.name(), error = format!("{e:#}"), "task failed, stopping");
                stop.cancel();
            }
            result
        });
        self.inner.tasks.lock().push(Task { stage, name, handle });
    }

    /// Runs `task` on a thread of its own (blocking work such as a storage
    /// engine's maintenance), owned like a spawned task.
    pub fn spawn_thread<F>(&self, stage: Stage, name: &'static str, task: F) -> std::io::Result<()>
    where
        F: FnOnce(CancellationToken) -> anyhow::Result<()> + Send + 'static,
    {
        let token = self.token(stage);
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name(format!("natter-{name}")).spawn(move || {
            // A panic drops `done`, which the waiting task reports.
            let _ = done.send(task(token));
        })?;
        self.spawn(stage, name, |_| async move {
            finished.await.unwrap_or_else(|_| Err(anyhow::anyhow!("thread {name} panicked")))
        });
        Ok(())
    }

    /// Asks the owner to stop the process (what a signal or a failed task does).
    pub fn request_stop(&self) {
        self.inner.stop_requested.cancel();
    }

    /// Resolves once a stop was requested.
    pub async fn stop_requested(&self) {
        self.inner.stop_requested.cancelled().await;
    }

    /// A token that requests the stop when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.inner.stop_requested.clone()
    }

    /// Stops every task, stage by stage, all under one deadline `grace` from
    /// now ([`Stage::Storage`] gets at least [`STORAGE_FLOOR`]). A task
    /// still running at its stage's deadline is aborted and named in the log.
    /// The first failure of any task is the result.
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        self.inner.stop_requested.cancel();
        let deadline = Instant::now() + grace;
        let mut first_error = None;
        for stage in Stage::ALL {
            self.inner.stages[stage.index()].cancel();
            let tasks: Vec<Task> = {
                let mut all = self.inner.tasks.lock();
                let (this, rest) = std::mem::take(&mut *all).into_iter().partition(|t| t.stage == stage);
                *all = rest;
                this
            };
            let stage_deadline =
                if stage == Stage::Storage { deadline.max(Instant::now() + STORAGE_FLOOR) } else { deadline };
            for Task { name, mut handle, .. } in tasks {
                match tokio::time::timeout_at(stage_deadline, &mut handle).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        first_error.get_or_insert(e.context(format!("{name} task")));
                    }
                    Ok(Err(join)) => {
                        first_error.get_or_insert(anyhow::anyhow!("{name} task panicked: {join}"));
                    }
                    Err(_) => {
                        tracing::warn!(task = name, stage = stage.name(), "did not stop by the deadline, aborted");
                        handle.abort();
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Seen = Arc<Mutex<Vec<&'static str>>>;

    /// Records the order in which tasks saw their stage's token fire.
    fn recorder() -> (Seen, impl Fn(&'static str, Duration, &Tasks, Stage)) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let spawn = move |name: &'static str, linger: Duration, tasks: &Tasks, stage: Stage| {
            let log = log.clone();
            tasks.spawn(stage, name, move |token| async move {
                token.cancelled().await;
                log.lock().push(name);
                tokio::time::sleep(linger).await;
                log.lock().push(name);
                Ok(())
            });
        };
        (seen, spawn)
    }

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_each_after_the_one_before_ended() {
        let tasks = Tasks::new();
        let (seen, spawn) = recorder();
        // Spawned out of order on purpose: the stage decides, not the spawn order.
        spawn("store", Duration::from_millis(10), &tasks, Stage::Storage);
        spawn("sessions", Duration::from_millis(30), &tasks, Stage::Sessions);
        spawn("http", Duration::from_millis(20), &tasks, Stage::Ingress);
        spawn("sweeper", Duration::from_millis(10), &tasks, Stage::Services);
        tasks.stop(Duration::from_secs(5)).await.unwrap();
        assert_eq!(*seen.lock(), ["http", "http", "sessions", "sessions", "sweeper", "sweeper", "store", "store"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_is_shared_by_every_stage() {
        let tasks = Tasks::new();
        let (seen, spawn) = recorder();
        spawn("http", Duration::from_secs(60), &tasks, Stage::Ingress);
        spawn("sessions", Duration::from_secs(60), &tasks, Stage::Sessions);
        let started = Instant::now();
        tasks.stop(Duration::from_secs(2)).await.unwrap();
        // Per-task waiting would have taken 2 s for each hung task.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // The hung ingress task was aborted, not waited for to its end.
        assert_eq!(seen.lock().iter().filter(|n| **n == "http").count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn storage_is_drained_even_past_the_deadline() {
        let tasks = Tasks::new();
        let (seen, spawn) = recorder();
        spawn("sessions", Duration::from_secs(60), &tasks, Stage::Sessions);
        spawn("store", Duration::from_secs(1), &tasks, Stage::Storage);
        tasks.stop(Duration::from_secs(1)).await.unwrap();
        assert_eq!(*seen.lock(), ["sessions", "store", "store"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_task_requests_the_stop_and_is_the_result() {
        let tasks = Tasks::new();
        tasks.spawn(Stage::Services, "broken", |_| async { anyhow::bail!("disk on fire") });
        tokio::time::timeout(Duration::from_secs(1), tasks.stop_requested()).await.unwrap();
        let err = tasks.stop(Duration::from_secs(1)).await.unwrap_err();
        assert!(format!("{err:#}").contains("broken task: disk on fire"), "{err:#}");
    }

    // Real time: a paused clock would run out the wait before the thread panics.
    #[tokio::test]
    async fn a_panicking_thread_is_a_failure() {
        let tasks = Tasks::new();
        tasks.spawn_thread(Stage::Storage, "keeper", |_| panic!("boom")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), tasks.stop_requested()).await.unwrap();
        let err = tasks.stop(Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("keeper"), "{err:#}");
    }

    #[tokio::test]
    async fn a_thread_stops_on_its_token() {
        let tasks = Tasks::new();
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = rounds.clone();
        tasks
            .spawn_thread(Stage::Storage, "poller", move |token| {
                while !token.is_cancelled() {
                    counted.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            })
            .unwrap();
        tasks.stop(Duration::from_secs(5)).await.unwrap();
        let after = rounds.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rounds.load(Ordering::Relaxed), after, "the thread ended");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_task_set_cancels_its_tasks() {
        let tasks = Tasks::new();
        let token = tasks.token(Stage::Services);
        drop(tasks);
        assert!(token.is_cancelled());
    }
}
