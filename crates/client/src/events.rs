//! What the server pushes, as the application sees it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use natter_proto::v1;
use tokio::sync::{Notify, mpsc};

use crate::ClientError;

/// Ask the driver to acknowledge at least this often while the application
/// keeps up with a steady stream (otherwise: whenever the queue runs dry).
const ACK_EVERY: u32 = 100;

/// One thing that happened on the connection. Message and group events are
/// each surfaced exactly once per client, in server order.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    OnTextMessage(v1::Message),
    OnCustomMessage(v1::Message),
    OnGroupChange(v1::GroupChange),
    /// One of my conversations was pinned, unpinned or deleted, or messages
    /// in it deleted one way, on one of my devices (the seed's
    /// `onMultiDeviceEvent`; the device that made the change gets it too).
    OnMultiDeviceEvent(v1::MultiDeviceEvent),
    /// A conversation read receipt: `from` read the conversation with `to`
    /// (on one of my devices when `from` is me: its unread count is 0).
    OnChannelMessage(v1::ChannelAck),
    /// R2: a 1:1 message I sent reached a device of its recipient (`from`).
    OnDeliveredMessage(v1::Receipt),
    /// R4: `from` read a 1:1 message I sent; or, live, a group message of
    /// mine that asked for receipts was read (`group_read_count` readers).
    OnReadMessage(v1::Receipt),
    /// R6: a group message's read count gathered while I was away, on
    /// resume (the newest count per message).
    OnStatisticMessage(v1::Receipt),
    /// R8: a message I sent or received was recalled.
    OnRecallMessage(v1::Recall),
    /// A subscribed user's presence changed, or this user's own (live only:
    /// not replayed after a reconnect).
    OnPresenceStatusChange(v1::PresenceStatus),
    /// A connection is established (the first one, and after every reconnect).
    Connected(v1::Hello),
    /// Everything stored before the connection was replayed; live from here.
    CaughtUp(u64),
    /// Events between the cursor and `oldest` are gone from the server: the
    /// application must resync from conversations and history. Delivery
    /// continues after `head`.
    ResyncRequired(v1::ResyncRequired),
    /// The connection dropped; the client reconnects unless told otherwise
    /// (if it stops for good, the event stream ends after this).
    Disconnected {
        reason: String,
    },
    /// The server ended the session for good (another device took its place,
    /// or the token expired). No reconnect follows; the event stream ends.
    Kicked(v1::Goodbye),
}

impl ClientEvent {
    /// The message, for `OnTextMessage` and `OnCustomMessage`.
    pub fn message(&self) -> Option<&v1::Message> {
        match self {
            Self::OnTextMessage(m) | Self::OnCustomMessage(m) => Some(m),
            _ => None,
        }
    }
}

/// An entry of the queue between the driver and [`Events`]. `seq` is the
/// driver's delivered mark when it queued the entry: once the application has
/// taken the entry it has seen every event up to `seq`. An entry without an
/// event (an echo of our own send, an unknown event kind) only moves the mark.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) seq: u64,
    pub(crate) event: Option<ClientEvent>,
}

/// State shared by the driver, every [`crate::Client`] and [`Events`].
#[derive(Debug)]
pub(crate) struct Shared {
    /// Highest seq the application has taken out of [`Events`]: the cursor to
    /// persist and the position acknowledged to the server.
    pub(crate) consumed: AtomicU64,
    /// Wakes the driver to send an ack.
    pub(crate) ack_wanted: Notify,
    pub(crate) hello: Mutex<v1::Hello>,
}

impl Shared {
    pub(crate) fn new(start: u64, hello: v1::Hello) -> Self {
        Self { consumed: AtomicU64::new(start), ack_wanted: Notify::new(), hello: Mutex::new(hello) }
    }

    pub(crate) fn hello(&self) -> v1::Hello {
        self.hello.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_hello(&self, hello: v1::Hello) {
        *self.hello.lock().unwrap_or_else(PoisonError::into_inner) = hello;
    }
}

/// The receiving side of a client: a stream of [`ClientEvent`]s that ends
/// when the client stops for good (closed, kicked, or gave up reconnecting).
///
/// Taking an event out of this stream is what "processed" means to the
/// server: the SDK acknowledges up to the last event taken, and
/// [`Events::cursor`] is the position to resume from in a later process.
/// Events queue up (unbounded) until taken: an application that does not
/// want them should drop `Events` rather than leave it unread, which makes
/// the SDK acknowledge events as they arrive.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Item>,
    shared: Arc<Shared>,
    since_ack: u32,
}

impl Events {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Item>, shared: Arc<Shared>) -> Self {
        Self { rx, shared, since_ack: 0 }
    }

    /// The next event; `None` once the client has stopped and the queue is empty.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event within `timeout`: `Err(Timeout)`, or `Err(Closed)` when
    /// the client has stopped.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<ClientEvent, ClientError> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The next text or custom message within `timeout`, skipping every other
    /// event (connection changes, group changes, …).
    pub async fn next_message(&mut self, timeout: Duration) -> Result<v1::Message, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Some(ClientEvent::OnTextMessage(m) | ClientEvent::OnCustomMessage(m))) => {
                    return Ok(m);
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout),
            }
        }
    }

    /// Seq of the last event taken from this stream (see [`crate::Client::cursor`]).
    pub fn cursor(&self) -> u64 {
        self.shared.consumed.load(Ordering::Acquire)
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        loop {
            let Some(item) = std::task::ready!(self.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            self.taken(item.seq);
            if let Some(event) = item.event {
                return Poll::Ready(Some(event));
            }
        }
    }

    fn taken(&mut self, seq: u64) {
        let before = self.shared.consumed.fetch_max(seq, Ordering::AcqRel);
        if seq > before {
            self.since_ack += 1;
        }
        // Batch acks: one when the application has drained what arrived, or
        // every ACK_EVERY events while it keeps falling behind. Checked on
        // every entry: the last one taken (e.g. `CaughtUp`) may not move the
        // cursor itself.
        if self.since_ack > 0 && (self.rx.is_empty() || self.since_ack >= ACK_EVERY) {
            self.since_ack = 0;
            self.shared.ack_wanted.notify_one();
        }
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.get_mut().poll_event(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seq: u64) -> Item {
        Item { seq, event: Some(ClientEvent::OnTextMessage(v1::Message { id: seq, ..Default::default() })) }
    }

    #[tokio::test]
    async fn taking_events_moves_the_cursor_and_skips_silent_entries() {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(0, v1::Hello::default()));
        let mut events = Events::new(rx, shared.clone());
        tx.send(text(1)).expect("queue");
        tx.send(Item { seq: 2, event: None }).expect("queue");
        tx.send(text(3)).expect("queue");
        assert_eq!(events.recv().await.and_then(|e| e.message().map(|m| m.id)), Some(1));
        assert_eq!(events.cursor(), 1, "only what was taken counts");
        assert_eq!(events.recv().await.and_then(|e| e.message().map(|m| m.id)), Some(3));
        assert_eq!(events.cursor(), 3, "the silent entry was passed over");
        drop(tx);
        assert!(events.recv().await.is_none());
        assert!(matches!(events.recv_timeout(Duration::from_millis(10)).await, Err(ClientError::Closed)));
    }

    #[tokio::test]
    async fn ack_is_requested_when_the_queue_runs_dry() {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(0, v1::Hello::default()));
        let mut events = Events::new(rx, shared.clone());
        for seq in 1..=3 {
            tx.send(text(seq)).expect("queue");
        }
        events.recv().await;
        events.recv().await;
        let early = tokio::time::timeout(Duration::from_millis(20), shared.ack_wanted.notified()).await;
        assert!(early.is_err(), "no ack while more events are queued");
        events.recv().await;
        tokio::time::timeout(Duration::from_millis(200), shared.ack_wanted.notified())
            .await
            .expect("ack requested once drained");
    }

    #[tokio::test]
    async fn next_message_skips_lifecycle_events_and_times_out() {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(0, v1::Hello::default()));
        let mut events = Events::new(rx, shared);
        tx.send(Item { seq: 0, event: Some(ClientEvent::CaughtUp(0)) }).expect("queue");
        tx.send(text(5)).expect("queue");
        let m = events.next_message(Duration::from_secs(1)).await.expect("message");
        assert_eq!(m.id, 5);
        assert!(matches!(events.next_message(Duration::from_millis(10)).await, Err(ClientError::Timeout)));
    }
}
