//! Frees flushed memtables off fjall's version lock.
//!
//! fjall drops the versions that hold a flushed memtable while it holds the
//! keyspace's version lock for writing, and every insert takes that lock for
//! reading. When that drop frees the memtable, node by node, every write
//! waits for it: tens of milliseconds for an 8 MiB memtable
//! (docs/PERFORMANCE.md#11-tail-latency). The keeper
//! holds a reference to every memtable it has seen active, so fjall's drop
//! only decrements a count, and frees each one here once it holds the last
//! reference.
//!
//! It is one thread of the task set's storage stage, which ends when the
//! stage's token is cancelled; what it still holds is freed then.
//!
//! It reaches the memtables through `Keyspace::tree` and
//! `AbstractTree::active_memtable`, which fjall exports but leaves out of its
//! docs; the workspace pins fjall's exact version for this, and the test
//! `flushed_memtables_are_freed_by_the_keeper` fails if they stop doing what
//! this relies on.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fjall::{AbstractTree, Keyspace};
use natter_runtime::{Stage, Tasks};
use tokio_util::sync::CancellationToken;

/// How often the keeper looks for new and released memtables. A memtable
/// active for less than this (filled in under 100 ms: 80 MB/s into one
/// keyspace at 8 MiB) can be missed, and is then freed by fjall as before.
const POLL: Duration = Duration::from_millis(100);

/// How often the keeper looks at its stop token between polls, so that a
/// stop does not wait out a whole poll.
const STOP_CHECK: Duration = Duration::from_millis(10);

/// What the store keeps of the keeper; its thread belongs to the task set
/// and ends when the storage stage is stopped (which frees what it holds).
pub(super) struct Keeper {
    #[cfg_attr(not(test), expect(dead_code, reason = "only tests read the keeper's counts"))]
    shared: Arc<Shared>,
}

struct Shared {
    /// Memtables freed by the keeper.
    freed: AtomicU64,
    /// The thread has returned.
    ended: AtomicBool,
}

type Held = Arc<dyn Any + Send + Sync>;

impl Keeper {
    pub(super) fn start(keyspaces: Vec<Keyspace>, tasks: &Tasks) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { freed: AtomicU64::new(0), ended: AtomicBool::new(false) });
        let thread = shared.clone();
        tasks.spawn_thread(Stage::Storage, "store-keeper", move |token| {
            run(&thread, &keyspaces, &token);
            thread.ended.store(true, Ordering::Release);
            Ok(())
        })?;
        Ok(Self { shared })
    }

    /// Memtables freed by the keeper rather than under fjall's lock.
    #[cfg(test)]
    pub(super) fn freed(&self) -> u64 {
        self.shared.freed.load(Ordering::Relaxed)
    }

    /// Whether the keeper's thread has ended.
    #[cfg(test)]
    pub(super) fn ended(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }
}

fn run(shared: &Shared, keyspaces: &[Keyspace], token: &CancellationToken) {
    let mut held: Vec<Held> = Vec::new();
    loop {
        let polled = Instant::now();
        while polled.elapsed() < POLL {
            if token.is_cancelled() {
                return;
            }
            std::thread::sleep(STOP_CHECK);
        }
        for keyspace in keyspaces {
            let active: Held = keyspace.tree.active_memtable();
            if !held.iter().any(|h| Arc::ptr_eq(h, &active)) {
                held.push(active);
            }
        }
        let before = held.len();
        let started = Instant::now();
        // The active memtable is always referenced by fjall's current version,
        // so a count of one means fjall has flushed and dropped it.
        held.retain(|memtable| Arc::strong_count(memtable) > 1);
        let freed = before - held.len();
        if freed > 0 {
            shared.freed.fetch_add(freed as u64, Ordering::Relaxed);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(freed, held = held.len(), micros, "flushed memtables freed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::embedded::test_util::*;

    /// Flushed memtables are freed by the keeper, not by fjall under its
    /// version lock; none while nothing has been flushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushed_memtables_are_freed_by_the_keeper() {
        let (users, event) = (users(16), kilobyte_event());
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { memtable_bytes: 256 << 10, ..EmbeddedOptions::default() };
        let store = open_with(dir.path(), options);
        // ~16 KB per append, ~128 KB per step: a memtable is sealed every
        // other step, and each one stays active across the keeper's polls.
        for step in 0..10 {
            for _ in 0..8 {
                UserLog::append(&*store, &users, &event).await.unwrap();
            }
            if step == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                assert_eq!(store.keeper.freed(), 0, "nothing is flushed yet");
            }
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        // Flushes run on fjall's worker thread.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.keeper.freed() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(store.inner.log.disk_space() > 0, "the log was flushed");
        assert!(store.keeper.freed() > 0, "the keeper freed the flushed memtables");
    }
}
