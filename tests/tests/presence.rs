//! Presence end to end: over real WebSockets, the backend gRPC API and a
//! real webhook receiver.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use natter_client::{ClientEvent, ClientOptions, Events, v1};
use natter_e2e::{TestServer, WAIT};
use parking_lot::Mutex;

async fn next_presence(events: &mut Events) -> v1::PresenceStatus {
    loop {
        if let ClientEvent::OnPresenceStatusChange(p) = events.recv_timeout(WAIT).await.expect("presence change") {
            return p;
        }
    }
}

#[tokio::test]
async fn p1_p3_p4_presence_over_websockets() {
    let server = TestServer::start_with(|c| c.presence.flap_window_ms = 0).await;
    let (alice, mut alice_events) = server.client("alice").await;
    let subscribed = alice.subscribe_presence(["bob"], 3600).await.unwrap();
    assert_eq!(subscribed.len(), 1);
    assert!(!subscribed[0].online);

    let bob_options = ClientOptions { platform: "Android".into(), ..server.options("bob") };
    let (bob, _bob_events) = natter_e2e::connect_caught_up(bob_options).await;
    let online = next_presence(&mut alice_events).await;
    assert_eq!(online.user_id, "bob");
    assert!(online.online);
    assert_eq!(online.devices[0].platform, "Android");

    bob.publish_presence("on a call").await.unwrap();
    assert_eq!(next_presence(&mut alice_events).await.description, "on a call");

    let page = alice.get_subscribed_presence_list(0, 10).await.unwrap();
    assert_eq!((page.total, page.subscriptions[0].user_id.as_str()), (1, "bob"));
    let status = alice.get_presence_status(["bob"]).await.unwrap();
    assert_eq!(status[0].description, "on a call");

    bob.logout().await.unwrap();
    let gone = next_presence(&mut alice_events).await;
    assert!(!gone.online, "logout takes the device offline");

    let err = alice.subscribe_presence(["bob"], 31 * 24 * 3600).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::BadRequest));
}

#[tokio::test]
async fn backend_grpc_queries_presence_and_subscriptions() {
    let server = TestServer::start().await;
    let (alice, _a) = server.client("alice").await;
    alice.subscribe_presence(["bob", "carol"], 600).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    let mut backend = v1::backend_client::BackendClient::new(channel);
    let key = server.api_key();
    fn auth<T>(key: &str, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    }
    let presences = backend
        .query_presence(auth(&key, v1::BackendPresenceRequest { user_ids: vec!["alice".into()] }))
        .await
        .unwrap()
        .into_inner();
    assert!(presences.presences[0].online);
    let subs = backend
        .list_presence_subscriptions(auth(
            &key,
            v1::BackendSubscriptionsRequest { user_id: "alice".into(), page_num: 0, page_size: 1 },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((subs.total, subs.subscriptions.len()), (2, 1));
}

#[tokio::test]
async fn w1_webhook_reports_connect_kick_and_logout() {
    let calls: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = calls.clone();
    let app = axum::Router::new().route(
        "/presence",
        post(move |Json(batch): Json<Vec<serde_json::Value>>| {
            let sink = sink.clone();
            async move {
                sink.lock().extend(batch);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/presence", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::start_with(|c| {
        c.limits.max_sessions_per_user = 1;
        c.presence.webhook.urls = vec![url.clone()];
        c.presence.webhook.app_key = "app".into();
        c.presence.webhook.app_secret = "secret".into();
    })
    .await;
    let (first, _f) = server.client("dora").await;
    let first_session = first.hello().session_id;
    let (second, _s) = server.client("dora").await;
    second.logout().await.unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    while calls.lock().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "webhook calls: {:?}", calls.lock());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = calls.lock().clone();
    let statuses: Vec<(&str, bool)> = calls
        .iter()
        .map(|c| (c["status"].as_str().unwrap(), c["sessionId"].as_str().unwrap() == first_session))
        .collect();
    // online(first), kicked → offline(first), online(second), logout(second)
    assert_eq!(statuses, [("0", true), ("1", true), ("0", false), ("2", false)]);
    assert!(calls.iter().all(|c| c["userid"] == "dora" && c["os"] == "Websocket"));
    assert!(calls[0]["clientIp"].as_str().unwrap().starts_with("127.0.0.1:"));
}
