//! The gateway's delivery to a real WebSocket client when live events arrive
//! out of order or not at all: every durable event reaches the device once,
//! in seq order (delivery contract 2), whatever order the bus publishes in.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_bus::local::LocalBus;
use natter_bus::{Bus, LiveEvent, SharedEvent};
use natter_client::{Client, ClientEvent, ClientOptions, Events};
use natter_gateway::{Gateway, GatewayDeps, GatewayOptions, Tokens};
use natter_message::{MessageOptions, MessageService};
use natter_presence::local::LocalSessionRegistry;
use natter_presence::{PresenceOptions, PresenceService};
use natter_store::Stores;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{ChatType, IdGenerator, Limits, LogEvent, Message, MessageBody, UserId};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    stores: Stores,
    bus: Arc<LocalBus>,
    tokens: Tokens,
    url: String,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(GatewayOptions::default()).await
    }

    async fn start_with(options: GatewayOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap().stores();
        let bus = Arc::new(LocalBus::new());
        let cancel = CancellationToken::new();
        let limits = Limits::default();
        let messages = Arc::new(MessageService::new(
            MessageOptions { node_id: 1, limits: limits.clone() },
            stores.clone(),
            bus.clone(),
        ));
        let presence = PresenceService::new(
            PresenceOptions::default(),
            limits.clone(),
            Arc::new(LocalSessionRegistry::new()),
            stores.presence.clone(),
            stores.outbox.clone(),
            bus.clone(),
            cancel.child_token(),
        )
        .unwrap();
        presence.start().await.unwrap();
        let tokens = Tokens::new(b"delivery-test-secret", 3600);
        let deps =
            GatewayDeps { messages, log: stores.log.clone(), bus: bus.clone(), presence, tokens: tokens.clone() };
        let gateway = Gateway::new(GatewayOptions { limits, ..options }, deps, cancel.child_token());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let router = gateway.router();
        let serve_cancel = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(serve_cancel.cancelled_owned())
                .await
                .unwrap();
        });
        tokio::spawn(gateway.run());
        Self { stores, bus, tokens, url, cancel, _dir: dir }
    }

    async fn connect(&self, user: &UserId) -> (Client, Events) {
        let token = self.tokens.mint(user, 3600).unwrap().0;
        let (client, mut events) = Client::connect(ClientOptions::new(self.url.clone(), token)).await.unwrap();
        while !matches!(events.recv_timeout(WAIT).await.unwrap(), ClientEvent::CaughtUp(_)) {}
        (client, events)
    }

    /// Appends `n` messages to `user`'s log (durably) without publishing
    /// them; returns the live events the message service would publish.
    async fn append(&self, user: &UserId, n: usize) -> Vec<LiveEvent> {
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
            });
            let at = self.stores.log.append(std::slice::from_ref(user), &event).await.unwrap()[0];
            out.push(LiveEvent { seq: at.seq, prev: at.prev, event: SharedEvent::new(event) });
        }
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

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
