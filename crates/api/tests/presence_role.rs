//! `PresenceApi` over real gRPC on 127.0.0.1: the local `PresenceService`
//! (embedded store in a temp dir + in-process bus) served by
//! `PresenceRoleServer`, called through `RemotePresence`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use natter_api::{PresenceApi, PresenceRoleServer, RemotePresence};
use natter_bus::local::LocalBus;
use natter_presence::local::LocalSessionRegistry;
use natter_presence::{PresenceDeps, PresenceOptions, PresenceService, SessionInfo};
use natter_proto::v1;
use natter_runtime::{Stage, Tasks};
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{ErrorCode, Limits, SessionId, SessionStatus, UserId};
use tokio::net::TcpListener;

fn user(name: &str) -> UserId {
    UserId::parse(name, "user").unwrap()
}

struct Harness {
    local: Arc<PresenceService>,
    remote: RemotePresence,
    addr: std::net::SocketAddr,
    /// Dropped with the harness, which stops the service and the server.
    _tasks: Tasks,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let tasks = Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap().stores();
    let deps = PresenceDeps {
        registry: Arc::new(LocalSessionRegistry::new()),
        store: stores.presence.clone(),
        outbox: stores.outbox.clone(),
        bus: Arc::new(LocalBus::new()),
        leader: None,
    };
    let limits = Limits { max_sessions_per_user: 2, ..Limits::default() };
    let local = PresenceService::start(PresenceOptions::default(), limits, deps, &tasks).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = PresenceRoleServer::new(local.clone()).into_service();
    tasks.spawn(Stage::Ingress, "grpc", |stop| async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop.cancelled_owned())
            .await?;
        Ok(())
    });
    let remote = RemotePresence::connect_lazy(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
    Harness { local, remote, addr, _tasks: tasks, _dir: dir }
}

fn session(name: &str, device: &str, session: &str, at: i64) -> SessionInfo {
    SessionInfo {
        user: user(name),
        session: SessionId(session.into()),
        device: device.into(),
        gateway: "g1".into(),
        platform: "Android".into(),
        client_addr: "127.0.0.1:5555".into(),
        connected_at: at,
    }
}

#[tokio::test]
async fn sessions_open_kick_and_close() {
    let h = harness().await;
    let api: &dyn PresenceApi = &h.remote;
    let first = session("bob", "phone", "s1", 1);
    assert!(api.session_opened(first.clone()).await.unwrap().is_empty());
    assert!(api.session_opened(session("bob", "pad", "s2", 2)).await.unwrap().is_empty());
    // Past the limit of 2 the oldest is displaced and handed back, intact.
    let kicked = api.session_opened(session("bob", "pc", "s3", 3)).await.unwrap();
    assert_eq!(kicked, vec![first]);
    api.renew_lease("g1").await.unwrap();

    let bob = &api.query(vec![user("bob")]).await.unwrap()[0];
    let mut devices: Vec<_> = bob.devices.iter().map(|d| (d.device.as_str(), d.online)).collect();
    devices.sort();
    assert_eq!(devices, vec![("pad", true), ("pc", true)]);
    assert_eq!(bob.devices[0].platform, "Android");

    api.session_closed(&session("bob", "pad", "s2", 2), SessionStatus::Offline).await.unwrap();
    api.session_closed(&session("bob", "pc", "s3", 3), SessionStatus::LoggedOut).await.unwrap();
    let bob = api.query(vec![user("bob")]).await.unwrap().remove(0);
    assert!(!bob.online(), "{bob:?}");
    assert_eq!(bob, h.local.query(vec![user("bob")]).await.unwrap().remove(0), "same as local");
}

#[tokio::test]
async fn subscribe_query_publish_and_page() {
    let h = harness().await;
    let api: &dyn PresenceApi = &h.remote;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    api.session_opened(session("bob", "phone", "s1", 1)).await.unwrap();

    let got = api.subscribe(&alice, vec![bob.clone(), carol.clone()], 3600).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().find(|p| p.user == bob).unwrap().online());
    assert!(!got.iter().find(|p| p.user == carol).unwrap().online());

    let published = api.publish(&bob, "in a meeting".into()).await.unwrap();
    assert_eq!((published.user.as_str(), published.description.as_str()), ("bob", "in a meeting"));
    assert!(published.time > 0);
    let queried = api.query(vec![bob.clone()]).await.unwrap();
    assert_eq!(queried, vec![published.clone()]);
    assert_eq!(queried, h.local.query(vec![bob.clone()]).await.unwrap());

    let page = api.subscriptions(&alice, 0, 10).await.unwrap();
    assert_eq!(page.total, 2);
    let mut targets: Vec<_> = page.subscriptions.iter().map(|s| s.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, vec![bob.clone(), carol.clone()]);
    assert!(page.subscriptions.iter().all(|s| s.expires_at > published.time));
    assert_eq!(page, h.local.subscriptions(&alice, 0, 10).await.unwrap());

    api.unsubscribe(&alice, vec![carol]).await.unwrap();
    let page = api.subscriptions(&alice, 0, 10).await.unwrap();
    assert_eq!((page.total, page.subscriptions[0].target.clone()), (1, bob));
}

#[tokio::test]
async fn validation_errors_come_back_unchanged() {
    let h = harness().await;
    let (alice, bob) = (user("alice"), user("bob"));
    let remote = h.remote.subscribe(&alice, vec![bob.clone()], 0).await.unwrap_err();
    let local = h.local.subscribe(&alice, vec![bob.clone()], 0).await.unwrap_err();
    assert_eq!((remote.code, remote.field.as_deref()), (ErrorCode::BadRequest, Some("expiry")));
    assert_eq!(remote, local, "code, field and message");

    let many: Vec<UserId> = (0..101).map(|i| user(&format!("u{i}"))).collect();
    let remote = h.remote.query(many.clone()).await.unwrap_err();
    assert_eq!(remote.code, ErrorCode::LimitExceeded);
    assert_eq!(remote, h.local.query(many).await.unwrap_err());

    let remote = h.remote.subscriptions(&alice, 0, 1000).await.unwrap_err();
    assert_eq!(remote.field.as_deref(), Some("page_size"));
    assert_eq!(remote, h.local.subscriptions(&alice, 0, 1000).await.unwrap_err());

    let long = "x".repeat(100_000);
    let remote = h.remote.publish(&alice, long.clone()).await.unwrap_err();
    assert_eq!(remote, h.local.publish(&alice, long).await.unwrap_err());
}

#[tokio::test]
async fn the_role_validates_wire_input() {
    let h = harness().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr)).unwrap().connect_lazy();
    let mut raw = v1::presence_role_client::PresenceRoleClient::new(channel);
    let bad_user = v1::SessionInfo { user_id: "no spaces".into(), session_id: "s".into(), ..Default::default() };
    let e = natter_proto::error_from_status(&raw.session_opened(bad_user).await.unwrap_err());
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BadRequest, Some("session.user_id")));
    let closed = v1::RoleSessionClosedRequest {
        session: Some(v1::SessionInfo { user_id: "bob".into(), session_id: "s".into(), ..Default::default() }),
        status: 0,
    };
    let e = natter_proto::error_from_status(&raw.session_closed(closed).await.unwrap_err());
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BadRequest, Some("status")));
    let e = natter_proto::error_from_status(
        &raw.renew_lease(v1::RoleRenewLeaseRequest { gateway: String::new() }).await.unwrap_err(),
    );
    assert_eq!(e.field.as_deref(), Some("gateway"));
}

#[tokio::test]
async fn an_unreachable_role_is_unavailable() {
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let remote = RemotePresence::connect_lazy(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
    let err = remote.renew_lease("g1").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
}
