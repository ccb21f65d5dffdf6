//! `natter-bench`: drives real WebSocket clients against a running Natter
//! (or one it starts) and measures what users of an IM backend care about:
//! idle connections per gateway and their memory, 1:1 persisted latency and
//! throughput, and group fan-out, next to a bare broadcast server and raw
//! NATS publish/subscribe measured in the same run. See docs/PERFORMANCE.md#scenarios.
//!
//! Modules: `client` (load clients and connecting), `wire` (frames),
//! `scenarios` (idle, direct, fanout, nats, presence, the read scenarios
//! conversations and history, and group read receipts), `bare` (the baseline
//! server), `nats_server` (the NATS baseline's nats-server),
//! `stats` / `procfs` / `disk` (measurement), `progress` (the live line), `suite`
//! (what runs, checks against the targets) and `report` (JSON, Markdown).

pub mod bare;
pub mod client;
pub mod disk;
pub mod nats_server;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod suite;
pub mod target;
pub mod wire;
