//! Idle connections: how many sessions one gateway holds and what each
//! costs in server memory. Every client completes the handshake, receives
//! `hello` and `caught_up`, then only answers pings. The server's RSS is
//! sampled before the first connection and after the last one (and again
//! after a hold), so one-time allocations are spread over all of them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use super::{Run, Usage, Window};
use crate::client::{self, Ws};
use crate::procfs;
use crate::progress::Progress;
use crate::stats::Counters;

#[derive(Debug, Clone, Serialize)]
pub struct IdleConfig {
    pub connections: usize,
    /// Seconds to hold every connection open after the last one is ready.
    pub hold_secs: f64,
}

/// File descriptors kept free in each process for everything but client
/// sockets (store files, listeners, epoll, logs).
const FD_RESERVE: u64 = 200;

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub target: String,
    pub requested: usize,
    /// The open-file limit that capped the run below `requested` (the lower
    /// of the server's and the generator's), if one did.
    pub capped_by_fd_limit: Option<u64>,
    pub ready: usize,
    pub failed: u64,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    /// (RSS with every connection − RSS before) / connections.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// Sessions still open after the hold.
    pub alive_after_hold: u64,
    pub server_rss_after_hold_mib: Option<f64>,
    /// The generator's own memory per connection (the client side).
    pub bench_rss_per_conn_bytes: f64,
    /// Kernel memory (slab + TCP buffers) per connection, both ends, not in
    /// either RSS; machine-wide difference, so approximate.
    pub kernel_per_conn_bytes: f64,
    /// CPU while connecting.
    pub connect_usage: Usage,
}

pub async fn run(run: &Run, config: &IdleConfig) -> anyhow::Result<IdleResult> {
    let pids = &run.target.pids;
    let progress = Progress::start(format!("idle {}", run.target.label), run.counters.clone(), pids.clone());
    progress.set_phase("connecting");
    // Every connection is a descriptor on both sides: more than the lower
    // limit cannot be held, so run at that size and say so.
    let limit =
        std::iter::once(procfs::fd_limit(None)).chain(pids.iter().map(|&p| procfs::fd_limit(Some(p)))).flatten().min();
    let connections = match limit {
        Some(limit) if config.connections as u64 + FD_RESERVE > limit => {
            let capped = limit.saturating_sub(FD_RESERVE) as usize;
            tracing::warn!(requested = config.connections, capped, fd_limit = limit, "capped by the open-file limit");
            capped
        }
        _ => config.connections,
    };
    let users: Vec<(String, Option<String>)> =
        (0..connections).map(|i| (format!("{}-{i}", run.prefix), None)).collect();

    let server_before = procfs::sample_all(pids);
    let bench_before = procfs::sample(None)?;
    let kernel_before = procfs::kernel_socket_bytes();
    let window = Window::open(pids);
    let start = Instant::now();
    let ready = client::connect_all(&run.target, &users, 0, &run.client, &run.counters, |_, ws| {
        let counters = run.counters.clone();
        let cancel = run.cancel.clone();
        run.tasks.spawn(hold(ws, counters, cancel));
    })
    .await;
    let connect_secs = start.elapsed().as_secs_f64();
    let connect_usage = window.close();
    // Let the server finish what the last handshakes started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_after = procfs::sample_all(pids);
    let bench_after = procfs::sample(None)?;
    let kernel_after = procfs::kernel_socket_bytes();

    progress.set_phase("holding");
    tokio::time::sleep(Duration::from_secs_f64(config.hold_secs)).await;
    let server_held = procfs::sample_all(pids);
    let alive = (ready as u64).saturating_sub(Counters::get(&run.counters.dropped));
    progress.set_phase("closing");
    run.finish().await;
    progress.stop().await;

    let per_conn = |before: u64, after: u64| {
        if ready == 0 { 0.0 } else { after.saturating_sub(before) as f64 / ready as f64 }
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    Ok(IdleResult {
        target: run.target.label.clone(),
        requested: config.connections,
        capped_by_fd_limit: (connections < config.connections).then_some(limit).flatten(),
        ready,
        failed: Counters::get(&run.counters.connect_failed),
        connect_secs,
        connects_per_sec: ready as f64 / connect_secs.max(1e-9),
        server_rss_before_mib: server_before.map(|s| mib(s.rss_bytes)),
        server_rss_after_mib: server_after.map(|s| mib(s.rss_bytes)),
        server_rss_per_conn_bytes: match (server_before, server_after) {
            (Some(b), Some(a)) => Some(per_conn(b.rss_bytes, a.rss_bytes)),
            _ => None,
        },
        alive_after_hold: alive,
        server_rss_after_hold_mib: server_held.map(|s| mib(s.rss_bytes)),
        bench_rss_per_conn_bytes: per_conn(bench_before.rss_bytes, bench_after.rss_bytes),
        kernel_per_conn_bytes: per_conn(kernel_before, kernel_after),
        connect_usage,
    })
}

/// An idle client: reads (which answers the server's pings) until the run
/// ends or the server closes the socket.
async fn hold(mut ws: Ws, counters: std::sync::Arc<Counters>, cancel: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            message = ws.next() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    Counters::add(&counters.dropped, 1);
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}
