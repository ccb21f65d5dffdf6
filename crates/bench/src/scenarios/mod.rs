//! The scenarios. Each one connects its own users (fresh ids, so no
//! earlier state is replayed), drives them, and returns a result that
//! `report` renders. They share the plumbing here: the run context that
//! owns every client task, and CPU/RSS sampling over a measured window.

pub mod direct;
pub mod fanout;
pub mod idle;
pub mod nats;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::ClientOptions;
use crate::disk::{self, DiskProbe, DiskSyncs};
use crate::procfs::{self, ProcSample};
use crate::stats::{Counters, Latency};
use crate::target::Target;

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
