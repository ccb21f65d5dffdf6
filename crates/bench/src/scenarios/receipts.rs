//! Group read receipts (R5/R6): one sender, the owner of a group of
//! `members` readers besides it, all online. The sender sends messages that
//! ask for read receipts (`msg_config.allow_group_ack`); every member, on
//! receiving one, sends a read receipt for it at once (pipelined: it does
//! not wait for the answer before reading its next frame). The sender is
//! told each message's read count (`onReadMessage`, coalesced by the
//! server: while one write of the sender's log is in flight further
//! receipts wait, and the next event carries the newest count).
//!
//! Measured: read receipts per second (receipts answered `ok` ÷ the time
//! from the first such answer to the last); per message, the time from the
//! send of its last member's receipt to the sender's `onReadMessage` whose
//! count reaches `members`; every message's final count checked against
//! `members` exactly.
//!
//! Flow control is by messages open at once (`window`): the sender takes a
//! permit before it sends and gets it back when the message's count reaches
//! `members` (or it can never: its send or one of its receipts failed).
//! A `rate` paces the sender on top. A member keeps at most the server's
//! queue limit of receipts waiting for an answer and holds any further ones
//! back until answers come.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use natter_proto::v1;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{LatBuf, Run, Usage, Window, log_error};
use crate::client::{self, Ws};
use crate::progress::Progress;
use crate::stats::{self, Counters, Latency, LatencySummary};
use crate::target::ServerKind;
use crate::wire::{self, Incoming, Payload, ReadCount};

/// Requests the server lets wait per connection (PROTOCOL.md §3.1).
const SERVER_QUEUE_LIMIT: usize = 32;
/// The payload's phase (one measurement per run).
const PHASE: u32 = 1;
/// How long the last receipts may take to be answered once every message
/// reached its full count (an answer can come after the sender's event).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct ReceiptsConfig {
    /// Members besides the sender (the group has one more): each sends a
    /// read receipt for every message, so a full count is `members`.
    pub members: usize,
    /// Messages the sender sends.
    pub messages: usize,
    /// Messages open at once: sent, and not yet at their full count.
    pub window: usize,
    /// Highest send rate of the sender in msg/s; 0: only the window limits.
    /// Every member sends receipts at the same rate.
    pub rate: f64,
    pub payload_bytes: usize,
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceiptsResult {
    pub target: String,
    /// Gateways the clients were spread over (more than one: distributed).
    pub gateways: usize,
    pub members: usize,
    pub window: usize,
    /// The sender's pace in msg/s (0: none, the window alone).
    pub rate: f64,
    pub payload_bytes: usize,
    /// Messages sent and acknowledged.
    pub messages: u64,
    /// Acknowledged messages × members.
    pub expected_receipts: u64,
    /// Receipts sent by the members.
    pub receipts_sent: u64,
    /// Receipts answered `ok`.
    pub receipts: u64,
    /// Error responses (to sends and to receipts), unexpected answers and
    /// undecodable frames.
    pub errors: u64,
    /// Acknowledged messages whose final read count, as the sender was
    /// told it, is not `members`.
    pub wrong_counts: u64,
    /// Read-count events the sender received (`onReadMessage`).
    pub count_events: u64,
    /// From the first receipt answered `ok` to the last.
    pub duration_secs: f64,
    pub receipts_per_sec: f64,
    pub messages_per_sec: f64,
    /// Per message: its last member's receipt sent → the sender's
    /// `onReadMessage` with the full count read off its socket.
    pub to_sender: LatencySummary,
    /// Per receipt: sent → its `ok` answer.
    pub receipt_latency: LatencySummary,
    /// Per message: send → `sent` answer.
    pub ack_latency: LatencySummary,
    pub usage: Usage,
    /// Whether every message reached its full count (or failed) before the
    /// timeout.
    pub complete: bool,
}

/// A message still open.
const OPEN: u8 = 0;
/// Its count reached `members`.
const DONE: u8 = 1;
/// It never will: its send or one of its receipts failed.
const ABANDONED: u8 = 2;

#[derive(Default)]
struct Slot {
    /// The send was acknowledged.
    acked: AtomicBool,
    /// Receipts answered, `ok` or not.
    answered: AtomicU32,
    failed: AtomicU32,
    /// When the newest receipt for it was sent (ns).
    last_receipt_ns: AtomicU64,
    /// The highest count the sender was told.
    count: AtomicU64,
    state: AtomicU8,
}

/// Shared by the sender and every member.
struct Tracker {
    slots: Vec<Slot>,
    members: u64,
    permits: Semaphore,
    first_answer_ns: AtomicU64,
    last_answer_ns: AtomicU64,
    receipts_ok: AtomicU64,
    answered: AtomicU64,
    completed: AtomicU64,
    count_events: AtomicU64,
    to_sender: Latency,
    receipt_latency: Latency,
    ack: Latency,
}

impl Tracker {
    fn new(config: &ReceiptsConfig) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..config.messages).map(|_| Slot::default()).collect(),
            members: config.members as u64,
            permits: Semaphore::new(config.window),
            first_answer_ns: AtomicU64::new(u64::MAX),
            last_answer_ns: AtomicU64::new(0),
            receipts_ok: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            count_events: AtomicU64::new(0),
            to_sender: Latency::new(),
            receipt_latency: Latency::new(),
            ack: Latency::new(),
        })
    }

    fn slot(&self, msg: u64) -> Option<&Slot> {
        usize::try_from(msg).ok().and_then(|i| self.slots.get(i))
    }

    /// A member is about to send a receipt for `msg` at `now`.
    fn receipt_sending(&self, slot: &Slot, now: u64) {
        slot.last_receipt_ns.fetch_max(now, Ordering::AcqRel);
    }

    /// A receipt was answered; `ok` whether it was `ok`.
    fn receipt_answered(&self, msg: u64, ok: bool, now: u64) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.slot(msg) else { return };
        if ok {
            self.receipts_ok.fetch_add(1, Ordering::Relaxed);
            self.first_answer_ns.fetch_min(now, Ordering::Relaxed);
            self.last_answer_ns.fetch_max(now, Ordering::Relaxed);
        } else {
            slot.failed.fetch_add(1, Ordering::AcqRel);
        }
        // The last answer of a message with a failed receipt: its count can
        // never be full, so it is finished here.
        if slot.answered.fetch_add(1, Ordering::AcqRel) + 1 == self.members as u32
            && slot.failed.load(Ordering::Acquire) > 0
        {
            self.finish(slot, ABANDONED);
        }
    }

    /// The sender was told `msg`'s read count, read off its socket at `at`.
    fn on_count(&self, msg: u64, count: u64, at: u64) {
        self.count_events.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.slot(msg) else { return };
        slot.count.fetch_max(count, Ordering::AcqRel);
        if count >= self.members && self.finish(slot, DONE) {
            let last = slot.last_receipt_ns.load(Ordering::Acquire);
            self.to_sender.record_ns(at.saturating_sub(last));
        }
    }

    /// Finishes an open message (once): its permit goes back to the sender.
    fn finish(&self, slot: &Slot, state: u8) -> bool {
        let finished = slot.state.compare_exchange(OPEN, state, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if finished {
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.permits.add_permits(1);
        }
        finished
    }

    /// Waits until every message is finished or the timeout passed; whether
    /// they all were.
    async fn wait_complete(&self, timeout_secs: f64) -> bool {
        let total = self.slots.len() as u64;
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_secs);
        while self.completed.load(Ordering::Relaxed) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let completed = self.completed.load(Ordering::Relaxed);
        if completed < total {
            tracing::warn!(completed, total, "receipts timed out before every message reached its full count");
        }
        completed >= total
    }

    /// Waits (briefly) for the answers to every receipt sent.
    async fn wait_answered(&self, counters: &Counters) {
        let deadline = Instant::now() + ANSWER_GRACE;
        while self.answered.load(Ordering::Relaxed) < Counters::get(&counters.sent) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn run(run: &Run, config: &ReceiptsConfig) -> anyhow::Result<ReceiptsResult> {
    if run.target.kind != ServerKind::Natter {
        bail!("receipts: {} is not a Natter server", run.target.label);
    }
    if config.members == 0 || config.messages == 0 {
        bail!("receipts: need at least one member and one message");
    }
    if u32::try_from(config.members).is_err() {
        bail!("receipts: {} members is too many", config.members);
    }
    if !(config.rate.is_finite() && config.rate >= 0.0) {
        bail!("receipts: the sender's rate must be 0 (none) or positive");
    }
    let config = &ReceiptsConfig { window: config.window.clamp(1, SERVER_QUEUE_LIMIT), ..config.clone() };
    let target = &run.target;
    let progress = Progress::start(
        format!("receipts {} {}", config.members, target.label),
        run.counters.clone(),
        target.pids.clone(),
    );
    let result = measure(run, config, &progress).await;
    progress.stop().await;
    result
}

async fn measure(run: &Run, config: &ReceiptsConfig, progress: &Progress) -> anyhow::Result<ReceiptsResult> {
    let target = &run.target;
    let sender = format!("{}-s", run.prefix);
    let members: Vec<String> = (0..config.members).map(|i| format!("{}-m{i}", run.prefix)).collect();

    // The group first, so that members receive its creation in their
    // replay, before `caught_up`, and nothing but the messages live.
    progress.set_phase("creating the group");
    let mut everyone = vec![sender.clone()];
    everyone.extend(members.iter().cloned());
    let group = super::fanout::create_group(run, &everyone).await.context("creating the receipts group")?;

    let tracker = Tracker::new(config);
    progress.set_phase("connecting");
    let users: Vec<(String, Option<String>)> = members.iter().map(|m| (m.clone(), None)).collect();
    let ready = client::connect_all(target, &users, 0, &run.client, &run.counters, |i, ws| {
        let member = Member { group: group.clone(), index: i, tracker: tracker.clone(), global: run.counters.clone() };
        run.tasks.spawn(member.run(ws, run.cancel.clone()));
    })
    .await;
    if ready < users.len() {
        bail!("receipts: only {ready} of {} members connected", users.len());
    }
    // The sender after the members (with several gateways, on the next one).
    let index = members.len();
    let path = target.ws_path(&sender, None)?;
    let mut ws =
        client::connect(target, index, client::source_ip(index, run.client.per_source_ip), &path, &run.client).await?;
    client::wait_caught_up(&mut ws).await?;
    let (start_tx, start_rx) = watch::channel(false);
    let (acked_tx, acked_rx) = tokio::sync::oneshot::channel::<u64>();
    let sending = Sending {
        group: group.clone(),
        messages: config.messages as u64,
        min_interval: if config.rate > 0.0 { Duration::from_secs_f64(1.0 / config.rate) } else { Duration::ZERO },
        payload_bytes: config.payload_bytes,
        tracker: tracker.clone(),
        global: run.counters.clone(),
    };
    run.tasks.spawn(sending.run(ws, start_rx, acked_tx, run.cancel.clone()));

    progress.set_phase("sending");
    let window = Window::open(&target.pids);
    let _ = start_tx.send(true);
    let complete = tracker.wait_complete(config.timeout_secs).await;
    tracker.wait_answered(&run.counters).await;
    let usage = window.close();
    run.finish().await;
    let messages = acked_rx.await.unwrap_or(0);

    let wrong_counts = tracker
        .slots
        .iter()
        .filter(|s| s.acked.load(Ordering::Relaxed) && s.count.load(Ordering::Relaxed) != tracker.members)
        .count() as u64;
    let first = tracker.first_answer_ns.load(Ordering::Relaxed);
    let last = tracker.last_answer_ns.load(Ordering::Relaxed);
    let span = last.saturating_sub(first) as f64 / 1e9;
    let receipts = tracker.receipts_ok.load(Ordering::Relaxed);
    let per_sec = |n: u64| if span > 0.0 { n as f64 / span } else { 0.0 };
    Ok(ReceiptsResult {
        target: target.label.clone(),
        gateways: target.addrs.len(),
        members: config.members,
        window: config.window,
        rate: config.rate,
        payload_bytes: config.payload_bytes,
        messages,
        expected_receipts: messages * tracker.members,
        receipts_sent: Counters::get(&run.counters.sent),
        receipts,
        errors: Counters::get(&run.counters.errors),
        wrong_counts,
        count_events: tracker.count_events.load(Ordering::Relaxed),
        duration_secs: span,
        receipts_per_sec: per_sec(receipts),
        messages_per_sec: per_sec(messages),
        to_sender: tracker.to_sender.summary(),
        receipt_latency: tracker.receipt_latency.summary(),
        ack_latency: tracker.ack.summary(),
        usage,
        complete,
    })
}

/// One member: sends a read receipt for every message it receives.
struct Member {
    group: String,
    index: usize,
    tracker: Arc<Tracker>,
    global: Arc<Counters>,
}

/// A member's receipts: sent and not yet answered (request id, message,
/// sent at), and held back until fewer wait (message, server id).
#[derive(Default)]
struct Receipts {
    in_flight: VecDeque<(u64, u64, u64)>,
    held: VecDeque<(u64, u64)>,
    req_id: u64,
}

impl Member {
    async fn run(self, mut ws: Ws, cancel: CancellationToken) {
        let mut receipts = Receipts::default();
        let mut latency = LatBuf::default();
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        if self.on_frame(&bytes, &mut receipts, &mut latency) && self.send_held(&mut ws, &mut receipts).await.is_err() {
                            Counters::add(&self.global.dropped, 1);
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        latency.flush(&self.tracker.receipt_latency);
        let _ = ws.close(None).await;
        tracing::trace!(member = self.index, "receipts member done");
    }

    /// Sends held receipts while fewer than the server's queue limit wait.
    async fn send_held(&self, ws: &mut Ws, receipts: &mut Receipts) -> anyhow::Result<()> {
        while receipts.in_flight.len() < SERVER_QUEUE_LIMIT {
            let Some((msg, id)) = receipts.held.pop_front() else { break };
            receipts.req_id += 1;
            let req_id = receipts.req_id;
            let frame = wire::read_receipt_frame(req_id, self.group.clone(), id);
            let now = stats::now_ns();
            if let Some(slot) = self.tracker.slot(msg) {
                self.tracker.receipt_sending(slot, now);
            }
            receipts.in_flight.push_back((req_id, msg, now));
            ws.send(Message::Binary(frame.into())).await?;
            Counters::add(&self.global.sent, 1);
        }
        Ok(())
    }

    /// Handles one frame; whether held receipts may go out now.
    fn on_frame(&self, bytes: &[u8], receipts: &mut Receipts, latency: &mut LatBuf) -> bool {
        let tracker = &*self.tracker;
        match wire::read_server_frame(bytes) {
            Some(Incoming::Event { id, text: Some(text), .. }) => {
                let Some(p) = wire::parse_payload(text) else { return false };
                if p.phase != PHASE || tracker.slot(p.msg).is_none() || id == 0 {
                    Counters::add(&self.global.stale, 1);
                    return false;
                }
                Counters::add(&self.global.delivered, 1);
                receipts.held.push_back((p.msg, id));
                true
            }
            Some(Incoming::Event { .. }) => false,
            Some(Incoming::Other(frame)) => match frame.body {
                Some(v1::server_frame::Body::Response(response)) => {
                    let Some(pos) = receipts.in_flight.iter().position(|(id, _, _)| *id == response.req_id) else {
                        return false;
                    };
                    let Some((_, msg, sent_ns)) = receipts.in_flight.remove(pos) else { return false };
                    let now = stats::now_ns();
                    match response.result {
                        Some(v1::response::Result::Ok(_)) => {
                            Counters::add(&self.global.acked, 1);
                            latency.push(now.saturating_sub(sent_ns), &tracker.receipt_latency);
                            tracker.receipt_answered(msg, true, now);
                        }
                        Some(v1::response::Result::Error(error)) => {
                            log_error(&self.global, &error);
                            tracker.receipt_answered(msg, false, now);
                        }
                        other => {
                            tracing::warn!(member = self.index, answer = ?other, "a receipt answered unexpectedly");
                            Counters::add(&self.global.errors, 1);
                            tracker.receipt_answered(msg, false, now);
                        }
                    }
                    !receipts.held.is_empty()
                }
                Some(v1::server_frame::Body::Goodbye(goodbye)) => {
                    tracing::warn!(member = self.index, reason = goodbye.reason, message = %goodbye.message, "goodbye");
                    false
                }
                _ => false,
            },
            None => {
                Counters::add(&self.global.errors, 1);
                false
            }
        }
    }
}

/// The sender: sends `messages` that ask for read receipts, each once a
/// permit is free and its pace allows, and follows their read counts.
struct Sending {
    group: String,
    messages: u64,
    min_interval: Duration,
    payload_bytes: usize,
    tracker: Arc<Tracker>,
    global: Arc<Counters>,
}

/// The sender's books: sends not yet answered (request id, message, sent
/// at), acknowledged messages by server id, and counts that came before
/// their message's acknowledgement (server id → count, read at).
#[derive(Default)]
struct Book {
    in_flight: VecDeque<(u64, u64, u64)>,
    ids: HashMap<u64, u64>,
    early: HashMap<u64, (u64, u64)>,
    acked: u64,
}

impl Sending {
    async fn run(
        self,
        mut ws: Ws,
        mut start: watch::Receiver<bool>,
        acked: tokio::sync::oneshot::Sender<u64>,
        cancel: CancellationToken,
    ) {
        let mut started = *start.borrow_and_update();
        let mut next = 0u64;
        let mut next_allowed = Instant::now();
        let mut book = Book::default();
        let mut ack = LatBuf::default();
        let mut req_id = 0u64;
        loop {
            let may_send = started && next < self.messages && book.in_flight.len() < SERVER_QUEUE_LIMIT;
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
                    Some(Ok(Message::Binary(bytes))) => self.on_frame(&bytes, &mut book, &mut ack),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                    Some(Ok(_)) => {}
                },
                permit = self.acquire(next_allowed), if may_send => {
                    let Some(permit) = permit else { break };
                    // The message's full count (or its failure) returns it.
                    permit.forget();
                    let msg = next;
                    next += 1;
                    next_allowed = Instant::now() + self.min_interval;
                    let sent_ns = stats::now_ns();
                    let text =
                        wire::payload_text(&Payload { phase: PHASE, sender: 0, msg, sent_ns }, self.payload_bytes);
                    req_id += 1;
                    let frame = wire::send_frame_asking_reads(req_id, format!("r{msg}"), self.group.clone(), text);
                    book.in_flight.push_back((req_id, msg, sent_ns));
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        Counters::add(&self.global.dropped, 1);
                        break;
                    }
                }
            }
        }
        ack.flush(&self.tracker.ack);
        let _ = acked.send(book.acked);
        let _ = ws.close(None).await;
    }

    async fn acquire(&self, at: Instant) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::sleep_until(at.into()).await;
        self.tracker.permits.acquire().await.ok()
    }

    fn on_frame(&self, bytes: &[u8], book: &mut Book, ack: &mut LatBuf) {
        let tracker = &*self.tracker;
        match wire::read_server_frame(bytes) {
            Some(Incoming::Event { read: Some(ReadCount { mid, count }), .. }) => {
                let now = stats::now_ns();
                match book.ids.get(&mid) {
                    Some(&msg) => tracker.on_count(msg, count, now),
                    None => {
                        // Before its `sent` answer was read: kept until then.
                        let early = book.early.entry(mid).or_insert((count, now));
                        if count > early.0 {
                            *early = (count, now);
                        }
                    }
                }
            }
            // Its own messages, delivered back to it as a member.
            Some(Incoming::Event { .. }) => {}
            Some(Incoming::Other(frame)) => match frame.body {
                Some(v1::server_frame::Body::Response(response)) => {
                    let Some(pos) = book.in_flight.iter().position(|(id, _, _)| *id == response.req_id) else {
                        return;
                    };
                    let Some((_, msg, sent_ns)) = book.in_flight.remove(pos) else { return };
                    match response.result {
                        Some(v1::response::Result::Sent(sent)) => {
                            book.acked += 1;
                            ack.push(stats::now_ns().saturating_sub(sent_ns), &tracker.ack);
                            if let Some(slot) = tracker.slot(msg) {
                                slot.acked.store(true, Ordering::Release);
                            }
                            book.ids.insert(sent.server_msg_id, msg);
                            if let Some((count, at)) = book.early.remove(&sent.server_msg_id) {
                                tracker.on_count(msg, count, at);
                            }
                        }
                        Some(v1::response::Result::Error(error)) => {
                            log_error(&self.global, &error);
                            if let Some(slot) = tracker.slot(msg) {
                                tracker.finish(slot, ABANDONED);
                            }
                        }
                        other => {
                            tracing::warn!(answer = ?other, "a send answered unexpectedly");
                            Counters::add(&self.global.errors, 1);
                            if let Some(slot) = tracker.slot(msg) {
                                tracker.finish(slot, ABANDONED);
                            }
                        }
                    }
                }
                Some(v1::server_frame::Body::Goodbye(goodbye)) => {
                    tracing::warn!(reason = goodbye.reason, message = %goodbye.message, "the sender got a goodbye");
                }
                _ => {}
            },
            None => Counters::add(&self.global.errors, 1),
        }
    }
}
