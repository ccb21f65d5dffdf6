//! Load clients: raw WebSockets over sockets bound to many loopback source
//! addresses, with small buffers so that a hundred thousand of them fit.
//!
//! Why not the SDK: the generator runs on the same two cores as the server
//! and must cost less than what it measures. A load client is a task that
//! owns one socket, writes prebuilt protobuf frames and reads events with
//! the allocation-free reader in `wire`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use natter_proto::v1;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stats::Counters;
use crate::target::Target;
use crate::wire::{self, Incoming};

pub type Ws = WebSocketStream<TcpStream>;

/// How load clients connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connections per loopback source address. One address offers ~28k
    /// ephemeral ports (32768–60999), but `bind(port 0)` searches the used
    /// ones linearly: at 20k per address connecting costs the generator
    /// ~2 ms of kernel time each; at 1000 it is negligible.
    pub per_source_ip: usize,
    /// Connect handshakes in flight at once (below the listen backlog, so
    /// no SYN is dropped and retried a second later).
    pub concurrency: usize,
    /// tungstenite's read buffer per socket (its 128 KiB default would cost
    /// 13 GB for 100k sockets).
    pub read_buffer: usize,
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { per_source_ip: 1000, concurrency: 256, read_buffer: 4096, connect_timeout: Duration::from_secs(30) }
    }
}

/// The source address of connection `i`: 127.0.0.2 for the first block,
/// then 127.0.0.3, … (127.0.0.0/8 is all loopback on Linux). Never
/// 127.0.0.1, where servers listen: a client port there could take the port
/// a server is about to bind.
pub fn source_ip(i: usize, per_ip: usize) -> Ipv4Addr {
    let block = u32::try_from(i / per_ip.max(1)).unwrap_or(0);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + block)
}

pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    // Writes go straight to the socket (the load clients send one frame at
    // a time); the read buffer is what most of a client's memory is.
    WebSocketConfig::default().read_buffer_size(read_buffer).write_buffer_size(0).max_write_buffer_size(1 << 20)
}

/// Opens WebSocket number `i` (which picks the target's address) from `source`.
pub async fn connect(
    target: &Target,
    i: usize,
    source: Ipv4Addr,
    path: &str,
    options: &ClientOptions,
) -> anyhow::Result<Ws> {
    let addr = target.addr_for(i)?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0))).with_context(|| format!("binding a source port on {source}"))?;
    let connect = async {
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{addr}{path}");
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(options.read_buffer))).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(options.connect_timeout, connect).await.context("connect timed out")?
}

/// Connects `users` (with an optional room each, for the bare server), at
/// most `concurrency` handshakes at a time, waits for each session's
/// `caught_up` (so it is live) and hands the socket to `ready` at once, so
/// that its task starts reading (and answering the server's pings) while
/// the others still connect. Failures are counted, not fatal: the caller
/// decides whether enough connected. Returns how many became ready.
pub async fn connect_all(
    target: &Target,
    users: &[(String, Option<String>)],
    first_index: usize,
    options: &ClientOptions,
    counters: &Arc<Counters>,
    ready: impl Fn(usize, Ws),
) -> usize {
    let attempts = users.iter().enumerate().map(|(i, (user, room))| {
        let counters = counters.clone();
        async move {
            let source = source_ip(first_index + i, options.per_source_ip);
            let result = async {
                let path = target.ws_path(user, room.as_deref())?;
                let mut ws = connect(target, first_index + i, source, &path, options).await?;
                Counters::add(&counters.connected, 1);
                wait_caught_up(&mut ws).await?;
                anyhow::Ok(ws)
            }
            .await;
            match result {
                Ok(ws) => {
                    Counters::add(&counters.ready, 1);
                    Some((i, ws))
                }
                Err(e) => {
                    // Log the first few only: a failing server fails them all.
                    if Counters::get(&counters.connect_failed) < 5 {
                        tracing::warn!(user, %source, error = format!("{e:#}"), "connect failed");
                    }
                    Counters::add(&counters.connect_failed, 1);
                    None
                }
            }
        }
    });
    let mut done = futures::stream::iter(attempts).buffer_unordered(options.concurrency.max(1));
    let mut count = 0;
    while let Some(result) = done.next().await {
        if let Some((i, ws)) = result {
            ready(i, ws);
            count += 1;
        }
    }
    count
}

/// Reads until `caught_up` (skipping `hello` and any replayed events).
pub async fn wait_caught_up(ws: &mut Ws) -> anyhow::Result<()> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no caught_up within 30 s")?
            .context("closed before caught_up")??;
        if let Message::Binary(bytes) = message
            && let Some(Incoming::Other(frame)) = wire::read_server_frame(&bytes)
        {
            match frame.body {
                Some(v1::server_frame::Body::CaughtUp(_)) => return Ok(()),
                Some(v1::server_frame::Body::Goodbye(g)) => {
                    anyhow::bail!("goodbye before caught_up: {}", g.message)
                }
                _ => {}
            }
        }
    }
}

/// Sends one request and waits for its response, skipping everything else
/// (used for setup, e.g. creating groups).
pub async fn request(ws: &mut Ws, req_id: u64, body: v1::client_frame::Body) -> anyhow::Result<v1::response::Result> {
    use futures::SinkExt;
    ws.send(Message::Binary(wire::request_frame(req_id, body).into())).await?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no response within 30 s")?
            .context("closed while waiting for a response")??;
        if let Message::Binary(bytes) = message
            && let Some(Incoming::Other(frame)) = wire::read_server_frame(&bytes)
            && let Some(v1::server_frame::Body::Response(r)) = frame.body
            && r.req_id == req_id
        {
            return r.result.context("response without a result");
        }
    }
}

/// Raises this process's open-file limit as far as allowed (as root up to
/// `fs.nr_open`); children (the spawned server) inherit it.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let wanted = wanted.min(nr_open);
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        && soft >= wanted
    {
        return soft;
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, go up to
    // the hard limit we have.
    if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted).is_err() {
        let _ = rlimit::increase_nofile_limit(wanted);
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}
