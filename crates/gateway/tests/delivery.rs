//! The gateway's delivery to a real WebSocket client when live events arrive
//! out of order or not at all: every durable event reaches the device once,
//! in seq order (delivery contract 2), whatever order the bus publishes in.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Harness, WAIT};
use natter_bus::Bus;
use natter_client::Events;
use natter_gateway::GatewayOptions;
use natter_types::UserId;

/// The texts of the next `n` messages, failing on anything unexpected after.
async fn texts(events: &mut Events, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = events.next_message(WAIT).await.unwrap();
        match m.body {
            Some(natter_client::v1::message::Body::Text(t)) => out.push(t.text),
            other => panic!("unexpected body {other:?}"),
        }
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), events.next_message(WAIT)).await;
    assert!(quiet.is_err(), "no more messages expected, got {quiet:?}");
    out
}

#[tokio::test]
async fn live_events_published_out_of_order_reach_the_device_in_order_once() {
    let h = Harness::start().await;
    let bob = UserId::parse("bob", "user").unwrap();
    let (_client, mut events) = h.connect(&bob).await;
    let live = h.append(&bob, 6).await;
    // 3 and 2 overtake 1; 1 repeats; 6 comes before 4 and 5.
    for i in [2, 1, 0, 0, 5, 3, 4] {
        h.bus.publish_user(&bob, live[i].clone()).await.unwrap();
    }
    assert_eq!(texts(&mut events, 6).await, ["m0", "m1", "m2", "m3", "m4", "m5"]);
}

#[tokio::test]
async fn an_event_never_published_is_read_from_the_log() {
    let h = Harness::start().await;
    let bob = UserId::parse("bob", "user").unwrap();
    let (_client, mut events) = h.connect(&bob).await;
    let live = h.append(&bob, 4).await;
    // The second event's publish is lost: the third and fourth wait for it
    // briefly, then the gap is read from the durable log.
    for i in [0, 2, 3] {
        h.bus.publish_user(&bob, live[i].clone()).await.unwrap();
    }
    assert_eq!(texts(&mut events, 4).await, ["m0", "m1", "m2", "m3"]);
    // Live delivery goes on normally after the gap.
    let more = h.append(&bob, 1).await;
    h.bus.publish_user(&bob, more[0].clone()).await.unwrap();
    assert_eq!(texts(&mut events, 1).await, ["m0"]);
}

#[tokio::test]
async fn a_lost_publish_with_nothing_after_it_arrives_by_the_next_heartbeat() {
    let options = GatewayOptions {
        ping_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(5),
        ..GatewayOptions::default()
    };
    let h = Harness::start_with(options).await;
    let bob = UserId::parse("bob", "user").unwrap();
    let (_client, mut events) = h.connect(&bob).await;
    // Durable but never published, and no later event reveals the gap.
    h.append(&bob, 1).await;
    assert_eq!(texts(&mut events, 1).await, ["m0"]);
}
