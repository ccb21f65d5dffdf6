//! The presence service (SPEC P1–P8, W1–W5).
//!
//! - **Sessions** ([`SessionRegistry`]): gateways report every connect and
//!   disconnect; the registry enforces the per-user device limit atomically
//!   and holds each gateway's lease, so a crashed gateway's sessions go
//!   offline once its lease runs out.
//! - **Presence** = the user's online devices (from the registry) + a custom
//!   description and the time of the last change (from the store).
//! - **Subscriptions** live in the store by subscriber and by target with an
//!   expiry; an expired one stops counting at its expiry (every read filters
//!   by the server clock) and is removed by the [`sweeper`], whose work is
//!   proportional to what expires.
//! - **Changes** are encoded once and sent live to every session of every
//!   live subscriber and of the user themself; they are not kept for offline
//!   devices (a connecting device queries presence).
//! - **Flap damping**: a device that drops and comes back within the window
//!   produces no offline/online pair, for subscribers or the webhook.
//! - **Webhook** ([`webhook`]): every session status change goes to a durable
//!   outbox per receiver and is POSTed in signed, ordered batches.

pub mod clock;
pub mod local;
pub mod remote;
mod service;
pub mod sweeper;
pub mod webhook;

use async_trait::async_trait;
use natter_types::{Presence, Result, SessionStatus, Subscription, UserId};

// Both live below presence so the CQL backend can implement the registry;
// re-exported here so their users keep one path.
pub use natter_store::SessionRegistry;
pub use natter_types::SessionInfo;
pub use service::{LEADER_LEASE, PresenceOptions, PresenceService};

/// A page of a user's subscriptions (P6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionPage {
    pub subscriptions: Vec<Subscription>,
    pub total: usize,
}

/// The presence service as the gateway and the backend API see it: the
/// local [`PresenceService`], or a remote client in the distributed mode.
#[async_trait]
pub trait PresenceApi: Send + Sync + 'static {
    /// A device connected. Returns the sessions it displaced (already
    /// removed and announced offline): the caller closes them.
    async fn session_opened(&self, session: SessionInfo) -> Result<Vec<SessionInfo>>;

    /// A device's connection ended: `Offline` (closed, dropped, dead) or
    /// `LoggedOut`. A session that was kicked or expired is ignored.
    async fn session_closed(&self, session: &SessionInfo, status: SessionStatus) -> Result<()>;

    /// Keeps the gateway's sessions alive for another lease period.
    async fn renew_lease(&self, gateway: &str) -> Result<()>;

    /// P1: subscribe for `expiry_secs`; returns the targets' presence.
    async fn subscribe(&self, subscriber: &UserId, targets: Vec<UserId>, expiry_secs: u64) -> Result<Vec<Presence>>;

    /// P5
    async fn unsubscribe(&self, subscriber: &UserId, targets: Vec<UserId>) -> Result<()>;

    /// P3: set the custom description; returns the new presence.
    async fn publish(&self, user: &UserId, description: String) -> Result<Presence>;

    /// P6: `page_num` from 0.
    async fn subscriptions(&self, subscriber: &UserId, page_num: u32, page_size: u32) -> Result<SubscriptionPage>;

    /// P7
    async fn query(&self, users: Vec<UserId>) -> Result<Vec<Presence>>;
}
