//! The event bus: how a durable event reaches the processes holding a user's
//! sessions (live delivery), and how one process asks another to act on a
//! session (control). The bus carries no truth: everything on it is either in
//! a user's durable log already (live events) or derivable again (control),
//! so a lost bus message costs latency, never data — a gateway notices the
//! gap by `prev` and reads the log.
//!
//! Backends: [`local::LocalBus`] (in-process, single node) and, with the
//! `nats` feature, `nats::NatsBus` (core NATS subjects, distributed mode).

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod local;
#[cfg(feature = "nats")]
pub mod nats;

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use natter_types::{Appended, LogEvent, Result, SessionId, UserId};

/// A durable log event on its way to a user's live sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    pub seq: u64,
    /// Seq of the user's previous event. A receiver that has delivered less
    /// than `prev` missed something and reads the gap from the log.
    pub prev: u64,
    pub event: Arc<SharedEvent>,
}

/// A durable event as a fan-out hands it to every recipient: one copy of
/// the event, and one encoding of it for all their sessions, not one each.
/// It dereferences to the event.
#[derive(Debug)]
pub struct SharedEvent {
    event: LogEvent,
    encoded: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(event: LogEvent) -> Arc<Self> {
        Arc::new(Self { event, encoded: OnceLock::new() })
    }

    /// What `encode` makes of the event, made by the first caller only. Every
    /// caller must pass the same encoding (the gateway's protobuf one).
    pub fn encoded(&self, encode: impl FnOnce(&LogEvent) -> Bytes) -> &Bytes {
        self.encoded.get_or_init(|| encode(&self.event))
    }
}

impl Deref for SharedEvent {
    type Target = LogEvent;

    fn deref(&self) -> &LogEvent {
        &self.event
    }
}

/// Equal when the events are: the encoding is derived from the event.
impl PartialEq for SharedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event
    }
}

impl Eq for SharedEvent {}

/// A server frame for a user's live sessions that is not kept in any log
/// (presence changes): encoded once, in both wire formats, for every
/// recipient, so a fan-out to thousands of sessions encodes nothing again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transient {
    /// The protobuf `ServerFrame`.
    pub proto: Bytes,
    /// The same frame as proto3 JSON.
    pub json: Bytes,
}

/// What a live subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    Event(LiveEvent),
    Transient(Arc<Transient>),
    /// The subscriber fell behind and events were dropped: re-read the log.
    /// (Transient frames dropped with them are gone, as live-only frames are
    /// for an offline device.)
    Lagged,
}

/// A request to the gateway that holds a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close these sessions of the user: a newer device took their place.
    Kick { user: UserId, sessions: Vec<SessionId> },
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends a durable event to each recipient's live subscribers, if any:
    /// `users[i]` has it at `at[i]` in their log. One call for a whole
    /// fan-out, so a 1000-member group message is one call (and on NATS one
    /// encoding of the event), not a thousand.
    async fn publish_event(&self, event: Arc<SharedEvent>, users: &[UserId], at: &[Appended]) -> Result<()>;

    /// [`publish_event`](Self::publish_event) to one user.
    async fn publish_user(&self, user: &UserId, live: LiveEvent) -> Result<()> {
        let at = Appended { seq: live.seq, prev: live.prev };
        self.publish_event(live.event, std::slice::from_ref(user), &[at]).await
    }

    /// Sends a live-only frame to every live session of each user.
    async fn publish_transient(&self, users: &[UserId], frame: Arc<Transient>) -> Result<()>;

    /// Live events for one user, from now on. Subscribe before reading the
    /// log so that nothing falls between the two.
    async fn subscribe_user(&self, user: &UserId) -> Result<BoxStream<'static, Live>>;

    async fn publish_control(&self, gateway: &str, control: Control) -> Result<()>;

    async fn subscribe_control(&self, gateway: &str) -> Result<BoxStream<'static, Control>>;
}
