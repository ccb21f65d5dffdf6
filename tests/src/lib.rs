//! Harness for end-to-end tests: a real single-node server on port 0 with a
//! temp data dir, restartable on the same addresses and data.

use std::time::Duration;

use natter_client::{Client, ClientEvent, ClientOptions, Events, v1};
use natter_server::{Config, Node};

pub const WAIT: Duration = Duration::from_secs(10);

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
        ClientOptions {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..ClientOptions::new(self.ws_url(), self.token(user))
        }
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

/// Asserts no further message or group event arrives within a short while
/// (connection bookkeeping and presence events are fine).
pub async fn assert_quiet(events: &mut Events) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_timeout(WAIT)).await {
        match event {
            // Presence (including the user's own devices') is live chatter.
            ClientEvent::Connected(_) | ClientEvent::CaughtUp(_) | ClientEvent::OnPresenceStatusChange(_) => {}
            other => panic!("expected no more events, got {other:?}"),
        }
    }
}
