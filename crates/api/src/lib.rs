//! The service APIs: one trait per service, the one surface every front end
//! (the gateway's client requests, the backend gRPC API) calls, in both modes.
//!
//! Each trait is implemented by its local service (`natter-message`,
//! `natter-presence`) and, for the distributed mode, by a gRPC client of the
//! role that runs that service ([`RemoteMessages`], [`RemotePresence`]); the
//! role serves the local implementation with [`MessageRoleServer`] /
//! [`PresenceRoleServer`]. A caller holds an `Arc<dyn …Api>` and never knows
//! which one it has. Requests and answers are domain types (`natter-types`);
//! their wire forms are converted in `natter_proto::api`, once for all.
//!
//! A new request is one trait method here, its conversion in
//! `natter_proto::api`, one rpc in `internal.proto` (served and called in
//! this crate), and one line in each front end.

mod client;
pub mod conversation;
pub mod message;
pub mod presence;

pub use client::{RoleClient, lazy_channel};
pub use conversation::{ConversationApi, ConversationRoleServer, RemoteConversations};
pub use message::{MessageApi, MessageRoleServer, RemoteMessages};
pub use presence::{PresenceApi, PresenceRoleServer, RemotePresence};
