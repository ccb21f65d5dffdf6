//! The bus conformance suite against a real nats-server (`deploy/nats.sh`).
//! Address from `NATTER_NATS` (default nats://127.0.0.1:4222). Built with
//! the `nats-tests` feature only (`make test-nats`); then an unreachable
//! server fails the test, it never skips.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use natter_bus::nats::NatsBus;

async fn bus() -> NatsBus {
    let url = std::env::var("NATTER_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    match tokio::time::timeout(Duration::from_secs(10), NatsBus::connect(&url, "natter-test")).await {
        Ok(Ok(bus)) => bus,
        other => panic!("no nats-server at {url} (start one with deploy/nats.sh start): {other:?}"),
    }
}

natter_bus::conformance_tests!(bus);

#[tokio::test]
async fn user_ids_with_dots_get_their_own_subjects() {
    use futures::StreamExt;
    use natter_bus::{Bus, Live};
    use natter_types::UserId;
    let bus = bus().await;
    let dotted = UserId::parse("a.b", "u").unwrap();
    let plain = UserId::parse("a", "u").unwrap();
    let mut dotted_sub = bus.subscribe_user(&dotted).await.unwrap();
    let mut plain_sub = bus.subscribe_user(&plain).await.unwrap();
    bus.publish_user(&dotted, natter_bus::conformance::live(7)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), dotted_sub.next()).await.unwrap();
    assert_eq!(got, Some(Live::Event(natter_bus::conformance::live(7))));
    assert!(tokio::time::timeout(Duration::from_millis(200), plain_sub.next()).await.is_err());
}
