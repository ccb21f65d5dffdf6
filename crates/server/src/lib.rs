//! The `natter` server: configuration, the wiring of the single-node mode,
//! and the backend gRPC API. `main.rs` is the command line around it.

pub mod config;
pub mod grpc;
pub mod node;

pub use config::{Config, Overrides};
pub use node::Node;
