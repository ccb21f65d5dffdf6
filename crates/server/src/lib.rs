//! The `natter` server: configuration, the wiring of the single-node mode,
//! and the backend gRPC API. `main.rs` is the command line around it.

#[cfg(feature = "distributed")]
pub mod cluster;
pub mod config;
pub mod grpc;
pub mod node;
mod process;
pub mod role;
pub mod wiring;

pub use config::{Config, Overrides};
pub use node::Node;
pub use role::Role;
