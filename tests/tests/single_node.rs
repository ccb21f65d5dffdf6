//! End-to-end tests of the single-node server over real WebSockets and gRPC:
//! every scenario of `natter_e2e::scenarios`, under its own name, as
//! `tests/distributed.rs` runs them against the distributed mode.

natter_e2e::scenarios!(natter_e2e::TestServer);
