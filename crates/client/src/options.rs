//! Connection options.

use std::fmt;
use std::time::Duration;

/// How to reach the server and how hard to try.
///
/// Build with [`ClientOptions::new`] and override fields with struct update
/// syntax: `ClientOptions { cursor: Some(42), ..ClientOptions::new(url, token) }`.
#[derive(Clone)]
pub struct ClientOptions {
    /// Base URL of the server, e.g. `ws://127.0.0.1:1234` (`http`/`https` are
    /// accepted and mapped to `ws`/`wss`). `/ws` is appended unless the path
    /// already ends with it.
    pub url: String,
    /// The JWT the app's backend signed for this user.
    pub token: String,
    /// Reported to the server as `platform=`.
    pub platform: String,
    /// Stable id of this device, so the server can tell a quick reconnect
    /// from a new device (no offline/online flap for presence subscribers).
    /// Defaults to a random id per `ClientOptions::new`; `None`: the server
    /// treats each connection as its own device.
    pub device: Option<String>,
    /// Resume point: deliver events with a seq above this. `None` lets the
    /// server start at the user's last acknowledged position.
    pub cursor: Option<u64>,
    /// Reconnect after a dropped connection (never after a kick).
    pub reconnect: bool,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a request may wait for its response, including time spent
    /// waiting for a reconnect.
    pub request_timeout: Duration,
    /// Bound on TCP connect + WebSocket upgrade + the server's `hello`.
    pub connect_timeout: Duration,
    /// Requests written and not yet answered, at most; more wait in order.
    /// The gateway answers a connection's requests one at a time and refuses
    /// those past a queue of 32 with RATE_LIMITED, hence the default.
    pub max_in_flight: usize,
    /// Interval of WebSocket pings; a connection with no traffic from the
    /// server for three intervals is considered dead. `None` disables it.
    pub heartbeat: Option<Duration>,
    /// R2: acknowledge every 1:1 message received from someone else with a
    /// delivery receipt, as the seed SDK's `delivery: true` does (off by
    /// default).
    pub delivery_receipts: bool,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            platform: "Websocket".to_owned(),
            device: Some(format!("{:016x}", crate::random_u64())),
            cursor: None,
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: 32,
            heartbeat: Some(Duration::from_secs(20)),
            delivery_receipts: false,
        }
    }
}

// The token is a bearer credential: keep it out of logs and panic messages.
impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("platform", &self.platform)
            .field("cursor", &self.cursor)
            .field("reconnect", &self.reconnect)
            .field("delivery_receipts", &self.delivery_receipts)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_print_the_token() {
        let o = ClientOptions::new("ws://x", "secret-jwt");
        let s = format!("{o:?}");
        assert!(!s.contains("secret-jwt"), "{s}");
        assert!(s.contains("redacted"));
    }
}
