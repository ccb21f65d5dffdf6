//! In-process bus for the single-node mode: one broadcast channel per user
//! with live subscribers, removed when the last subscriber goes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use dashmap::DashMap;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use natter_types::{Result, UserId};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::{Bus, Control, Live, LiveEvent, Transient};

/// Events buffered per user before a slow subscriber is told it lagged.
/// tokio's broadcast channel allocates every slot up front (~56 bytes each)
/// and each online user has one: 1024 slots were 53 KiB of the ~79 KiB an
/// idle connection cost (natter-bench, docs/PERFORMANCE.md). A lagging
/// session loses nothing, it re-reads its durable log.
const USER_CHANNEL_CAPACITY: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: DashMap<UserId, broadcast::Sender<Item>>,
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
}

/// What a user's channel carries.
#[derive(Debug, Clone)]
enum Item {
    Logged(LiveEvent),
    Transient(Arc<Transient>),
}

/// A user's live stream; removes the user's channel when the last
/// subscriber goes, so idle users cost nothing.
struct UserStream {
    rx: BroadcastStream<Item>,
    inner: Arc<Inner>,
    user: UserId,
}

impl Stream for UserStream {
    type Item = Live;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Live>> {
        self.rx.poll_next_unpin(cx).map(|item| {
            item.map(|r| match r {
                Ok(Item::Logged(event)) => Live::Event(event),
                Ok(Item::Transient(frame)) => Live::Transient(frame),
                Err(BroadcastStreamRecvError::Lagged(_)) => Live::Lagged,
            })
        })
    }
}

impl Drop for UserStream {
    fn drop(&mut self) {
        // Our own receiver is still alive here (fields drop after this), so
        // "last subscriber" means a count of one. The map's shard lock
        // orders this against a concurrent subscribe.
        self.inner.users.remove_if(&self.user, |_, tx| tx.receiver_count() <= 1);
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish_user(&self, user: &UserId, event: LiveEvent) -> Result<()> {
        if let Some(tx) = self.inner.users.get(user) {
            // No receiver is fine: the event is in the durable log.
            let _ = tx.send(Item::Logged(event));
        }
        Ok(())
    }

    async fn publish_transient(&self, users: &[UserId], frame: Arc<Transient>) -> Result<()> {
        for user in users {
            if let Some(tx) = self.inner.users.get(user) {
                let _ = tx.send(Item::Transient(frame.clone()));
            }
        }
        Ok(())
    }

    async fn subscribe_user(&self, user: &UserId) -> Result<BoxStream<'static, Live>> {
        let rx = self
            .inner
            .users
            .entry(user.clone())
            .or_insert_with(|| broadcast::channel(USER_CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(Box::pin(UserStream { rx: BroadcastStream::new(rx), inner: self.inner.clone(), user: user.clone() }))
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
            .or_insert_with(|| broadcast::channel(USER_CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(Box::pin(BroadcastStream::new(rx).filter_map(|item| async move { item.ok() })))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::conformance::live;

    #[tokio::test]
    async fn conformance_suite_passes() {
        crate::conformance::run_all(&LocalBus::new()).await;
    }

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
        for seq in 1..=(USER_CHANNEL_CAPACITY as u64 + 5) {
            bus.publish_user(&bob, live(seq)).await.unwrap();
        }
        assert_eq!(slow.next().await, Some(Live::Lagged));
    }
}
