//! The live progress line: once a second, the counters, their rates, and
//! the CPU and memory of the server and of the generator itself. On a
//! terminal it rewrites one line; otherwise (make, CI logs) it prints a line
//! every few seconds.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procfs;
use crate::stats::{CounterSnapshot, Counters};

/// A running progress line; `stop` ends it (it also ends with its token).
pub struct Progress {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    phase: Arc<Mutex<String>>,
}

impl Progress {
    pub fn start(scenario: String, counters: Arc<Counters>, server_pids: Vec<u32>) -> Self {
        let cancel = CancellationToken::new();
        let phase = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn(run(scenario, counters, server_pids, cancel.clone(), phase.clone()));
        Self { cancel, task, phase }
    }

    /// What the scenario is doing now (shown on the line).
    pub fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock() = phase.into();
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    scenario: String,
    counters: Arc<Counters>,
    server_pids: Vec<u32>,
    cancel: CancellationToken,
    phase: Arc<Mutex<String>>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { 1 } else { 5 };
    let start = Instant::now();
    let mut last = counters.snapshot();
    let mut last_server = procfs::sample_all(&server_pids);
    let mut last_self = procfs::sample(None).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    tick.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = counters.snapshot();
        let d = now.since(&last);
        let secs = every as f64;
        let server = procfs::sample_all(&server_pids);
        let me = procfs::sample(None).ok();
        let usage = |a: &Option<procfs::ProcSample>, b: &Option<procfs::ProcSample>| match (a, b) {
            (Some(a), Some(b)) => {
                format!("cpu {:>3.0}% rss {:>6.0} MiB", procfs::cpu_percent(a, b), b.rss_bytes as f64 / 1048576.0)
            }
            _ => "-".to_owned(),
        };
        let line = format!(
            "[{scenario} {:>4.0}s {}] {} | server {} | bench {}",
            start.elapsed().as_secs_f64(),
            phase.lock(),
            counts(&now, &d, secs),
            usage(&last_server, &server),
            usage(&last_self, &me),
        );
        if tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            eprintln!("{line}");
        }
        last = now;
        last_server = server;
        last_self = me;
    }
    if tty {
        eprintln!();
    }
}

fn counts(now: &CounterSnapshot, d: &CounterSnapshot, secs: f64) -> String {
    let rate = |n: u64| n as f64 / secs;
    let mut out = format!("ready {}", now.ready);
    if now.connect_failed > 0 {
        out.push_str(&format!(" failed {}", now.connect_failed));
    }
    if now.dropped > 0 {
        out.push_str(&format!(" dropped {}", now.dropped));
    }
    if now.sent > 0 {
        out.push_str(&format!(
            " sent {} ({:.0}/s) acked {:.0}/s delivered {} ({:.0}/s)",
            now.sent,
            rate(d.sent),
            rate(d.acked),
            now.delivered,
            rate(d.delivered)
        ));
    }
    if now.errors > 0 {
        out.push_str(&format!(" errors {}", now.errors));
    }
    out
}
