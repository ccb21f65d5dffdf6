//! Rust client SDK for Natter's WebSocket protocol (see `docs/PROTOCOL.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), natter_client::ClientError> {
//! use natter_client::{Client, ClientEvent, ClientOptions, v1};
//!
//! let (client, mut events) = Client::connect(ClientOptions::new("ws://127.0.0.1:8080", "<jwt>")).await?;
//! client.send_text("bob", v1::ChatType::Single, "hi").await?;
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::OnTextMessage(m) = event {
//!         println!("{}: {:?}", m.from, m.body);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! What the SDK guarantees on top of the wire protocol:
//! - **Exactly once.** Every event is surfaced once, in server order: repeats
//!   (replays around reconnects) are dropped by seq, and reconnects resume from
//!   the last seq delivered. The server's copy of a message this client itself
//!   sent (its "echo") is not surfaced.
//! - **Acks follow consumption.** The server is told an event is processed
//!   once the application has taken it from [`Events`]; [`Client::cursor`] is
//!   that position, the one to persist and pass to a later client.
//! - **Sends survive reconnects.** A send in flight when the connection drops
//!   is written again (same client_msg_id) and completes after the reconnect.
//!   Other requests in flight fail with [`ClientError::Disconnected`]; requests
//!   made while disconnected wait for the connection.
//! - **Reconnects** follow any drop, with exponential backoff, except after the
//!   server ended the session ([`ClientEvent::Kicked`]) or rejected the token.
//!
//! One background task per client owns the socket; it stops after
//! [`Client::close`], after a kick, or once every [`Client`] clone and the
//! [`Events`] stream are dropped.

mod backoff;
mod client;
mod conn;
mod delivery;
mod driver;
mod error;
mod events;
mod options;

pub use client::{Client, new_client_msg_id};
pub use error::ClientError;
pub use events::{ClientEvent, Events};
pub use natter_proto::v1;
pub use options::ClientOptions;

/// A random number for jitter and id prefixes. std's hasher keys are seeded
/// from the OS per thread; hashing a counter under them gives independent
/// values without another dependency.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
