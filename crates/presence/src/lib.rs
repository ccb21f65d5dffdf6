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

pub mod local;
mod service;
pub mod sweeper;
pub mod webhook;

// Both live below presence so the CQL backend can implement the registry;
// re-exported here so their users keep one path.
pub use natter_store::SessionRegistry;
pub use natter_types::SessionInfo;
pub use service::{LEADER_LEASE, LeaderLease, PresenceDeps, PresenceOptions, PresenceService};
