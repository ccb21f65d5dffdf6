//! The test harness the gateway's integration tests share: a real gateway
//! on port 0 over the embedded store (temp dir), the local bus and the
//! real message and presence services, wired as the single node wires them.
// Each test file uses a part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_bus::local::LocalBus;
use natter_bus::{LiveEvent, SharedEvent};
use natter_client::{Client, ClientEvent, ClientOptions, Events};
use natter_gateway::{GatewayOptions, Tokens};
use natter_message::MessageOptions;
use natter_presence::PresenceOptions;
use natter_presence::local::LocalSessionRegistry;
use natter_runtime::{Stage, Tasks};
use natter_server::wiring::{self, Backends};
use natter_store::Stores;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{ChatType, IdGenerator, Limits, LogEvent, Message, MessageBody, UserId};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    pub stores: Stores,
    pub bus: Arc<LocalBus>,
    pub tokens: Tokens,
    pub url: String,
    /// Dropped with the harness, which stops everything it started.
    _tasks: Tasks,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(GatewayOptions::default()).await
    }

    pub async fn start_with(options: GatewayOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tasks = Tasks::new();
        let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap().stores();
        let bus = Arc::new(LocalBus::new());
        let backends =
            Backends { stores: stores.clone(), bus: bus.clone(), sessions: Arc::new(LocalSessionRegistry::new()) };
        let limits = Limits::default();
        let message = MessageOptions { node_id: 1, limits: limits.clone(), ..MessageOptions::default() };
        let (apis, _) =
            wiring::local_services(message, PresenceOptions::default(), Default::default(), &backends, &tasks)
                .await
                .unwrap();
        let tokens = Tokens::new(b"delivery-test-secret", 3600);
        let gateway = wiring::gateway(GatewayOptions { limits, ..options }, &backends, &apis, tokens.clone(), &tasks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let router = gateway.router();
        tasks.spawn(Stage::Ingress, "http", |stop| async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stop.cancelled_owned())
                .await?;
            Ok(())
        });
        Self { stores, bus, tokens, url, _tasks: tasks, _dir: dir }
    }

    pub async fn connect(&self, user: &UserId) -> (Client, Events) {
        let token = self.tokens.mint(user, 3600).unwrap().0;
        let (client, mut events) = Client::connect(ClientOptions::new(self.url.clone(), token)).await.unwrap();
        while !matches!(events.recv_timeout(WAIT).await.unwrap(), ClientEvent::CaughtUp(_)) {}
        (client, events)
    }

    /// Appends `n` messages to `user`'s log (durably) without publishing
    /// them; returns the live events the message service would publish.
    pub async fn append(&self, user: &UserId, n: usize) -> Vec<LiveEvent> {
        let ids = IdGenerator::new(2);
        let from = UserId::parse("sender", "from").unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let id = ids.next();
            let event = LogEvent::Message(Message {
                id,
                client_msg_id: format!("c{i}"),
                from: from.clone(),
                to: user.to_string(),
                chat_type: ChatType::Single,
                timestamp: id.timestamp_ms(),
                body: MessageBody::Text(format!("m{i}")),
                ext: BTreeMap::new(),
                from_system: false,
                allow_group_ack: false,
                pos: 0,
            });
            let at = self.stores.log.append(std::slice::from_ref(user), &event).await.unwrap()[0];
            out.push(LiveEvent { seq: at.seq, prev: at.prev, event: SharedEvent::new(event) });
        }
        out
    }
}
