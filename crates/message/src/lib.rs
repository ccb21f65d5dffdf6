//! The message service: the send pipeline, groups, receipts and recall.
//!
//! Send: validate → resolve recipients → store the message with its
//! idempotency record (durable) → append one event to every recipient's log
//! (durable) → publish live → answer. The answer (R1) therefore means the
//! message and every recipient's copy of the event survive a crash. A retry
//! with the same client message id returns the stored id and completes a
//! fan-out that a crash interrupted.
//!
//! Callers hold an `Arc<dyn MessageApi>` (`natter-api`): the local
//! [`MessageService`] in the single-node mode, a gRPC client in the
//! distributed mode.

mod groups;
mod read_counts;
mod receipts;
mod service;

pub use service::{MessageOptions, MessageService};
