//! Group fan-out: groups whose members are all online; a few members of each
//! group send, every member (the sender included, as Natter delivers it)
//! receives. Measures deliveries per second from the first send to the last
//! delivery, and per message the time until its *last* recipient has it.
//!
//! Flow control is by messages in flight per group, not by send rate: a
//! sender takes a permit before it sends and the message's last recipient
//! gives it back. So the load follows what the server actually delivers
//! (acks alone would let senders run ahead of the sockets), and the bare
//! baseline gets exactly the same treatment.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use natter_proto::v1;
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
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
/// User ids per createGroup / addMembers request (PROTOCOL.md §6).
const MEMBERS_PER_REQUEST: usize = 500;
/// The payload's phase (one measurement per run).
pub(crate) const PHASE: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct FanoutConfig {
    pub group_size: usize,
    pub groups: usize,
    /// Members of each group that send (the first ones).
    pub senders_per_group: usize,
    pub messages_per_group: usize,
    /// Messages per group sent but not yet delivered to every member.
    pub window_per_group: usize,
    /// Highest send rate of one connection (below the server's limit of 50/s).
    pub per_conn_rate: f64,
    pub payload_bytes: usize,
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub target: String,
    pub group_size: usize,
    pub groups: usize,
    pub senders: usize,
    pub messages: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub errors: u64,
    /// From the first send to the last delivery.
    pub duration_secs: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    /// Per message: intended send → the last member has it.
    pub time_to_last: LatencySummary,
    /// Per message: send → `sent` response.
    pub ack_latency: LatencySummary,
    pub usage: Usage,
    /// Whether every message reached every member before the timeout.
    pub complete: bool,
}

struct Slot {
    remaining: AtomicU32,
    last_ns: AtomicU64,
}

struct GroupFlow {
    permits: Semaphore,
    next: AtomicU64,
}

/// Shared by every member task: who has what, and the flow-control permits.
/// The NATS baseline (`scenarios::nats`) keeps its books with the same
/// tracker, so both report exactly the same quantities.
pub(crate) struct Tracker {
    slots: Vec<Slot>,
    groups: Vec<GroupFlow>,
    per_group: u64,
    group_size: usize,
    first_send_ns: AtomicU64,
    last_delivery_ns: AtomicU64,
    delivered: AtomicU64,
    completed: AtomicU64,
    to_last: Latency,
    ack: Latency,
    pub(crate) counters: Counters,
}

impl Tracker {
    pub(crate) fn new(config: &FanoutConfig) -> Arc<Self> {
        let total = (config.groups * config.messages_per_group) as u64;
        Arc::new(Self {
            slots: (0..total)
                .map(|_| Slot { remaining: AtomicU32::new(config.group_size as u32), last_ns: AtomicU64::new(0) })
                .collect(),
            groups: (0..config.groups)
                .map(|_| GroupFlow { permits: Semaphore::new(config.window_per_group.max(1)), next: AtomicU64::new(0) })
                .collect(),
            per_group: config.messages_per_group as u64,
            group_size: config.group_size,
            first_send_ns: AtomicU64::new(u64::MAX),
            last_delivery_ns: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            to_last: Latency::new(),
            ack: Latency::new(),
            counters: Counters::default(),
        })
    }

    fn total(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Waits for the pace, then for a permit of `group`; `None` if the group
    /// does not exist.
    pub(crate) async fn acquire(&self, group: usize, at: Instant) -> Option<SemaphorePermit<'_>> {
        tokio::time::sleep_until(at.into()).await;
        self.groups.get(group)?.permits.acquire().await.ok()
    }

    /// Numbers the next message of `group` for a sender holding one of its
    /// permits, and keeps the permit until the message's last recipient
    /// returns it. `None` once the group's quota is sent (the permit goes
    /// back, so the group's other senders find out too).
    pub(crate) fn claim(&self, group: usize, permit: SemaphorePermit<'_>) -> Option<u64> {
        let n = self.groups.get(group)?.next.fetch_add(1, Ordering::Relaxed);
        if n >= self.per_group {
            return None;
        }
        permit.forget();
        Some(group as u64 * self.per_group + n)
    }

    /// A message is about to go out at `sent_ns`.
    pub(crate) fn sending(&self, sent_ns: u64) {
        self.first_send_ns.fetch_min(sent_ns, Ordering::Relaxed);
    }

    /// One member received a benchmark message.
    pub(crate) fn on_delivery(&self, p: &Payload, global: &Counters) {
        let Some(slot) = usize::try_from(p.msg).ok().and_then(|i| self.slots.get(i)) else {
            Counters::add(&global.stale, 1);
            return;
        };
        if p.phase != PHASE {
            Counters::add(&global.stale, 1);
            return;
        }
        let now = stats::now_ns();
        slot.last_ns.fetch_max(now, Ordering::AcqRel);
        self.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Counters::add(&global.delivered, 1);
        if slot.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // This member was the last one: the message is done.
            let last = slot.last_ns.load(Ordering::Acquire);
            self.to_last.record_ns(last.saturating_sub(p.sent_ns));
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.release(p.msg);
        }
    }

    /// A message that will never be delivered (its send failed): finished
    /// here, so that the run ends and its group gets the permit back.
    pub(crate) fn abandon(&self, msg: u64) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.release(msg);
    }

    fn release(&self, msg: u64) {
        if let Some(flow) = self.groups.get((msg / self.per_group.max(1)) as usize) {
            flow.permits.add_permits(1);
        }
    }

    /// Waits until every message reached every member or the timeout passed;
    /// whether they all did.
    pub(crate) async fn wait_complete(&self, timeout_secs: f64) -> bool {
        let total = self.total();
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_secs);
        while self.completed.load(Ordering::Relaxed) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let completed = self.completed.load(Ordering::Relaxed);
        if completed < total {
            tracing::warn!(completed, total, "fan-out timed out before every member had every message");
        }
        completed >= total
    }

    /// The result row; `messages` is how many went out (acknowledged ones
    /// for Natter, published ones for NATS).
    pub(crate) fn result(
        &self,
        target: &str,
        senders: usize,
        messages: u64,
        usage: Usage,
        complete: bool,
    ) -> FanoutResult {
        let first = self.first_send_ns.load(Ordering::Relaxed);
        let last = self.last_delivery_ns.load(Ordering::Relaxed);
        let span = last.saturating_sub(first) as f64 / 1e9;
        let deliveries = self.delivered.load(Ordering::Relaxed);
        FanoutResult {
            target: target.to_owned(),
            group_size: self.group_size,
            groups: self.groups.len(),
            senders,
            messages,
            expected_deliveries: self.total() * self.group_size as u64,
            deliveries,
            errors: Counters::get(&self.counters.errors),
            duration_secs: span,
            deliveries_per_sec: if span > 0.0 { deliveries as f64 / span } else { 0.0 },
            messages_per_sec: if span > 0.0 { messages as f64 / span } else { 0.0 },
            time_to_last: self.to_last.summary(),
            ack_latency: self.ack.summary(),
            usage,
            complete,
        }
    }
}

pub async fn run(run: &Run, config: &FanoutConfig) -> anyhow::Result<FanoutResult> {
    validate(config)?;
    let target = &run.target;
    if target.kind == ServerKind::Nats {
        bail!("fanout: {} is a nats-server; its baseline is scenarios::nats", target.label);
    }
    let progress = Progress::start(
        format!("fan-out {} x{} {}", config.group_size, config.groups, target.label),
        run.counters.clone(),
        target.pids.clone(),
    );
    let names =
        |g: usize| -> Vec<String> { (0..config.group_size).map(|m| format!("{}-g{g}-{m}", run.prefix)).collect() };

    // Groups first, so that members receive the group's creation in their
    // replay, before `caught_up`, and nothing but benchmark messages live.
    progress.set_phase("creating groups");
    let mut destinations = Vec::with_capacity(config.groups);
    for g in 0..config.groups {
        destinations.push(match target.kind {
            ServerKind::Natter => create_group(run, &names(g)).await?,
            ServerKind::Bare | ServerKind::Nats => format!("{}-g{g}", run.prefix),
        });
    }

    let senders = config.senders_per_group.min(config.group_size);
    let tracker = Tracker::new(config);

    progress.set_phase("connecting");
    let mut users = Vec::with_capacity(config.groups * config.group_size);
    for (g, destination) in destinations.iter().enumerate() {
        let room = (target.kind == ServerKind::Bare).then(|| destination.clone());
        users.extend(names(g).into_iter().map(|n| (n, room.clone())));
    }
    let (start_tx, start_rx) = watch::channel(false);
    let ready = client::connect_all(target, &users, 0, &run.client, &run.counters, |i, ws| {
        let group = i / config.group_size;
        let member = Member {
            group,
            sender: i % config.group_size < senders,
            to: destinations[group].clone(),
            payload_bytes: config.payload_bytes,
            min_interval: Duration::from_secs_f64(1.0 / config.per_conn_rate),
            index: i as u32,
            tracker: tracker.clone(),
            global: run.counters.clone(),
        };
        run.tasks.spawn(member.run(ws, start_rx.clone(), run.cancel.clone()));
    })
    .await;
    if ready < users.len() {
        run.finish().await;
        progress.stop().await;
        bail!("fanout: only {ready} of {} members connected", users.len());
    }

    progress.set_phase("sending");
    let window = Window::open(&target.pids);
    let _ = start_tx.send(true);
    let complete = tracker.wait_complete(config.timeout_secs).await;
    let usage = window.close();
    run.finish().await;
    progress.stop().await;
    let messages = tracker.counters.acked.load(Ordering::Relaxed);
    Ok(tracker.result(&target.label, senders * config.groups, messages, usage, complete))
}

/// What both fan-out scenarios need of a configuration.
pub(crate) fn validate(config: &FanoutConfig) -> anyhow::Result<()> {
    if config.group_size < 2 || config.groups == 0 || config.senders_per_group == 0 {
        bail!("fanout: need groups of at least 2 members and at least one sender");
    }
    // Its inverse is the senders' pace (a zero rate would never send).
    if config.per_conn_rate.is_nan() || config.per_conn_rate <= 0.0 {
        bail!("fanout: the per-connection rate must be positive");
    }
    Ok(())
}

/// Creates a group owned by `members[0]` with everyone in it, over a setup
/// connection of the owner; returns its id.
pub(crate) async fn create_group(run: &Run, members: &[String]) -> anyhow::Result<String> {
    let owner = &members[0];
    let path = run.target.ws_path(owner, None)?;
    let mut ws = client::connect(&run.target, 0, client::source_ip(0, 1), &path, &run.client).await?;
    client::wait_caught_up(&mut ws).await?;
    let mut chunks = members[1..].chunks(MEMBERS_PER_REQUEST);
    let create = v1::CreateGroup {
        name: format!("bench {owner}"),
        description: String::new(),
        members: chunks.next().map(<[String]>::to_vec).unwrap_or_default(),
        max_members: 0,
    };
    let group = match client::request(&mut ws, 1, v1::client_frame::Body::CreateGroup(create)).await? {
        v1::response::Result::Group(group) => group.id,
        other => bail!("createGroup failed: {other:?}"),
    };
    for (i, chunk) in chunks.enumerate() {
        let add = v1::AddMembers { group_id: group.clone(), members: chunk.to_vec() };
        match client::request(&mut ws, 2 + i as u64, v1::client_frame::Body::AddMembers(add))
            .await
            .context("addMembers")?
        {
            v1::response::Result::Group(_) => {}
            other => bail!("addMembers failed: {other:?}"),
        }
    }
    let _ = ws.close(None).await;
    Ok(group)
}

/// One member: receives every message of its group; if a sender, sends
/// whenever its group has a permit and its own pace allows.
struct Member {
    group: usize,
    sender: bool,
    to: String,
    payload_bytes: usize,
    min_interval: Duration,
    index: u32,
    tracker: Arc<Tracker>,
    global: Arc<Counters>,
}

impl Member {
    async fn run(self, mut ws: Ws, mut start: watch::Receiver<bool>, cancel: CancellationToken) {
        let mut started = *start.borrow_and_update();
        let mut done = !self.sender;
        let mut next_allowed = Instant::now();
        let mut in_flight: std::collections::VecDeque<(u64, u64, u64)> = Default::default();
        let mut req_id = 0u64;
        let mut ack = LatBuf::default();
        loop {
            let may_send = started && !done && in_flight.len() < SERVER_QUEUE_LIMIT;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                changed = start.changed(), if !started => {
                    if changed.is_err() {
                        break;
                    }
                    started = *start.borrow_and_update();
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => self.on_frame(&bytes, &mut in_flight, &mut ack),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                    Some(Ok(_)) => {}
                },
                permit = self.tracker.acquire(self.group, next_allowed), if may_send => {
                    let Some(permit) = permit else { break };
                    // The last recipient returns the permit (see `on_frame`).
                    let Some(msg) = self.tracker.claim(self.group, permit) else {
                        done = true;
                        continue;
                    };
                    next_allowed = Instant::now() + self.min_interval;
                    let sent_ns = stats::now_ns();
                    self.tracker.sending(sent_ns);
                    let text = wire::payload_text(
                        &Payload { phase: PHASE, sender: self.index, msg, sent_ns },
                        self.payload_bytes,
                    );
                    req_id += 1;
                    let frame = wire::send_frame(req_id, format!("m{msg}"), self.to.clone(), true, text);
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                    in_flight.push_back((req_id, sent_ns, msg));
                    Counters::add(&self.global.sent, 1);
                }
            }
        }
        ack.flush(&self.tracker.ack);
    }

    fn on_frame(&self, bytes: &[u8], in_flight: &mut std::collections::VecDeque<(u64, u64, u64)>, ack: &mut LatBuf) {
        let tracker = &*self.tracker;
        match wire::read_server_frame(bytes) {
            Some(Incoming::Event { text: Some(text), .. }) => {
                if let Some(p) = wire::parse_payload(text) {
                    tracker.on_delivery(&p, &self.global);
                }
            }
            Some(Incoming::Event { .. }) => {}
            Some(Incoming::Other(frame)) => match frame.body {
                Some(v1::server_frame::Body::Response(response)) => {
                    let Some(pos) = in_flight.iter().position(|(id, _, _)| *id == response.req_id) else {
                        return;
                    };
                    let Some((_, sent_ns, msg)) = in_flight.remove(pos) else { return };
                    match response.result {
                        Some(v1::response::Result::Sent(_)) => {
                            Counters::add(&self.global.acked, 1);
                            Counters::add(&tracker.counters.acked, 1);
                            ack.push(stats::now_ns().saturating_sub(sent_ns), &tracker.ack);
                        }
                        Some(v1::response::Result::Error(error)) => {
                            log_error(&self.global, &error);
                            Counters::add(&tracker.counters.errors, 1);
                            tracker.abandon(msg);
                        }
                        _ => {}
                    }
                }
                Some(v1::server_frame::Body::Goodbye(goodbye)) => {
                    tracing::warn!(member = self.index, reason = goodbye.reason, message = %goodbye.message, "goodbye");
                }
                _ => {}
            },
            None => Counters::add(&self.global.errors, 1),
        }
    }
}
