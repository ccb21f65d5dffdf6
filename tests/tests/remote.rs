//! The gateway in the distributed shape: its service APIs are gRPC clients
//! of a message, a presence and a conversation role (served on
//! 127.0.0.1 port 0), and real SDK clients exchange a 1:1 message through it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_api::{
    ConversationRoleServer, MessageRoleServer, PresenceRoleServer, RemoteConversations, RemoteMessages, RemotePresence,
};
use natter_bus::local::LocalBus;
use natter_client::{ClientError, ClientOptions, v1};
use natter_e2e::{WAIT, connect_caught_up, text_of};
use natter_gateway::{GatewayOptions, Tokens};
use natter_message::MessageOptions;
use natter_presence::PresenceOptions;
use natter_presence::local::LocalSessionRegistry;
use natter_runtime::{Stage, Tasks};
use natter_server::wiring::{self, Apis, Backends};
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{Limits, UserId};
use tokio::net::TcpListener;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one role's gRPC routes on a fresh port; returns its `http://` URI.
async fn serve_grpc(routes: tonic::service::Routes, tasks: &Tasks) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tasks.spawn(Stage::Ingress, "grpc", |stop| async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop.cancelled_owned())
            .await?;
        Ok(())
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn gateway_over_remote_roles_delivers_one_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap().stores();
    let backends = Backends { stores, bus: Arc::new(LocalBus::new()), sessions: Arc::new(LocalSessionRegistry::new()) };
    let limits = Limits::default();

    // The message role and the presence role, wired as their processes wire
    // them, each behind its gRPC server.
    let messages = wiring::message_service(
        MessageOptions { node_id: 1, limits: limits.clone(), ..MessageOptions::default() },
        &backends,
    );
    let presence =
        wiring::presence_service(PresenceOptions::default(), limits.clone(), &backends, None, &tasks).await.unwrap();
    let message_uri = serve_grpc(
        tonic::service::Routes::new(MessageRoleServer::new(messages, limits.clone()).into_service()),
        &tasks,
    )
    .await;
    let presence_uri =
        serve_grpc(tonic::service::Routes::new(PresenceRoleServer::new(presence.clone()).into_service()), &tasks).await;
    let conversations = wiring::conversation_service(Default::default(), &backends);
    let conversation_uri =
        serve_grpc(tonic::service::Routes::new(ConversationRoleServer::new(conversations).into_service()), &tasks)
            .await;

    // The gateway knows the roles only through the remote clients.
    let tokens = Tokens::new(b"remote-test-secret", 3600);
    let apis = Apis {
        messages: Arc::new(RemoteMessages::connect_lazy(&message_uri, CALL_TIMEOUT).unwrap()),
        presence: Arc::new(RemotePresence::connect_lazy(&presence_uri, CALL_TIMEOUT).unwrap()),
        conversations: Arc::new(RemoteConversations::connect_lazy(&conversation_uri, CALL_TIMEOUT).unwrap()),
    };
    let options = GatewayOptions {
        gateway_id: "gw-remote".into(),
        limits,
        lease_renew_interval: presence.lease() / 3,
        ..GatewayOptions::default()
    };
    let gateway = wiring::gateway(options, &backends, &apis, tokens.clone(), &tasks);
    let router = gateway.router();
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    tasks.spawn(Stage::Ingress, "http", |stop| async move {
        axum::serve(ws_listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await?;
        Ok(())
    });

    let options = |name: &str| {
        let token = tokens.mint(&UserId::parse(name, "user").unwrap(), 3600).unwrap().0;
        ClientOptions {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..ClientOptions::new(format!("ws://{ws_addr}"), token)
        }
    };
    let (alice, _alice_events) = connect_caught_up(options("alice")).await;
    let (bob, mut bob_events) = connect_caught_up(options("bob")).await;

    // Presence went through the presence role: alice sees bob online.
    let seen = alice.get_presence_status(["bob"]).await.unwrap();
    assert!(seen[0].online, "{seen:?}");

    let ack = alice.send_text("bob", v1::ChatType::Single, "hello over grpc").await.expect("send");
    assert!(ack.server_msg_id > 0 && ack.timestamp > 0 && !ack.duplicate);
    let got = bob_events.next_message(WAIT).await.expect("bob receives");
    assert_eq!(
        (got.id, got.from.as_str(), got.to.as_str(), text_of(&got)),
        (ack.server_msg_id, "alice", "bob", "hello over grpc")
    );
    assert_eq!(got.timestamp, ack.timestamp);

    let reply = bob.send_text("alice", v1::ChatType::Single, "hi alice").await.expect("reply");
    assert!(reply.server_msg_id > ack.server_msg_id);

    // An error from the message role reaches the SDK with its code: alice
    // is not a member of bob's group (created through the role too).
    let group = bob.create_group(v1::CreateGroup { name: "bobs".into(), ..Default::default() }).await.unwrap();
    match alice.send_text(&group.id, v1::ChatType::Group, "let me in").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, v1::ErrorCode::Forbidden),
        other => panic!("expected FORBIDDEN, got {other:?}"),
    }

    drop((alice, bob));
    tasks.stop(Duration::from_secs(5)).await.unwrap();
}
