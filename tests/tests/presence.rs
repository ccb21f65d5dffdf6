//! Presence end to end: over real WebSockets, the backend gRPC API and a
//! real webhook receiver. The scenarios live in `natter_e2e::scenarios`;
//! `tests/distributed.rs` runs them against the distributed mode too.

use natter_e2e::{TestServer, scenarios};

#[tokio::test]
async fn p1_p3_p4_presence_over_websockets() {
    scenarios::p1_p3_p4_presence_over_websockets::<TestServer>().await;
}

#[tokio::test]
async fn backend_grpc_queries_presence_and_subscriptions() {
    scenarios::backend_grpc_queries_presence_and_subscriptions::<TestServer>().await;
}

#[tokio::test]
async fn w1_webhook_reports_connect_kick_and_logout() {
    scenarios::w1_webhook_reports_connect_kick_and_logout::<TestServer>().await;
}
