//! The scenarios. Each one connects its own users (fresh ids, so no
//! earlier state is replayed), drives them, and returns a result that
//! `report` renders. They share the plumbing here: the run context that
//! owns every client task, CPU/RSS sampling over a measured window, and the
//! paced one-request-at-a-time client of the read scenarios.

pub mod conversations;
pub mod direct;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod nats;
pub mod presence;
pub mod receipts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{ClientOptions, Ws};
use crate::disk::{self, DiskProbe, DiskSyncs};
use crate::procfs::{self, ProcSample};
use crate::stats::{Counters, Latency, now_ns};
use crate::target::Target;
use crate::wire::{self, Incoming};

/// One scenario run against one target: its clients, counters and tasks.
/// Every client task is spawned on `tasks` and ends when `cancel` fires;
/// [`Run::finish`] fires it and waits, so nothing outlives the scenario.
pub struct Run {
    pub target: Target,
    pub client: ClientOptions,
    pub counters: Arc<Counters>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    /// Prefix of every user id in this run (ids are unique per run, so a
    /// reused server never replays an earlier run's log).
    pub prefix: String,
}

impl Run {
    pub fn new(target: Target, client: ClientOptions, scenario: &str) -> Self {
        let nonce = crate::stats::now_ns() % 1_000_000_007;
        Self {
            target,
            client,
            counters: Arc::new(Counters::default()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            prefix: format!("{scenario}{nonce:x}"),
        }
    }

    /// Stops every client task (each closes its socket) and waits for them.
    pub async fn finish(&self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(60), self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "client tasks did not stop within 60 s");
        }
    }
}

/// CPU and memory of the server and of the generator over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Percent of one core (200 = both cores of a 2-core box).
    pub server_cpu_percent: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub bench_cpu_percent: f64,
    pub bench_rss_mib: f64,
    /// Everything else on the machine (other builds, tests, the kernel's
    /// softirq time not charged to either process), percent of one core:
    /// how noisy the window was.
    pub other_cpu_percent: f64,
    /// The disk's sync latency over the window, probed in the temp dir
    /// (where a natter the bench starts keeps its data): how the disk
    /// itself behaved while the store synced.
    pub disk_syncs: Option<DiskSyncs>,
}

/// Start of a measured window.
pub struct Window {
    server: Option<ProcSample>,
    bench: Option<ProcSample>,
    pids: Vec<u32>,
    machine_ticks: u64,
    at: std::time::Instant,
    disk: Option<DiskProbe>,
}

impl Window {
    pub fn open(server_pids: &[u32]) -> Self {
        Self {
            server: procfs::sample_all(server_pids),
            bench: procfs::sample(None).ok(),
            pids: server_pids.to_vec(),
            machine_ticks: procfs::machine_busy_ticks(),
            at: std::time::Instant::now(),
            disk: DiskProbe::start(&std::env::temp_dir(), disk::INTERVAL)
                .inspect_err(|e| tracing::warn!(error = %e, "no disk probe for this window"))
                .ok(),
        }
    }

    pub fn close(self) -> Usage {
        let server = procfs::sample_all(&self.pids);
        let bench = procfs::sample(None).ok();
        let mib = |s: &ProcSample| s.rss_bytes as f64 / 1048576.0;
        let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some(procfs::cpu_percent(a, b)),
            _ => None,
        };
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let machine = procfs::machine_busy_ticks().saturating_sub(self.machine_ticks) as f64 / secs;
        let server_cpu = cpu(&self.server, &server);
        let bench_cpu = cpu(&self.bench, &bench).unwrap_or(0.0);
        Usage {
            server_cpu_percent: server_cpu,
            server_rss_mib: server.as_ref().map(mib),
            bench_cpu_percent: bench_cpu,
            bench_rss_mib: bench.as_ref().map_or(0.0, mib),
            // Ticks are 1/100 s, so ticks per second is percent of a core.
            other_cpu_percent: (machine - server_cpu.unwrap_or(0.0) - bench_cpu).max(0.0),
            disk_syncs: self.disk.map(DiskProbe::stop),
        }
    }
}

/// Latencies a task collected, flushed to the shared histogram in batches
/// (one lock per 256 samples instead of one per sample).
#[derive(Default)]
pub struct LatBuf {
    buf: Vec<u64>,
}

impl LatBuf {
    pub fn push(&mut self, ns: u64, sink: &Latency) {
        self.buf.push(ns);
        if self.buf.len() >= 256 {
            self.flush(sink);
        }
    }

    pub fn flush(&mut self, sink: &Latency) {
        if !self.buf.is_empty() {
            sink.record_many_ns(&self.buf);
            self.buf.clear();
        }
    }
}

/// Logs the first few error responses of a run (all are counted).
pub fn log_error(counters: &Counters, error: &natter_proto::v1::Error) {
    if Counters::get(&counters.errors) < 5 {
        tracing::warn!(code = error.code, message = %error.message, "error response");
    }
    Counters::add(&counters.errors, 1);
}

/// One client that sends a request, waits for its answer, and only then
/// sends the next (as an app paging a list does), never faster than
/// `min_interval` apart, so that the server's per-connection limit
/// (50 requests/s) is never what is measured. Used by the read scenarios
/// (conversation list, history).
pub struct Pager {
    ws: Ws,
    req_id: u64,
    min_interval: Duration,
    next_allowed: Instant,
}

impl Pager {
    pub fn new(ws: Ws, per_conn_rate: f64) -> Self {
        let min_interval = Duration::from_secs_f64(1.0 / per_conn_rate.max(1e-3));
        Self { ws, req_id: 0, min_interval, next_allowed: Instant::now() }
    }

    /// Sends `body` once the pace allows and returns the time from the send
    /// to the moment its response frame was read off the socket (before it
    /// is decoded), with the response. Events and other frames that arrive
    /// meanwhile are skipped.
    pub async fn call(&mut self, body: natter_proto::v1::client_frame::Body) -> anyhow::Result<(u64, Reply)> {
        use natter_proto::v1;
        tokio::time::sleep_until(self.next_allowed.into()).await;
        self.req_id += 1;
        let req_id = self.req_id;
        let frame = wire::request_frame(req_id, body);
        self.next_allowed = Instant::now() + self.min_interval;
        let sent_ns = now_ns();
        self.ws.send(Message::Binary(frame.into())).await.context("sending a request")?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .context("no response within 30 s")?
                .context("closed while waiting for a response")??;
            let received_ns = now_ns();
            let Message::Binary(bytes) = message else { continue };
            match wire::read_server_frame(&bytes) {
                Some(Incoming::Other(frame)) => match frame.body {
                    Some(v1::server_frame::Body::Response(r)) if r.req_id == req_id => {
                        let result = r.result.context("response without a result")?;
                        return Ok((received_ns.saturating_sub(sent_ns), result));
                    }
                    Some(v1::server_frame::Body::Goodbye(g)) => anyhow::bail!("goodbye: {}", g.message),
                    _ => {}
                },
                Some(Incoming::Event { .. }) => {}
                None => anyhow::bail!("an undecodable frame"),
            }
        }
    }

    /// A `ping` round trip on the same socket: the floor under every
    /// request (WebSocket, gateway, request worker), without any service.
    pub async fn ping(&mut self) -> anyhow::Result<u64> {
        use natter_proto::v1;
        let body = v1::client_frame::Body::Ping(v1::Ping { client_time: 0 });
        match self.call(body).await? {
            (ns, v1::response::Result::Pong(_)) => Ok(ns),
            (_, other) => anyhow::bail!("ping answered with {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A response's result.
pub type Reply = natter_proto::v1::response::Result;

/// A small deterministic generator (xorshift64*) for the read scenarios'
/// random cursors; seeded per run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (n > 0) for picking cursors.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}
