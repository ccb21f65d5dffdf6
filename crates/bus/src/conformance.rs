//! The behaviour every bus backend must show, run unchanged against each
//! (`LocalBus` in its unit tests, NATS in `tests/nats.rs`) through
//! [`conformance_tests!`](crate::conformance_tests). User names are unique
//! per call so a shared server can be reused.
#![allow(clippy::unwrap_used)] // a test suite: a failed unwrap is a failed check

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use natter_types::{Appended, GroupChange, GroupChangeKind, GroupId, LogEvent, SessionId, UserId};

use crate::{Bus, Control, Live, LiveEvent, SharedEvent, Transient};

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!("{name}.{nanos}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn user(name: &str) -> UserId {
    UserId::parse(&unique(name), "user").unwrap()
}

pub fn live(seq: u64) -> LiveEvent {
    let change = GroupChange {
        kind: GroupChangeKind::Created,
        group_id: GroupId::from_id(seq),
        group_name: format!("g{seq}"),
        operator: UserId::system(),
        members: vec![],
        time: seq as i64,
    };
    LiveEvent { seq, prev: seq - 1, event: SharedEvent::new(LogEvent::GroupChange(change)) }
}

async fn next<T>(stream: &mut BoxStream<'static, T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time").expect("stream open")
}

async fn nothing<T: std::fmt::Debug>(stream: &mut BoxStream<'static, T>) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}

/// Expands to one `#[tokio::test]` per check, named after it, so that one
/// failing check does not hide the others; each calls `setup`, an
/// `async fn() -> impl Bus`, for a bus of its own.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@each $setup;
            live_events_reach_every_subscriber_of_that_user_only,
            a_fan_out_gives_each_recipient_its_own_place,
            transient_frames_reach_the_named_users,
            control_reaches_the_gateway
        );
    };
    (@each $setup:path; $($check:ident),+) => {$(
        #[tokio::test]
        async fn $check() {
            let bus = $setup().await;
            $crate::conformance::$check(&bus).await;
        }
    )+};
}

pub async fn live_events_reach_every_subscriber_of_that_user_only(bus: &dyn Bus) {
    let (alice, bob) = (user("alice"), user("bob"));
    let mut one = bus.subscribe_user(&alice).await.unwrap();
    let mut two = bus.subscribe_user(&alice).await.unwrap();
    let mut other = bus.subscribe_user(&bob).await.unwrap();
    bus.publish_user(&alice, live(1)).await.unwrap();
    bus.publish_user(&alice, live(2)).await.unwrap();
    for stream in [&mut one, &mut two] {
        assert_eq!(next(stream).await, Live::Event(live(1)));
        assert_eq!(next(stream).await, Live::Event(live(2)), "in order");
    }
    nothing(&mut other).await;
    drop(two);
    bus.publish_user(&alice, live(3)).await.unwrap();
    assert_eq!(next(&mut one).await, Live::Event(live(3)));
    drop(one);
    // Nobody listening is not an error: the event is in the durable log.
    bus.publish_user(&alice, live(4)).await.unwrap();
}

/// One `publish_event` for several users: each subscriber gets the event
/// with its own user's seq and prev, and only its own user's.
pub async fn a_fan_out_gives_each_recipient_its_own_place(bus: &dyn Bus) {
    let (alice, bob, carol, dan) = (user("alice"), user("bob"), user("carol"), user("dan"));
    let mut a = bus.subscribe_user(&alice).await.unwrap();
    let mut b1 = bus.subscribe_user(&bob).await.unwrap();
    let mut b2 = bus.subscribe_user(&bob).await.unwrap();
    let mut d = bus.subscribe_user(&dan).await.unwrap();
    let event = live(9).event;
    let at = [Appended { seq: 9, prev: 8 }, Appended { seq: 3, prev: 2 }, Appended { seq: 1, prev: 0 }];
    // Carol has no subscriber: not an error, and the others still get theirs.
    bus.publish_event(event.clone(), &[alice, bob, carol], &at).await.unwrap();
    assert_eq!(next(&mut a).await, Live::Event(LiveEvent { seq: 9, prev: 8, event: event.clone() }));
    for stream in [&mut b1, &mut b2] {
        assert_eq!(next(stream).await, Live::Event(LiveEvent { seq: 3, prev: 2, event: event.clone() }));
    }
    nothing(&mut d).await;
}

pub async fn transient_frames_reach_the_named_users(bus: &dyn Bus) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut a = bus.subscribe_user(&alice).await.unwrap();
    let mut b = bus.subscribe_user(&bob).await.unwrap();
    let mut c = bus.subscribe_user(&carol).await.unwrap();
    let frame = Arc::new(Transient { proto: vec![1u8, 2, 3].into(), json: b"{\"x\":1}".to_vec().into() });
    bus.publish_transient(&[alice.clone(), bob.clone()], frame.clone()).await.unwrap();
    assert_eq!(next(&mut a).await, Live::Transient(frame.clone()));
    assert_eq!(next(&mut b).await, Live::Transient(frame));
    nothing(&mut c).await;
}

pub async fn control_reaches_the_gateway(bus: &dyn Bus) {
    let (g1, g2) = (unique("g1"), unique("g2"));
    let mut first = bus.subscribe_control(&g1).await.unwrap();
    let mut second = bus.subscribe_control(&g2).await.unwrap();
    let kick = Control::Kick { user: user("dora"), sessions: vec![SessionId("s1".into()), SessionId("s2".into())] };
    bus.publish_control(&g1, kick.clone()).await.unwrap();
    assert_eq!(next(&mut first).await, kick);
    nothing(&mut second).await;
}
