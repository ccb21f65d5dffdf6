//! Frees flushed memtables off fjall's version lock.
//!
//! fjall drops the versions that hold a flushed memtable while it holds the
//! keyspace's version lock for writing, and every insert takes that lock for
//! reading. When that drop frees the memtable, node by node, every write
//! waits for it: over 100 ms for a 64 MiB memtable (docs/PERFORMANCE.md).
//! The keeper holds a reference to every memtable it has seen active, so
//! fjall's drop only decrements a count, and frees each one here once it holds
//! the last reference.
//!
//! It reaches the memtables through `Keyspace::tree` and
//! `AbstractTree::active_memtable`, which fjall exports but leaves out of its
//! docs; the workspace pins fjall's exact version for this, and the test
//! `flushed_memtables_are_freed_by_the_keeper` fails if they stop doing what
//! this relies on.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use fjall::{AbstractTree, Keyspace};
use parking_lot::{Condvar, Mutex};

/// How often the keeper looks for new and released memtables. A memtable
/// active for less than this (filled in under 100 ms: 80 MB/s into one
/// keyspace at 8 MiB) can be missed, and is then freed by fjall as before.
const POLL: Duration = Duration::from_millis(100);

/// The keeper thread; stopped and joined on drop (which frees what it holds).
pub(super) struct Keeper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    /// Memtables freed by the keeper.
    freed: AtomicU64,
}

type Held = Arc<dyn Any + Send + Sync>;

impl Keeper {
    pub(super) fn start(keyspaces: Vec<Keyspace>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { stop: Mutex::new(false), wake: Condvar::new(), freed: AtomicU64::new(0) });
        let thread = std::thread::Builder::new().name("natter-memtables".into()).spawn({
            let shared = shared.clone();
            move || run(&shared, &keyspaces)
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Memtables freed by the keeper rather than under fjall's lock.
    #[cfg(test)]
    pub(super) fn freed(&self) -> u64 {
        self.shared.freed.load(Ordering::Relaxed)
    }
}

fn run(shared: &Shared, keyspaces: &[Keyspace]) {
    let mut held: Vec<Held> = Vec::new();
    loop {
        {
            let mut stop = shared.stop.lock();
            if !*stop {
                shared.wake.wait_for(&mut stop, POLL);
            }
            if *stop {
                return;
            }
        }
        for keyspace in keyspaces {
            let active: Held = keyspace.tree.active_memtable();
            if !held.iter().any(|h| Arc::ptr_eq(h, &active)) {
                held.push(active);
            }
        }
        let before = held.len();
        let started = std::time::Instant::now();
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

impl Drop for Keeper {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
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
        let store = EmbeddedStore::open(dir.path(), options).unwrap();
        // ~16 KB per append, ~128 KB per step: a memtable is sealed every
        // other step, and each one stays active across the keeper's polls.
        for step in 0..10 {
            for _ in 0..8 {
                UserLog::append(&store, &users, &event).await.unwrap();
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
