//! Removes expired subscriptions from storage. A min-heap of expiry times
//! (rebuilt from the store at start, fed by every subscribe) wakes the
//! sweeper exactly when the earliest subscription expires, so its work is
//! proportional to what expires, never a scan of all subscriptions.
//!
//! Correctness does not depend on the sweep: every read filters by expiry,
//! so an expired subscription stops producing events at its expiry even if
//! the sweeper is behind. A re-subscribe leaves a stale heap entry, which the
//! store's compare-on-expiry removal turns into a no-op.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use natter_store::PresenceStore;
use natter_types::{Result, UserId};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use natter_runtime::Clock;

/// `(due, expires_at, subscriber, target)`: due is the expiry, or later for
/// a removal that failed and is retried; removal compares `expires_at`.
type Entry = Reverse<(i64, i64, UserId, UserId)>;

/// Removals in flight at once: the store's group commit turns them into one
/// durable write per batch instead of one per subscription.
const SWEEP_CONCURRENCY: usize = 256;

#[derive(Clone)]
pub struct Sweeper {
    inner: Arc<Inner>,
}

struct Inner {
    heap: Mutex<BinaryHeap<Entry>>,
    wake: Notify,
    store: Arc<dyn PresenceStore>,
    clock: Clock,
    removed: AtomicU64,
    /// Changed under the heap's lock, so no entry is scheduled into a
    /// schedule that was just cleared.
    active: AtomicBool,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").field("scheduled", &self.scheduled()).finish_non_exhaustive()
    }
}

impl Sweeper {
    pub fn new(store: Arc<dyn PresenceStore>, clock: Clock) -> Self {
        let inner = Inner {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            store,
            clock,
            removed: AtomicU64::new(0),
            active: AtomicBool::new(true),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Schedules every stored subscription (once, at start).
    pub async fn load(&self) -> Result<usize> {
        let all = self.inner.store.all_subscriptions().await?;
        let count = all.len();
        {
            let mut heap = self.inner.heap.lock();
            heap.extend(
                all.into_iter()
                    .map(|(subscriber, sub)| Reverse((sub.expires_at, sub.expires_at, subscriber, sub.target))),
            );
        }
        self.inner.wake.notify_one();
        Ok(count)
    }

    /// Whether this process sweeps (the default). When presence processes
    /// share a store only the leader does; the others keep no schedule, which
    /// would only grow. Clears the schedule either way: a sweeper that
    /// becomes active then [`load`](Self::load)s it from the store.
    pub fn set_active(&self, active: bool) {
        let mut heap = self.inner.heap.lock();
        heap.clear();
        self.inner.active.store(active, Ordering::Relaxed);
    }

    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Relaxed)
    }

    pub fn schedule(&self, subscriber: &UserId, target: &UserId, expires_at: i64) {
        let earliest = {
            let mut heap = self.inner.heap.lock();
            if !self.inner.active.load(Ordering::Relaxed) {
                return;
            }
            let earlier = heap.peek().is_none_or(|top| expires_at < top.0.0);
            heap.push(Reverse((expires_at, expires_at, subscriber.clone(), target.clone())));
            earlier
        };
        if earliest {
            self.inner.wake.notify_one();
        }
    }

    /// Entries waiting in the schedule (stale ones included).
    pub fn scheduled(&self) -> usize {
        self.inner.heap.lock().len()
    }

    /// Subscriptions removed from storage so far.
    pub fn removed(&self) -> u64 {
        self.inner.removed.load(Ordering::Relaxed)
    }

    /// Removes everything due now; returns how many stored entries went.
    pub async fn sweep_due(&self) -> usize {
        let now = self.inner.clock.now_ms();
        let due: Vec<(i64, UserId, UserId)> = {
            let mut heap = self.inner.heap.lock();
            let mut due = Vec::new();
            while heap.peek().is_some_and(|top| top.0.0 <= now) {
                if let Some(Reverse((_, expires_at, subscriber, target))) = heap.pop() {
                    due.push((expires_at, subscriber, target));
                }
            }
            due
        };
        let store = &self.inner.store;
        let outcomes: Vec<bool> = futures::stream::iter(due)
            .map(|(expires_at, subscriber, target)| async move {
                match store.remove_expired(&subscriber, &target, expires_at).await {
                    Ok(removed) => removed,
                    Err(e) => {
                        // Retried in a second; meanwhile reads ignore it, as expired.
                        tracing::warn!(error = %e, "sweeping an expired subscription failed");
                        self.inner.heap.lock().push(Reverse((now + 1_000, expires_at, subscriber, target)));
                        false
                    }
                }
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        let removed = outcomes.into_iter().filter(|removed| *removed).count();
        self.inner.removed.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let next = self.inner.heap.lock().peek().map(|top| top.0.0);
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(self.inner.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.inner.wake.notified() => continue,
                () = wait => {}
            }
            self.sweep_due().await;
        }
    }
}
