//! In-process bus for the single-node mode: per online user, the queues of
//! its live subscribers; the user's entry goes when its last subscriber goes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use dashmap::DashMap;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use natter_types::{Appended, Result, UserId};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{Bus, Control, Live, LiveEvent, SharedEvent, Transient};

/// Events queued per subscriber before it is told it lagged (and re-reads
/// its durable log: it loses nothing). The queue grows only as far as it is
/// used and shrinks again when drained: an idle connection's subscription is
/// ~100 bytes. (A tokio broadcast channel per user would allocate every
/// slot up front: ~3.5 KiB per online user for 64 slots;
/// docs/PERFORMANCE.md#idle-connections.)
const USER_QUEUE_LIMIT: usize = 64;

/// A drained queue keeps at most this many slots allocated.
const IDLE_QUEUE_CAPACITY: usize = 4;

/// Gateways' control channels (one per gateway, not per user).
const CONTROL_CHANNEL_CAPACITY: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// foldhash, not SipHash: a group send looks up every member here.
    users: DashMap<UserId, Vec<Arc<Subscriber>>, foldhash::fast::RandomState>,
    gateways: DashMap<String, broadcast::Sender<Control>>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Users with at least one live subscriber (for tests and metrics).
    pub fn subscribed_users(&self) -> usize {
        self.inner.users.len()
    }

    fn push(&self, user: &UserId, live: impl Fn() -> Live) {
        if let Some(subscribers) = self.inner.users.get(user) {
            for subscriber in subscribers.iter() {
                subscriber.push(live());
            }
        }
    }
}

/// One live subscription's queue.
#[derive(Debug, Default)]
struct Subscriber {
    state: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Live>,
    /// Items were dropped since the subscriber last read.
    lagged: bool,
    waker: Option<Waker>,
}

impl Subscriber {
    fn push(&self, live: Live) {
        let waker = {
            let mut queue = self.state.lock();
            if queue.lagged {
                // Everything up to the re-read is in the log already.
                return;
            }
            if queue.items.len() >= USER_QUEUE_LIMIT {
                queue.items = VecDeque::new();
                queue.lagged = true;
            } else {
                queue.items.push_back(live);
            }
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A user's live stream; removes its queue when dropped, and the user's
/// entry with the last one, so idle users cost nothing.
struct UserStream {
    subscriber: Arc<Subscriber>,
    inner: Arc<Inner>,
    user: UserId,
}

impl Stream for UserStream {
    type Item = Live;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Live>> {
        let mut queue = self.subscriber.state.lock();
        if queue.lagged {
            queue.lagged = false;
            return Poll::Ready(Some(Live::Lagged));
        }
        match queue.items.pop_front() {
            Some(live) => {
                if queue.items.is_empty() && queue.items.capacity() > IDLE_QUEUE_CAPACITY {
                    queue.items.shrink_to(IDLE_QUEUE_CAPACITY);
                }
                Poll::Ready(Some(live))
            }
            None => {
                if !queue.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    queue.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for UserStream {
    fn drop(&mut self) {
        // The map's shard lock orders this against a concurrent subscribe.
        self.inner.users.remove_if_mut(&self.user, |_, subscribers| {
            subscribers.retain(|s| !Arc::ptr_eq(s, &self.subscriber));
            subscribers.is_empty()
        });
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish_event(&self, event: Arc<SharedEvent>, users: &[UserId], at: &[Appended]) -> Result<()> {
        // No subscriber is fine: the event is in the durable log.
        for (user, at) in users.iter().zip(at) {
            self.push(user, || Live::Event(LiveEvent { seq: at.seq, prev: at.prev, event: event.clone() }));
        }
        Ok(())
    }

    async fn publish_transient(&self, users: &[UserId], frame: Arc<Transient>) -> Result<()> {
        for user in users {
            self.push(user, || Live::Transient(frame.clone()));
        }
        Ok(())
    }

    async fn subscribe_user(&self, user: &UserId) -> Result<BoxStream<'static, Live>> {
        let subscriber = Arc::new(Subscriber::default());
        self.inner.users.entry(user.clone()).or_default().push(subscriber.clone());
        Ok(Box::pin(UserStream { subscriber, inner: self.inner.clone(), user: user.clone() }))
    }

    async fn publish_control(&self, gateway: &str, control: Control) -> Result<()> {
        if let Some(tx) = self.inner.gateways.get(gateway) {
            let _ = tx.send(control);
        }
        Ok(())
    }

    async fn subscribe_control(&self, gateway: &str) -> Result<BoxStream<'static, Control>> {
        let rx = self
            .inner
            .gateways
            .entry(gateway.to_owned())
            .or_insert_with(|| broadcast::channel(CONTROL_CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(Box::pin(BroadcastStream::new(rx).filter_map(|item| async move { item.ok() })))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::conformance::live;

    async fn local_bus() -> LocalBus {
        LocalBus::new()
    }

    crate::conformance_tests!(local_bus);

    #[tokio::test]
    async fn the_last_subscriber_out_cleans_up() {
        let bus = LocalBus::new();
        let alice = UserId::parse("alice", "u").unwrap();
        let one = bus.subscribe_user(&alice).await.unwrap();
        let two = bus.subscribe_user(&alice).await.unwrap();
        drop(two);
        assert_eq!(bus.subscribed_users(), 1, "one subscriber left");
        drop(one);
        assert_eq!(bus.subscribed_users(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let bus = LocalBus::new();
        let bob = UserId::parse("bob", "u").unwrap();
        let mut slow = bus.subscribe_user(&bob).await.unwrap();
        for seq in 1..=(USER_QUEUE_LIMIT as u64 + 5) {
            bus.publish_user(&bob, live(seq)).await.unwrap();
        }
        assert_eq!(slow.next().await, Some(Live::Lagged));
        // Then it is back to live events: the next one, not the dropped ones.
        let mut next = USER_QUEUE_LIMIT as u64 + 6;
        bus.publish_user(&bob, live(next)).await.unwrap();
        assert_eq!(slow.next().await, Some(Live::Event(live(next))));
        next += 1;
        bus.publish_user(&bob, live(next)).await.unwrap();
        assert_eq!(slow.next().await, Some(Live::Event(live(next))));
    }

    #[tokio::test]
    async fn every_subscriber_of_a_user_gets_each_event_and_a_waiting_one_is_woken() {
        let bus = LocalBus::new();
        let bob = UserId::parse("bob", "u").unwrap();
        let mut one = bus.subscribe_user(&bob).await.unwrap();
        let mut two = bus.subscribe_user(&bob).await.unwrap();
        let waiting = tokio::spawn(async move { one.next().await });
        tokio::task::yield_now().await;
        bus.publish_user(&bob, live(1)).await.unwrap();
        assert_eq!(waiting.await.unwrap(), Some(Live::Event(live(1))));
        assert_eq!(two.next().await, Some(Live::Event(live(1))));
    }
}
