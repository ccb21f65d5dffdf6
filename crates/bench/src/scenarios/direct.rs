//! 1:1 persisted messages. Users come in pairs and each sends to its peer.
//! Latency is measured from the *intended* send time to the moment the
//! peer's socket delivers the event, so a generator or server that falls
//! behind shows up in the numbers instead of silently sending later
//! (no coordinated omission).
//!
//! Two kinds of step:
//! - open loop at a fixed offered load (msg/s over all users, each user at
//!   an even rate with its own phase), for latency at known loads;
//! - closed loop (each user keeps `window` sends in flight), for the
//!   saturation throughput.
//!
//! Each user stays under the server's per-connection rate limit
//! (`per_conn_rate`), so the limiter is never what is measured.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use natter_proto::v1;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{LatBuf, Run, Usage, Window, log_error};
use crate::client::{self, Ws};
use crate::progress::Progress;
use crate::stats::{self, Counters, Latency, LatencySummary};
use crate::target::ServerKind;
use crate::wire::{self, Incoming, Payload};

/// Requests the server lets wait per connection (PROTOCOL.md §3.1).
const SERVER_QUEUE_LIMIT: usize = 32;

/// The offered load whose p99 the 1:1 latency target is about (half the
/// throughput target).
pub const P99_TARGET_LOAD: f64 = 10_000.0;

#[derive(Debug, Clone, Serialize)]
pub struct DirectConfig {
    /// Connected users (even: they are paired).
    pub users: usize,
    /// Offered loads for the open-loop steps, messages per second in total.
    pub loads: Vec<f64>,
    pub step_secs: f64,
    /// The step at [`P99_TARGET_LOAD`] runs at least this long. Its tail is
    /// set by the store's flushes and compactions, a few seconds apart at
    /// that load, so a step of a few seconds may hold none of them
    /// (docs/PERFORMANCE.md#11-tail-latency).
    pub target_step_secs: f64,
    /// A short open-loop step first, not reported (caches, allocator).
    pub warmup_load: f64,
    pub warmup_secs: f64,
    /// Closed-loop step; 0 skips it.
    pub saturation_secs: f64,
    /// Sends in flight per user in the closed-loop step.
    pub window: usize,
    /// Highest send rate of one connection (below the server's limit of 50/s).
    pub per_conn_rate: f64,
    pub payload_bytes: usize,
    /// How long to wait for stragglers after a step stops sending.
    pub drain_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectResult {
    pub target: String,
    pub users: usize,
    pub payload_bytes: usize,
    pub steps: Vec<StepResult>,
    pub saturation: Option<StepResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// "open" or "closed".
    pub mode: &'static str,
    pub offered_per_sec: Option<f64>,
    pub duration_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub delivered: u64,
    /// Acknowledged but not delivered to the peer by the end of the drain.
    pub undelivered: u64,
    /// Messages delivered to the peer per second, first send to last delivery.
    pub throughput_per_sec: f64,
    /// Intended send → delivered to the peer's socket.
    pub latency: LatencySummary,
    /// Intended send → `sent` response (R1: durable).
    pub ack_latency: LatencySummary,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Quiet,
    Open { interval: Duration },
    Closed { window: usize, min_interval: Duration },
}

/// One measured step; connection tasks switch to it through a watch channel.
struct Phase {
    id: u32,
    mode: Mode,
    start: Instant,
    start_ns: u64,
    send_until: Instant,
    counters: Counters,
    delivery: Latency,
    ack: Latency,
    last_delivery_ns: AtomicU64,
}

impl Phase {
    fn new(id: u32, mode: Mode, lead: Duration, secs: f64) -> Self {
        let start_ns = stats::now_ns() + lead.as_nanos() as u64;
        let start = stats::instant_of(start_ns);
        Self {
            id,
            mode,
            start,
            start_ns,
            send_until: start + Duration::from_secs_f64(secs),
            counters: Counters::default(),
            delivery: Latency::new(),
            ack: Latency::new(),
            last_delivery_ns: AtomicU64::new(0),
        }
    }

    fn ns_of(&self, at: Instant) -> u64 {
        self.start_ns.saturating_add(at.saturating_duration_since(self.start).as_nanos() as u64)
    }
}

pub async fn run(run: &Run, config: &DirectConfig) -> anyhow::Result<DirectResult> {
    if config.users < 2 || !config.users.is_multiple_of(2) {
        bail!("direct: users must be even and at least 2, not {}", config.users);
    }
    let highest = config.loads.iter().copied().fold(config.warmup_load, f64::max);
    if highest / config.users as f64 > config.per_conn_rate {
        bail!(
            "direct: {highest} msg/s over {} users is more than {} msg/s per connection; use at least {} users",
            config.users,
            config.per_conn_rate,
            (highest / config.per_conn_rate).ceil() as usize
        );
    }
    let target = &run.target;
    if target.kind == ServerKind::Nats {
        bail!("direct: {} is a nats-server; the 1:1 scenario needs a WebSocket server", target.label);
    }
    let progress = Progress::start(format!("1:1 {}", target.label), run.counters.clone(), target.pids.clone());
    progress.set_phase("connecting");
    let names: Vec<String> = (0..config.users).map(|i| format!("{}-{i}", run.prefix)).collect();
    let users: Vec<(String, Option<String>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let room = (target.kind == ServerKind::Bare).then(|| format!("{}-p{}", run.prefix, i / 2));
            (name.clone(), room)
        })
        .collect();
    let (phase_tx, phase_rx) = watch::channel(Arc::new(Phase::new(0, Mode::Quiet, Duration::ZERO, 0.0)));
    let ready = client::connect_all(target, &users, 0, &run.client, &run.counters, |i, ws| {
        // Natter routes by the peer's user id, the bare server by a room per pair.
        let to = match target.kind {
            ServerKind::Natter => names[i ^ 1].clone(),
            ServerKind::Bare | ServerKind::Nats => users[i].1.clone().unwrap_or_default(),
        };
        let conn = Conn {
            index: i,
            users: config.users,
            to,
            payload_bytes: config.payload_bytes,
            global: run.counters.clone(),
        };
        run.tasks.spawn(conn.run(ws, phase_rx.clone(), run.cancel.clone()));
    })
    .await;
    if ready < config.users {
        run.finish().await;
        progress.stop().await;
        bail!("direct: only {ready} of {} users connected", config.users);
    }

    let open = |load: f64| Mode::Open { interval: Duration::from_secs_f64(config.users as f64 / load) };
    let drain = config.drain_secs;
    let mut id = 0;
    if config.warmup_secs > 0.0 {
        id += 1;
        progress.set_phase("warm-up");
        run_step(&phase_tx, id, open(config.warmup_load), config.warmup_secs, drain, &target.pids).await;
    }
    let mut steps = Vec::new();
    for &load in &config.loads {
        id += 1;
        progress.set_phase(format!("{load:.0} msg/s"));
        let secs =
            if load == P99_TARGET_LOAD { config.step_secs.max(config.target_step_secs) } else { config.step_secs };
        let mut result = run_step(&phase_tx, id, open(load), secs, drain, &target.pids).await;
        result.offered_per_sec = Some(load);
        steps.push(result);
    }
    let saturation = if config.saturation_secs > 0.0 {
        id += 1;
        progress.set_phase("saturation");
        let mode = Mode::Closed {
            window: config.window.clamp(1, SERVER_QUEUE_LIMIT),
            min_interval: Duration::from_secs_f64(1.0 / config.per_conn_rate),
        };
        Some(run_step(&phase_tx, id, mode, config.saturation_secs, drain, &target.pids).await)
    } else {
        None
    };
    run.finish().await;
    progress.stop().await;
    Ok(DirectResult {
        target: target.label.clone(),
        users: config.users,
        payload_bytes: config.payload_bytes,
        steps,
        saturation,
    })
}

async fn run_step(
    phases: &watch::Sender<Arc<Phase>>,
    id: u32,
    mode: Mode,
    secs: f64,
    drain_secs: f64,
    pids: &[u32],
) -> StepResult {
    // A short lead so that every task has switched before the first send.
    let phase = Arc::new(Phase::new(id, mode, Duration::from_millis(100), secs));
    phases.send_replace(phase.clone());
    tokio::time::sleep_until(phase.start.into()).await;
    let window = Window::open(pids);
    tokio::time::sleep_until(phase.send_until.into()).await;
    let usage = window.close();
    let drain_end = Instant::now() + Duration::from_secs_f64(drain_secs);
    loop {
        let c = phase.counters.snapshot();
        let settled = c.acked + c.errors >= c.sent && c.delivered >= c.acked;
        if settled || Instant::now() > drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stop this phase's stragglers from recording while we read it.
    phases.send_replace(Arc::new(Phase::new(id + 1000, Mode::Quiet, Duration::ZERO, 0.0)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = phase.counters.snapshot();
    let last = phase.last_delivery_ns.load(Ordering::Relaxed);
    let span = last.saturating_sub(phase.start_ns) as f64 / 1e9;
    StepResult {
        mode: match mode {
            Mode::Closed { .. } => "closed",
            _ => "open",
        },
        offered_per_sec: None,
        duration_secs: secs,
        sent: c.sent,
        acked: c.acked,
        errors: c.errors,
        delivered: c.delivered,
        undelivered: c.acked.saturating_sub(c.delivered),
        throughput_per_sec: if span > 0.0 { c.delivered as f64 / span } else { 0.0 },
        latency: phase.delivery.summary(),
        ack_latency: phase.ack.summary(),
        usage,
    }
}

/// One user: sends to its peer as the current phase says and records what
/// it receives.
struct Conn {
    index: usize,
    users: usize,
    to: String,
    payload_bytes: usize,
    global: Arc<Counters>,
}

struct InFlight {
    req_id: u64,
    phase: u32,
    intended_ns: u64,
}

impl Conn {
    async fn run(self, mut ws: Ws, mut phases: watch::Receiver<Arc<Phase>>, cancel: CancellationToken) {
        let mut phase = phases.borrow_and_update().clone();
        let mut next = self.first_send(&phase);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut req_id = 0u64;
        let (mut delivery, mut ack) = (LatBuf::default(), LatBuf::default());
        loop {
            let limit = match phase.mode {
                Mode::Quiet => 0,
                Mode::Open { .. } => SERVER_QUEUE_LIMIT,
                Mode::Closed { window, .. } => window,
            };
            let due = next.filter(|_| in_flight.len() < limit);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                changed = phases.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    delivery.flush(&phase.delivery);
                    ack.flush(&phase.ack);
                    phase = phases.borrow_and_update().clone();
                    next = self.first_send(&phase);
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        self.on_frame(&bytes, &phase, &mut in_flight, &mut delivery, &mut ack);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                    Some(Ok(_)) => {}
                },
                () = sleep_until_opt(due) => {
                    let Some(scheduled) = next else { continue };
                    let now = Instant::now();
                    if now >= phase.send_until {
                        next = None;
                        continue;
                    }
                    let (intended, following) = match phase.mode {
                        Mode::Open { interval } => (scheduled, scheduled + interval),
                        Mode::Closed { min_interval, .. } => (now, now + min_interval),
                        Mode::Quiet => (now, now),
                    };
                    next = Some(following);
                    req_id += 1;
                    let intended_ns = phase.ns_of(intended);
                    let text = wire::payload_text(
                        &Payload { phase: phase.id, sender: self.index as u32, msg: req_id, sent_ns: intended_ns },
                        self.payload_bytes,
                    );
                    let frame = wire::send_frame(req_id, format!("{}-{req_id}", phase.id), self.to.clone(), false, text);
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                    in_flight.push_back(InFlight { req_id, phase: phase.id, intended_ns });
                    Counters::add(&phase.counters.sent, 1);
                    Counters::add(&self.global.sent, 1);
                }
            }
        }
        delivery.flush(&phase.delivery);
        ack.flush(&phase.ack);
    }

    /// When this user first sends in a phase: open-loop users are spread
    /// evenly over one interval so that the load is smooth, not a burst.
    fn first_send(&self, phase: &Phase) -> Option<Instant> {
        match phase.mode {
            Mode::Quiet => None,
            Mode::Open { interval } => Some(phase.start + interval.mul_f64(self.index as f64 / self.users as f64)),
            Mode::Closed { .. } => Some(phase.start),
        }
    }

    fn on_frame(
        &self,
        bytes: &[u8],
        phase: &Phase,
        in_flight: &mut VecDeque<InFlight>,
        delivery: &mut LatBuf,
        ack: &mut LatBuf,
    ) {
        match wire::read_server_frame(bytes) {
            Some(Incoming::Event { text: Some(text), .. }) => {
                let Some(p) = wire::parse_payload(text) else { return };
                if p.phase != phase.id {
                    Counters::add(&self.global.stale, 1);
                } else if p.sender as usize != self.index {
                    // Deliveries to the peer count; the sender's own copy
                    // (its other devices' view) does not.
                    let now = stats::now_ns();
                    delivery.push(now.saturating_sub(p.sent_ns), &phase.delivery);
                    phase.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                    Counters::add(&phase.counters.delivered, 1);
                    Counters::add(&self.global.delivered, 1);
                }
            }
            Some(Incoming::Event { .. }) => {}
            Some(Incoming::Other(frame)) => match frame.body {
                Some(v1::server_frame::Body::Response(response)) => {
                    // Answers come in request order; search anyway so that a
                    // server bug cannot desynchronise the bookkeeping.
                    let Some(pos) = in_flight.iter().position(|f| f.req_id == response.req_id) else {
                        return;
                    };
                    let Some(request) = in_flight.remove(pos) else { return };
                    let current = request.phase == phase.id;
                    match response.result {
                        Some(v1::response::Result::Sent(_)) => {
                            Counters::add(&self.global.acked, 1);
                            if current {
                                Counters::add(&phase.counters.acked, 1);
                                ack.push(stats::now_ns().saturating_sub(request.intended_ns), &phase.ack);
                            }
                        }
                        Some(v1::response::Result::Error(error)) => {
                            log_error(&self.global, &error);
                            if current {
                                Counters::add(&phase.counters.errors, 1);
                            }
                        }
                        _ => {}
                    }
                }
                Some(v1::server_frame::Body::Goodbye(goodbye)) => {
                    tracing::warn!(user = self.index, reason = goodbye.reason, message = %goodbye.message, "goodbye");
                }
                _ => {}
            },
            None => Counters::add(&self.global.errors, 1),
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
