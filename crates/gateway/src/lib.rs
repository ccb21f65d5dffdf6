//! The gateway: terminates client WebSockets at `/ws`, authenticates them,
//! decodes frames, answers requests through the message service, and
//! delivers each user's durable event log to their sockets, in order and
//! without gaps (see `session`).
//!
//! It is the only crate that knows WebSocket framing. It reaches the other
//! services only through their traits, so it runs unchanged in both modes.

pub mod auth;
mod codec;
mod dispatch;
mod ratelimit;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dashmap::DashMap;
use futures::StreamExt;
use natter_api::{ConversationApi, MessageApi, PresenceApi};
use natter_bus::{Bus, Control};
use natter_runtime::{Stage, Tasks};
use natter_store::UserLog;
use natter_types::{Error, ErrorCode, Limits, SessionId};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Tokens;
pub use codec::Format;

#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Unique per gateway process: where kicks for its sessions are sent.
    pub gateway_id: String,
    pub limits: Limits,
    /// How often the server pings an idle socket.
    pub ping_interval: Duration,
    /// A socket silent for this long (no frame, no pong) is dead.
    pub idle_timeout: Duration,
    /// Events read from the log per page while catching a session up.
    pub replay_page: usize,
    /// Per-socket WebSocket buffers (tungstenite's 128 KiB default would
    /// cost ~1 GB per 10k sockets).
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// How often the gateway renews its lease with the presence service
    /// (well inside the lease, so one late renewal does not drop sessions).
    pub lease_renew_interval: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            gateway_id: "local".into(),
            limits: Limits::default(),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            replay_page: 256,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 4 * 1024,
            lease_renew_interval: Duration::from_secs(10),
        }
    }
}

/// What the gateway talks to; each is a local service or a remote client.
#[derive(Clone)]
pub struct GatewayDeps {
    pub messages: Arc<dyn MessageApi>,
    pub conversations: Arc<dyn ConversationApi>,
    pub log: Arc<dyn UserLog>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn PresenceApi>,
    pub tokens: Tokens,
}

pub(crate) enum Command {
    Kick,
}

pub(crate) struct Shared {
    pub(crate) options: GatewayOptions,
    pub(crate) deps: GatewayDeps,
    /// Commands to the sessions this process holds.
    pub(crate) local: DashMap<SessionId, mpsc::Sender<Command>>,
    pub(crate) connected: AtomicUsize,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// A running gateway (a cheap handle): [`router`](Self::router) serves `/ws`
/// for the process's HTTP server to mount.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Starts the gateway's background work (control messages for its
    /// sessions, lease renewals) in the [`Stage::Sessions`] of `tasks`. When
    /// that stage stops, every session says goodbye and the stop waits for
    /// them.
    pub fn start(options: GatewayOptions, deps: GatewayDeps, tasks: &Tasks) -> Self {
        let shared = Arc::new(Shared {
            options,
            deps,
            local: DashMap::new(),
            connected: AtomicUsize::new(0),
            cancel: tasks.token(Stage::Sessions),
            tasks: TaskTracker::new(),
        });
        let background = shared.clone();
        tasks.spawn(Stage::Sessions, "gateway", |_| async move { run(background).await.map_err(anyhow::Error::from) });
        Self { shared }
    }

    pub fn router(&self) -> Router {
        Router::new().route("/ws", get(ws_handler)).with_state(self.shared.clone())
    }

    /// Sessions currently connected to this gateway.
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }
}

/// Listens for control messages addressed to this gateway until cancelled,
/// then waits for every session to say goodbye.
async fn run(shared: Arc<Shared>) -> natter_types::Result<()> {
    let mut control = shared.deps.bus.subscribe_control(&shared.options.gateway_id).await?;
    let mut renew = tokio::time::interval(shared.options.lease_renew_interval);
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            _ = renew.tick() => {
                if let Err(e) = shared.deps.presence.renew_lease(&shared.options.gateway_id).await {
                    tracing::warn!(error = %e, "renewing the gateway lease failed");
                }
            }
            msg = control.next() => match msg {
                Some(Control::Kick { sessions, .. }) => {
                    for id in sessions {
                        // Clone the sender out so no map guard lives across the await.
                        let tx = shared.local.get(&id).map(|tx| tx.clone());
                        if let Some(tx) = tx {
                            let _ = tx.send(Command::Kick).await;
                        }
                    }
                }
                None => {
                    tracing::error!("control stream ended");
                    break;
                }
            },
        }
    }
    shared.tasks.close();
    shared.tasks.wait().await;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ConnectParams {
    token: Option<String>,
    cursor: Option<u64>,
    format: Option<String>,
    platform: Option<String>,
    device: Option<String>,
}

/// Platforms as the presence webhook names them (seed 001).
const PLATFORMS: [&str; 5] = ["iOS", "Android", "Websocket", "PC", "MiniProgram"];

fn http_error(error: &Error) -> Response {
    let status = StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "code": error.code.as_str(),
        "message": error.message,
        "field": error.field,
    });
    (status, Json(body)).into_response()
}

async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    params: Result<Query<ConnectParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => {
            return http_error(&Error::bad_request("query", format!("is invalid: {}", rejection.body_text())));
        }
    };
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = params.token.as_deref().or(bearer) else {
        return http_error(&Error::new(
            ErrorCode::Unauthenticated,
            "a token is required: ?token=<jwt> or an Authorization: Bearer header",
        ));
    };
    let (user, expires_at) = match shared.deps.tokens.verify(token) {
        Ok(v) => v,
        Err(e) => return http_error(&e),
    };
    let format = match Format::parse(params.format.as_deref()) {
        Ok(f) => f,
        Err(e) => return http_error(&e),
    };
    let platform = params.platform.unwrap_or_else(|| "Websocket".into());
    let Some(platform) = PLATFORMS.iter().find(|p| p.eq_ignore_ascii_case(&platform)) else {
        return http_error(&Error::bad_request("platform", format!("must be one of {}", PLATFORMS.join(", "))));
    };
    let device = params.device.unwrap_or_default();
    if device.len() > 64 || device.chars().any(char::is_control) {
        return http_error(&Error::bad_request("device", "must be at most 64 printable characters"));
    }
    if shared.cancel.is_cancelled() {
        return http_error(&Error::unavailable("the server is shutting down"));
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let limits = &shared.options.limits;
    // Frames up to max(4x the limit, 1 MiB) are read so they can be answered
    // with a LIMIT_EXCEEDED error frame; past that tungstenite fails the read
    // and the socket is dropped.
    let hard_cap = limits.max_frame_bytes.saturating_mul(4).max(1 << 20);
    // Unique: the gateway id makes the process's session number global.
    let number = session::next_session_number();
    let session = SessionId(format!("{}-{:x}-{number}", shared.options.gateway_id, natter_types::now_ms()));
    let connection = session::Connection {
        user,
        // Without a stable device id every connection is its own device.
        device: if device.is_empty() { session.to_string() } else { device },
        session,
        number,
        format,
        platform: (*platform).to_owned(),
        client_addr: addr.to_string(),
        cursor: params.cursor,
        expires_at,
        connected_at: natter_types::now_ms(),
    };
    upgrade
        .read_buffer_size(shared.options.read_buffer_bytes)
        .write_buffer_size(shared.options.write_buffer_bytes)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| {
            // Tracked so that shutdown waits for every goodbye.
            let tasks = shared.tasks.clone();
            tasks.track_future(session::run(shared, socket, connection))
        })
}
