//! Harness for end-to-end tests. Two deployments run the same scenarios
//! ([`scenarios`]): [`TestServer`], a real single-node server on port 0 with a
//! temp data dir, restartable on the same addresses and data; and
//! [`cluster::Cluster`], the distributed mode as separate `natter` processes
//! per role over a real nats-server and Cassandra.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_client::{Client, ClientEvent, ClientOptions, Events, v1};
use natter_server::{Config, Node};

pub mod cluster;
pub mod scenarios;

pub const WAIT: Duration = Duration::from_secs(10);

/// What a scenario needs from a deployment, whatever its shape.
///
/// Users are named by the scenario (`"alice"`); a deployment may map the name
/// to another id ([`Deployment::user`]) so that tests sharing a database do
/// not see each other's users. Every method taking a user takes the name.
// Only used through generics in tests (never `dyn`, never across threads),
// so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Deployment: Sized {
    /// Starts with the test defaults, adjusted by `adjust` (applied to the
    /// config of every process).
    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self;

    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The settings every process runs with.
    fn config(&self) -> &Config;

    /// The user id this deployment uses for the scenario's `name`.
    fn user(&self, name: &str) -> String;

    /// A client token for `name`, signed with the deployment's secret.
    fn token(&self, name: &str) -> String;

    /// Options for a new connection of `name`. A deployment with several
    /// gateways picks one per call (see [`cluster::Cluster`]).
    fn options(&self, name: &str) -> ClientOptions;

    /// The `ws://` base URL of every gateway.
    fn ws_urls(&self) -> Vec<String>;

    /// The backend gRPC API (`natter.v1.Backend`), `http://…`.
    fn grpc_url(&self) -> String;

    fn api_key(&self) -> String;

    /// A connected client that has caught up, its backlog (if any) skipped.
    async fn client(&self, name: &str) -> (Client, Events) {
        connect_caught_up(self.options(name)).await
    }

    /// Stops everything gracefully and starts it again on the same data and
    /// addresses.
    async fn restart(&mut self);
}

pub struct TestServer {
    pub config: Config,
    node: Option<Node>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test defaults, adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.grpc_listen = "127.0.0.1:0".into();
        config.server.data_dir = dir.path().to_path_buf();
        config.server.shutdown_grace_secs = 5;
        adjust(&mut config);
        config.validate().expect("valid test config");
        let node = Node::start(&config).await.expect("server starts");
        // Pin the ports so a restart comes back where clients reconnect.
        config.server.listen = node.ws_addr.to_string();
        config.server.grpc_listen = node.grpc_addr.to_string();
        Self { config, node: Some(node), _dir: dir }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("server is running")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.node().ws_addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.node().grpc_addr)
    }

    pub fn api_key(&self) -> String {
        self.node().api_key.clone()
    }

    pub fn token(&self, user: &str) -> String {
        let user = natter_types::UserId::parse(user, "user").expect("valid user id");
        self.node().tokens.mint(&user, 3600).expect("mint").0
    }

    pub fn options(&self, user: &str) -> ClientOptions {
        test_options(self.ws_url(), self.token(user))
    }

    /// A connected client that has caught up, its backlog (if any) skipped.
    pub async fn client(&self, user: &str) -> (Client, Events) {
        connect_caught_up(self.options(user)).await
    }

    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await.expect("clean shutdown");
        }
    }

    /// Stops (gracefully) and starts again on the same data and addresses.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.node = Some(Node::start(&self.config).await.expect("server restarts"));
    }
}

impl Deployment for TestServer {
    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        TestServer::start_with(adjust).await
    }

    fn config(&self) -> &Config {
        &self.config
    }

    /// One server per test: names need no disguise.
    fn user(&self, name: &str) -> String {
        name.to_owned()
    }

    fn token(&self, name: &str) -> String {
        TestServer::token(self, name)
    }

    fn options(&self, name: &str) -> ClientOptions {
        TestServer::options(self, name)
    }

    fn ws_urls(&self) -> Vec<String> {
        vec![self.ws_url()]
    }

    fn grpc_url(&self) -> String {
        TestServer::grpc_url(self)
    }

    fn api_key(&self) -> String {
        TestServer::api_key(self)
    }

    async fn restart(&mut self) {
        TestServer::restart(self).await
    }
}

/// The SDK defaults with quick reconnects: tests restart servers under
/// connected clients and should not wait out production backoffs.
pub fn test_options(url: String, token: String) -> ClientOptions {
    ClientOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientOptions::new(url, token)
    }
}

/// Connects and skips everything up to `caught_up`.
pub async fn connect_caught_up(options: ClientOptions) -> (Client, Events) {
    let (client, mut events) = Client::connect(options).await.expect("connect");
    loop {
        if let ClientEvent::CaughtUp(_) = events.recv_timeout(WAIT).await.expect("caught up in time") {
            return (client, events);
        }
    }
}

pub fn text_of(message: &v1::Message) -> &str {
    match &message.body {
        Some(v1::message::Body::Text(t)) => &t.text,
        _ => "",
    }
}

/// The next `n` messages, ignoring non-message events.
pub async fn messages(events: &mut Events, n: usize) -> Vec<v1::Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(events.next_message(WAIT).await.expect("message arrives"));
    }
    out
}

/// Asserts that no message or group event is on its way to this device of
/// `user` (a name, as [`Deployment::user`] takes): the system sends the user
/// a marker through the backend API, and the next such event must be that
/// marker. Events to a user are delivered in order, so anything the server
/// had for the device before the marker would arrive first. Connection
/// bookkeeping and presence events are fine, and so are the markers of
/// earlier calls (they reach all of the user's devices).
pub async fn assert_quiet<D: Deployment>(d: &D, user: &str, events: &mut Events) {
    static MARKERS: AtomicU64 = AtomicU64::new(0);
    let marker = format!("{QUIET_MARKER}{}", MARKERS.fetch_add(1, Ordering::Relaxed));
    let mut backend = v1::backend_client::BackendClient::new(grpc_channel(d).await);
    let send = v1::BackendSendRequest {
        from: String::new(),
        message: Some(v1::SendMessage {
            client_msg_id: marker.clone(),
            to: d.user(user),
            chat_type: v1::ChatType::Single as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text: "quiet?".into() })),
            ..Default::default()
        }),
        update_conversations: None,
    };
    let sent = backend.send_message(with_key(send, &d.api_key())).await.expect("the marker is sent").into_inner();
    loop {
        match events.recv_timeout(WAIT).await.expect("the marker arrives") {
            ClientEvent::OnTextMessage(m) if m.id == sent.server_msg_id => return,
            ClientEvent::OnTextMessage(m) if m.from_system && m.client_msg_id.starts_with(QUIET_MARKER) => {}
            // Presence (including the user's own devices') is live chatter.
            ClientEvent::Connected(_) | ClientEvent::CaughtUp(_) | ClientEvent::OnPresenceStatusChange(_) => {}
            other => panic!("expected no more events before the marker {marker}, got {other:?}"),
        }
    }
}

/// The client message id prefix of [`assert_quiet`]'s markers.
const QUIET_MARKER: &str = "e2e-quiet-";

/// A channel to the backend gRPC API.
pub async fn grpc_channel<D: Deployment>(d: &D) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(d.grpc_url()).expect("a grpc url").connect().await.expect("grpc connect")
}

/// `message` with the backend API key.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii key"));
    request
}

/// The next presence change, skipping every other event.
pub async fn next_presence(events: &mut Events) -> v1::PresenceStatus {
    loop {
        if let ClientEvent::OnPresenceStatusChange(p) = events.recv_timeout(WAIT).await.expect("presence change") {
            return p;
        }
    }
}

/// The next presence change of `user_id`, skipping every other event. A
/// user's own devices are told of the user's own changes too, live, so when
/// that arrives depends on the deployment (in the single-node mode usually
/// before `caught_up`, across processes often after it).
pub async fn next_presence_of(events: &mut Events, user_id: &str) -> v1::PresenceStatus {
    loop {
        let presence = next_presence(events).await;
        if presence.user_id == user_id {
            return presence;
        }
    }
}

/// The next event other than a presence change (live chatter, see
/// [`assert_quiet`] and [`next_presence_of`]).
pub async fn next_event(events: &mut Events) -> ClientEvent {
    loop {
        match events.recv_timeout(WAIT).await.expect("an event in time") {
            ClientEvent::OnPresenceStatusChange(_) => {}
            event => return event,
        }
    }
}
