//! Presence service behaviour (SPEC P1–P8, W4, flap damping, leases) over
//! the real embedded store and in-process bus, with paused tokio time for
//! every expiry rule.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use natter_api::PresenceApi;
use natter_bus::local::LocalBus;
use natter_bus::{Bus, Live};
use natter_presence::local::LocalSessionRegistry;
use natter_presence::{PresenceDeps, PresenceOptions, PresenceService, SessionInfo, SessionRegistry};
use natter_proto::v1;
use natter_runtime::Tasks;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{ErrorCode, Limits, SessionId, SessionStatus, UserId};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

struct Harness {
    service: Arc<PresenceService>,
    bus: LocalBus,
    registry: Arc<LocalSessionRegistry>,
    /// Requests the stop, as a signal would; dropping the harness then
    /// stops the service's background jobs.
    cancel: CancellationToken,
    _tasks: Tasks,
    _dir: tempfile::TempDir,
}

fn user(name: &str) -> UserId {
    UserId::parse(name, "user").unwrap()
}

async fn harness(limits: Limits, options: PresenceOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let tasks = Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap().stores();
    let bus = LocalBus::new();
    let registry = Arc::new(LocalSessionRegistry::new());
    let deps = PresenceDeps {
        registry: registry.clone(),
        store: stores.presence.clone(),
        outbox: stores.outbox.clone(),
        bus: Arc::new(bus.clone()),
        leader: None,
    };
    let service = PresenceService::start(options, limits, deps, &tasks).await.unwrap();
    Harness { service, bus, registry, cancel: tasks.stop_token(), _tasks: tasks, _dir: dir }
}

async fn default_harness() -> Harness {
    harness(Limits::default(), PresenceOptions::default()).await
}

fn session(name: &str, device: &str, session: &str) -> SessionInfo {
    SessionInfo {
        user: user(name),
        session: SessionId(session.into()),
        device: device.into(),
        gateway: "g1".into(),
        platform: "iOS".into(),
        client_addr: "127.0.0.1:5555".into(),
        connected_at: 0,
    }
}

/// Presence changes as a user's live sessions see them.
struct Watch(BoxStream<'static, Live>);

impl Watch {
    async fn of(h: &Harness, name: &str) -> Self {
        Self(h.bus.subscribe_user(&user(name)).await.unwrap())
    }

    async fn next(&mut self) -> v1::PresenceStatus {
        loop {
            let live = tokio::time::timeout(Duration::from_secs(5), self.0.next()).await.expect("a change in time");
            if let Some(Live::Transient(frame)) = live {
                let decoded = v1::ServerFrame::decode(frame.proto.as_ref()).unwrap();
                let json: v1::ServerFrame = serde_json::from_slice(&frame.json).unwrap();
                assert_eq!(decoded, json, "both encodings carry the same frame");
                match decoded.body {
                    Some(v1::server_frame::Body::OnPresenceStatusChange(p)) => return p,
                    other => panic!("unexpected frame {other:?}"),
                }
            }
        }
    }

    async fn quiet(&mut self, for_: Duration) {
        if let Ok(Some(live)) = tokio::time::timeout(for_, self.0.next()).await {
            panic!("expected no change, got {live:?}");
        }
    }
}

fn devices(p: &v1::PresenceStatus) -> Vec<(String, bool)> {
    let mut d: Vec<_> = p.devices.iter().map(|d| (d.device.clone(), d.online)).collect();
    d.sort();
    d
}

#[tokio::test(start_paused = true)]
async fn p1_subscribe_validates_and_returns_current_presence() {
    let h = default_harness().await;
    h.service.session_opened(session("bob", "phone", "s1")).await.unwrap();
    let got = h.service.subscribe(&user("alice"), vec![user("bob"), user("carol")], 3600).await.unwrap();
    assert_eq!(got.len(), 2);
    let bob = got.iter().find(|p| p.user == user("bob")).unwrap();
    assert!(bob.online() && bob.devices[0].platform == "iOS");
    assert!(!got.iter().find(|p| p.user == user("carol")).unwrap().online());

    let err = h.service.subscribe(&user("alice"), vec![user("bob")], 30 * 24 * 3600 + 1).await.unwrap_err();
    assert_eq!((err.code, err.field.as_deref()), (ErrorCode::BadRequest, Some("expiry")));
    let err = h.service.subscribe(&user("alice"), vec![user("bob")], 0).await.unwrap_err();
    assert_eq!(err.field.as_deref(), Some("expiry"));
    let many: Vec<UserId> = (0..101).map(|i| user(&format!("u{i}"))).collect();
    let err = h.service.subscribe(&user("alice"), many, 60).await.unwrap_err();
    assert_eq!((err.code, err.field.as_deref()), (ErrorCode::LimitExceeded, Some("usernames")));
    assert!(err.message.contains("limit per call is 100"), "{}", err.message);
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p1_resubscribing_replaces_the_expiry() {
    let h = default_harness().await;
    let alice = user("alice");
    h.service.subscribe(&alice, vec![user("bob")], 100).await.unwrap();
    h.service.subscribe(&alice, vec![user("bob")], 10).await.unwrap();
    let page = h.service.subscriptions(&alice, 0, 10).await.unwrap();
    let now = h.service.clock().now_ms();
    let remaining = page.subscriptions[0].expires_at - now;
    assert!((9_000..=10_000).contains(&remaining), "the shorter, newer expiry wins: {remaining} ms");
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p2_subscription_cap_evicts_shortest() {
    let limits = Limits { max_presence_subscriptions: 3, ..Limits::default() };
    let h = harness(limits, PresenceOptions::default()).await;
    let alice = user("alice");
    h.service.subscribe(&alice, vec![user("a")], 300).await.unwrap();
    h.service.subscribe(&alice, vec![user("b")], 100).await.unwrap();
    h.service.subscribe(&alice, vec![user("c")], 200).await.unwrap();
    h.service.subscribe(&alice, vec![user("d")], 50).await.unwrap();
    let page = h.service.subscriptions(&alice, 0, 10).await.unwrap();
    let targets: Vec<String> = page.subscriptions.iter().map(|s| s.target.to_string()).collect();
    assert_eq!(targets, ["a", "c", "d"], "b had the shortest remaining time; the new one always stays");
    assert_eq!(page.total, 3);
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p3_publish_reaches_subscribers_and_own_devices() {
    let h = default_harness().await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;
    let mut bob = Watch::of(&h, "bob").await;
    let mut carol = Watch::of(&h, "carol").await;
    let mine = h.service.publish(&user("bob"), "in a meeting".into()).await.unwrap();
    assert_eq!(mine.description, "in a meeting");
    for watch in [&mut alice, &mut bob] {
        let p = watch.next().await;
        assert_eq!((p.user_id.as_str(), p.description.as_str()), ("bob", "in a meeting"));
        assert!(p.time > 0);
    }
    carol.quiet(Duration::from_millis(100)).await;
    let err = h.service.publish(&user("bob"), "x".repeat(257)).await.unwrap_err();
    assert_eq!((err.code, err.field.as_deref()), (ErrorCode::LimitExceeded, Some("description")));
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p4_presence_aggregates_devices_through_online_offline_and_logout() {
    let options = PresenceOptions { flap_window_ms: 0, ..PresenceOptions::default() };
    let h = harness(Limits::default(), options).await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;

    let phone = session("bob", "phone", "s1");
    let laptop = SessionInfo { platform: "PC".into(), ..session("bob", "laptop", "s2") };
    h.service.session_opened(phone.clone()).await.unwrap();
    let p = alice.next().await;
    assert!(p.online);
    assert_eq!(devices(&p), [("phone".into(), true)]);
    h.service.session_opened(laptop.clone()).await.unwrap();
    assert_eq!(devices(&alice.next().await), [("laptop".into(), true), ("phone".into(), true)]);

    h.service.session_closed(&phone, SessionStatus::Offline).await.unwrap();
    let p = alice.next().await;
    assert!(p.online, "still online on the laptop");
    assert_eq!(devices(&p), [("laptop".into(), true), ("phone".into(), false)]);

    h.service.session_closed(&laptop, SessionStatus::LoggedOut).await.unwrap();
    let p = alice.next().await;
    assert!(!p.online);
    assert_eq!(devices(&p), [("laptop".into(), false)]);
    let queried = h.service.query(vec![user("bob")]).await.unwrap();
    assert!(queried[0].devices.is_empty());
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p5_unsubscribe_stops_events() {
    let h = default_harness().await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    h.service.unsubscribe(&user("alice"), vec![user("bob")]).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;
    h.service.publish(&user("bob"), "hello".into()).await.unwrap();
    alice.quiet(Duration::from_millis(100)).await;
    assert_eq!(h.service.subscriptions(&user("alice"), 0, 10).await.unwrap().total, 0);
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p6_subscriptions_page_by_number_and_size() {
    let h = default_harness().await;
    let targets: Vec<UserId> = (0..5).map(|i| user(&format!("t{i}"))).collect();
    h.service.subscribe(&user("alice"), targets, 3600).await.unwrap();
    let first = h.service.subscriptions(&user("alice"), 0, 2).await.unwrap();
    let third = h.service.subscriptions(&user("alice"), 2, 2).await.unwrap();
    assert_eq!(first.total, 5);
    assert_eq!(first.subscriptions.iter().map(|s| s.target.to_string()).collect::<Vec<_>>(), ["t0", "t1"]);
    assert_eq!(third.subscriptions.iter().map(|s| s.target.to_string()).collect::<Vec<_>>(), ["t4"]);
    let err = h.service.subscriptions(&user("alice"), 0, 101).await.unwrap_err();
    assert_eq!(err.field.as_deref(), Some("page_size"));
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p7_query_without_subscribing() {
    let h = default_harness().await;
    h.service.session_opened(session("bob", "phone", "s1")).await.unwrap();
    h.service.publish(&user("bob"), "busy".into()).await.unwrap();
    let got = h.service.query(vec![user("bob"), user("nobody")]).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].description, "busy");
    assert!(got[0].online() && !got[1].online());
    assert_eq!(h.service.subscriptions(&user("bob"), 0, 10).await.unwrap().total, 0, "no subscription made");
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn p8_expired_subscription_stops_at_expiry_and_is_swept() {
    let h = default_harness().await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 60).await.unwrap();
    h.service.subscribe(&user("alice"), vec![user("carol")], 3600).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;

    tokio::time::advance(Duration::from_secs(59)).await;
    h.service.publish(&user("bob"), "still watched".into()).await.unwrap();
    assert_eq!(alice.next().await.description, "still watched");

    tokio::time::advance(Duration::from_secs(2)).await;
    h.service.publish(&user("bob"), "expired".into()).await.unwrap();
    alice.quiet(Duration::from_millis(100)).await;
    // Let the sweeper run; it removes exactly the expired subscription.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.service.sweeper().removed(), 1);
    let page = h.service.subscriptions(&user("alice"), 0, 10).await.unwrap();
    assert_eq!(page.subscriptions.iter().map(|s| s.target.to_string()).collect::<Vec<_>>(), ["carol"]);
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn sweeper_does_not_remove_a_subscription_that_was_extended() {
    let h = default_harness().await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 60).await.unwrap();
    h.service.subscribe(&user("alice"), vec![user("bob")], 600).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.service.sweeper().removed(), 0, "the stale schedule entry is a no-op");
    assert_eq!(h.service.subscriptions(&user("alice"), 0, 10).await.unwrap().total, 1);
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn flap_damping_hides_a_quick_reconnect_of_the_same_device() {
    let h = default_harness().await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    let first = session("bob", "phone", "s1");
    h.service.session_opened(first.clone()).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;

    h.service.session_closed(&first, SessionStatus::Offline).await.unwrap();
    tokio::time::advance(Duration::from_millis(1500)).await;
    h.service.session_opened(session("bob", "phone", "s2")).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    alice.quiet(Duration::from_millis(100)).await;

    // A drop that lasts past the window is announced, once, after it.
    let second = session("bob", "phone", "s2");
    h.service.session_closed(&second, SessionStatus::Offline).await.unwrap();
    alice.quiet(Duration::from_millis(1900)).await;
    let p = alice.next().await;
    assert!(!p.online);
    h.cancel.cancel();
}

/// A session closed while the server shuts down is announced offline at
/// once: a flap timer would outlive the shutdown (and keep the store open).
#[tokio::test(start_paused = true)]
async fn a_close_during_shutdown_is_announced_at_once() {
    let h = default_harness().await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    let bob = session("bob", "phone", "s1");
    h.service.session_opened(bob.clone()).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;
    h.cancel.cancel();
    h.service.session_closed(&bob, SessionStatus::Offline).await.unwrap();
    let p = alice.0.next().now_or_never().flatten();
    assert!(matches!(p, Some(Live::Transient(_))), "announced before the call returned, no timer: {p:?}");
}

#[tokio::test(start_paused = true)]
async fn w4_kicked_device_reports_offline() {
    let limits = Limits { max_sessions_per_user: 1, ..Limits::default() };
    let options = PresenceOptions { flap_window_ms: 0, ..PresenceOptions::default() };
    let h = harness(limits, options).await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    h.service.session_opened(session("bob", "phone", "s1")).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;
    let kicked = h.service.session_opened(session("bob", "tablet", "s2")).await.unwrap();
    assert_eq!(kicked.iter().map(|s| s.session.0.as_str()).collect::<Vec<_>>(), ["s1"]);
    // The registry swapped the devices atomically: the phone's offline
    // change already shows the tablet; then the tablet's own online change.
    let offline = alice.next().await;
    assert_eq!(devices(&offline), [("phone".into(), false), ("tablet".into(), true)]);
    assert_eq!(devices(&alice.next().await), [("tablet".into(), true)]);
    // The kicked socket closing later is not a second change.
    h.service.session_closed(&session("bob", "phone", "s1"), SessionStatus::Offline).await.unwrap();
    alice.quiet(Duration::from_millis(100)).await;
    h.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn crashed_gateway_sessions_go_offline_within_the_lease() {
    let options = PresenceOptions { lease_ms: 30_000, ..PresenceOptions::default() };
    let h = harness(Limits::default(), options).await;
    h.service.subscribe(&user("alice"), vec![user("bob")], 3600).await.unwrap();
    h.service.renew_lease("g1").await.unwrap();
    h.service.session_opened(session("bob", "phone", "s1")).await.unwrap();
    let mut alice = Watch::of(&h, "alice").await;
    // The gateway renews for a while, then dies (stops renewing).
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(10)).await;
        h.service.renew_lease("g1").await.unwrap();
    }
    alice.quiet(Duration::from_millis(100)).await;
    tokio::time::advance(Duration::from_secs(41)).await;
    let p = alice.next().await;
    assert!(!p.online, "offline within lease + one check period");
    assert!(h.registry.sessions(&user("bob")).await.unwrap().is_empty());
    h.cancel.cancel();
}
