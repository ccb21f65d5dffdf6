//! History (C5): one conversation with many messages, paged with the
//! largest page (50) in both directions: walks of a few pages from the
//! newest message up, and from random messages up and down. Latency is
//! client-side, one request at a time, paced under the per-connection limit
//! (`Pager`), with a `ping` between pages on the same socket as the floor.
//!
//! Seeding (not measured) goes over the client WebSocket like every other
//! setup of the bench, so it works against a cluster too: the conversation
//! is a group whose members send at the per-connection pace with a few
//! sends in flight each; many senders make it fast (the reader is a member
//! that does not send). Every page is checked against the ids the sends
//! were acknowledged with: the right messages, in order, and a cursor
//! exactly when there is more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use natter_proto::v1;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{Pager, Rng, Run, Usage, Window, log_error};
use crate::client::{self, Ws};
use crate::progress::Progress;
use crate::stats::{Counters, Latency, LatencySummary, now_ns};
use crate::target::ServerKind;
use crate::wire::{self, Incoming};

/// Requests the server lets wait per connection (PROTOCOL.md §3.1).
const SERVER_QUEUE_LIMIT: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct HistoryConfig {
    /// Messages in the conversation.
    pub messages: usize,
    /// Members that send them (the group has one more: the reader).
    pub senders: usize,
    /// Sends in flight per sender.
    pub window: usize,
    /// Messages per page (1..=50).
    pub page_size: usize,
    /// Pages read in all (measured).
    pub pages: usize,
    /// Pages per walk before the next walk starts somewhere else.
    pub walk_pages: usize,
    /// A `ping` after every this many pages (0: none).
    pub ping_every: usize,
    /// Highest request rate of one connection (below the server's 50/s).
    pub per_conn_rate: f64,
    pub payload_bytes: usize,
    /// How long seeding may take.
    pub seed_timeout_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryResult {
    pub target: String,
    /// Gateways the clients were spread over (more than one: distributed).
    pub gateways: usize,
    /// Messages stored (acknowledged sends).
    pub messages: usize,
    pub senders: usize,
    /// Seeding: creating the group, connecting, sending (not measured).
    pub seed_secs: f64,
    pub seed_messages_per_sec: f64,
    pub page_size: usize,
    pub walk_pages: usize,
    pub pages: u64,
    pub errors: u64,
    /// Pages whose messages or cursor were not what the stored ids say.
    pub mismatched_pages: u64,
    /// Every page: request written → response read, client-side.
    pub page_latency: LatencySummary,
    /// Walks from the newest message, newest first.
    pub newest_up: LatencySummary,
    /// Walks from a random message, older ones (UP).
    pub random_up: LatencySummary,
    /// Walks from a random message, newer ones (DOWN).
    pub random_down: LatencySummary,
    /// `ping` round trips on the same socket between pages.
    pub ping: LatencySummary,
    /// Pages per second of time spent waiting for them (one client, back
    /// to back, without the per-connection limit).
    pub pages_per_sec: f64,
    /// Pages per second over the wall time (paced by the client).
    pub wall_pages_per_sec: f64,
    pub duration_secs: f64,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy)]
enum Walk {
    NewestUp,
    RandomUp,
    RandomDown,
}

const WALKS: [Walk; 3] = [Walk::NewestUp, Walk::RandomUp, Walk::RandomDown];

pub async fn run(run: &Run, config: &HistoryConfig) -> anyhow::Result<HistoryResult> {
    if run.target.kind != ServerKind::Natter {
        bail!("history: {} is not a Natter server", run.target.label);
    }
    if config.messages == 0
        || config.senders == 0
        || !(1..=50).contains(&config.page_size)
        || config.pages == 0
        || config.walk_pages == 0
    {
        bail!("history: need messages, senders, pages and walks, and a page size of 1 to 50");
    }
    let progress = Progress::start(
        format!("history {} {}", config.messages, run.target.label),
        run.counters.clone(),
        run.target.pids.clone(),
    );
    let result = measure(run, config, &progress).await;
    progress.stop().await;
    result
}

async fn measure(run: &Run, config: &HistoryConfig, progress: &Progress) -> anyhow::Result<HistoryResult> {
    let target = &run.target;
    let seed_started = Instant::now();
    let reader = format!("{}-reader", run.prefix);
    let senders: Vec<String> = (0..config.senders).map(|i| format!("{}-s{i}", run.prefix)).collect();
    progress.set_phase("creating the group");
    let mut members = vec![reader.clone()];
    members.extend(senders.iter().cloned());
    let group = super::fanout::create_group(run, &members).await.context("creating the history group")?;

    // The reader stays online while the senders send (so that it has no
    // backlog to replay) and drains what it is sent.
    let path = target.ws_path(&reader, None)?;
    let index = senders.len();
    let mut ws =
        client::connect(target, index, client::source_ip(index, run.client.per_source_ip), &path, &run.client).await?;
    client::wait_caught_up(&mut ws).await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop_draining = run.cancel.child_token();
    let drained = run.tasks.spawn(drain(ws, received.clone(), stop_draining.clone()));

    progress.set_phase("seeding");
    let stop_senders = run.cancel.child_token();
    let next = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Vec<u64>>(config.senders.max(1));
    let users: Vec<(String, Option<String>)> = senders.iter().map(|s| (s.clone(), None)).collect();
    let ready = client::connect_all(target, &users, 0, &run.client, &run.counters, |i, ws| {
        let sender = Sender {
            to: group.clone(),
            next: next.clone(),
            total: config.messages as u64,
            window: config.window.clamp(1, SERVER_QUEUE_LIMIT),
            min_interval: Duration::from_secs_f64(1.0 / config.per_conn_rate.max(1e-3)),
            payload_bytes: config.payload_bytes,
            index: i,
            counters: run.counters.clone(),
        };
        run.tasks.spawn(sender.run(ws, done_tx.clone(), stop_senders.clone()));
    })
    .await;
    drop(done_tx);
    if ready < users.len() {
        bail!("history: only {ready} of {} senders connected", users.len());
    }
    let mut ids = Vec::with_capacity(config.messages);
    let deadline = Instant::now() + Duration::from_secs_f64(config.seed_timeout_secs);
    for _ in 0..ready {
        let left = deadline.saturating_duration_since(Instant::now());
        let part = tokio::time::timeout(left, done_rx.recv())
            .await
            .with_context(|| {
                format!(
                    "seeding took over {} s ({} of {} stored)",
                    config.seed_timeout_secs,
                    Counters::get(&run.counters.acked),
                    config.messages
                )
            })?
            .context("a sender stopped before its sends were answered")?;
        ids.extend(part);
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        bail!("history: no send was acknowledged");
    }
    // Let the last deliveries reach the reader, so that none competes with
    // the pages; then the senders hang up.
    let settle = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < ids.len() as u64 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_senders.cancel();
    stop_draining.cancel();
    let ws = drained.await.ok().flatten().context("the reader's socket closed while seeding")?;
    let seed_secs = seed_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut pager = Pager::new(ws, config.per_conn_rate);
    let mut rng = Rng::new(now_ns() ^ 0x9e37_79b9_7f4a_7c15);
    // Warm-up: one short walk of each kind, not measured.
    let mut warm = Book::default();
    let warm_config =
        HistoryConfig { pages: 3 * config.walk_pages.min(2), walk_pages: config.walk_pages.min(2), ..config.clone() };
    walks(&mut pager, &warm_config, &group, &ids, &mut rng, &mut warm, run).await?;

    progress.set_phase("paging");
    let mut book = Book::default();
    let window = Window::open(&target.pids);
    let started = Instant::now();
    walks(&mut pager, config, &group, &ids, &mut rng, &mut book, run).await?;
    let duration_secs = started.elapsed().as_secs_f64();
    let usage = window.close();
    pager.close().await;

    let all = book.all.summary();
    let busy_secs = book.busy_ns as f64 / 1e9;
    Ok(HistoryResult {
        target: target.label.clone(),
        gateways: target.addrs.len(),
        messages: ids.len(),
        senders: config.senders,
        seed_secs,
        seed_messages_per_sec: ids.len() as f64 / seed_secs.max(1e-9),
        page_size: config.page_size,
        walk_pages: config.walk_pages,
        pages: all.count,
        errors: book.errors,
        mismatched_pages: book.mismatched,
        newest_up: book.newest_up.summary(),
        random_up: book.random_up.summary(),
        random_down: book.random_down.summary(),
        ping: book.ping.summary(),
        pages_per_sec: if busy_secs > 0.0 { all.count as f64 / busy_secs } else { 0.0 },
        wall_pages_per_sec: all.count as f64 / duration_secs.max(1e-9),
        page_latency: all,
        duration_secs,
        usage,
    })
}

#[derive(Default)]
struct Book {
    all: Latency,
    newest_up: Latency,
    random_up: Latency,
    random_down: Latency,
    ping: Latency,
    busy_ns: u64,
    pages: usize,
    errors: u64,
    mismatched: u64,
}

/// Reads `config.pages` pages in walks of `walk_pages`, the kinds in turn.
async fn walks(
    pager: &mut Pager,
    config: &HistoryConfig,
    group: &str,
    ids: &[u64],
    rng: &mut Rng,
    book: &mut Book,
    run: &Run,
) -> anyhow::Result<()> {
    let mut walk_no = 0;
    while book.pages < config.pages {
        let walk = WALKS[walk_no % WALKS.len()];
        walk_no += 1;
        let (mut cursor, direction) = match walk {
            Walk::NewestUp => (None, v1::SearchDirection::Up),
            Walk::RandomUp => (Some(ids[rng.below(ids.len())]), v1::SearchDirection::Up),
            Walk::RandomDown => (Some(ids[rng.below(ids.len())]), v1::SearchDirection::Down),
        };
        for _ in 0..config.walk_pages {
            if book.pages >= config.pages {
                break;
            }
            let body = v1::client_frame::Body::GetHistoryMessages(v1::GetHistoryMessages {
                target_id: group.to_owned(),
                chat_type: v1::ChatType::Group as i32,
                page_size: config.page_size as u32,
                cursor: cursor.map(|c: u64| c.to_string()).unwrap_or_default(),
                search_direction: direction as i32,
            });
            let (ns, reply) = pager.call(body).await?;
            book.pages += 1;
            let page = match reply {
                v1::response::Result::History(page) => page,
                v1::response::Result::Error(error) => {
                    log_error(&run.counters, &error);
                    book.errors += 1;
                    break;
                }
                other => bail!("get_history_messages answered with {other:?}"),
            };
            book.all.record_ns(ns);
            book.busy_ns += ns;
            match walk {
                Walk::NewestUp => &book.newest_up,
                Walk::RandomUp => &book.random_up,
                Walk::RandomDown => &book.random_down,
            }
            .record_ns(ns);
            let (expected, more) = expected_page(ids, cursor, direction, config.page_size);
            let got: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
            if got != expected || page.cursor.is_empty() == more {
                if book.mismatched < 3 {
                    tracing::warn!(
                        ?cursor,
                        ?direction,
                        got = got.len(),
                        expected = expected.len(),
                        cursor_back = %page.cursor,
                        "a history page is not what was stored"
                    );
                }
                book.mismatched += 1;
            }
            if config.ping_every > 0 && book.pages.is_multiple_of(config.ping_every) {
                book.ping.record_ns(pager.ping().await?);
            }
            if page.cursor.is_empty() {
                break;
            }
            cursor = Some(page.cursor.parse().with_context(|| format!("history cursor {:?}", page.cursor))?);
        }
    }
    Ok(())
}

/// The ids a page should hold (in its order) and whether a next page
/// exists, from the sorted ids of everything stored.
fn expected_page(ids: &[u64], cursor: Option<u64>, direction: v1::SearchDirection, size: usize) -> (Vec<u64>, bool) {
    if direction == v1::SearchDirection::Down {
        let from = cursor.map_or(0, |c| ids.partition_point(|&x| x <= c));
        let to = (from + size).min(ids.len());
        (ids[from..to].to_vec(), to < ids.len())
    } else {
        let to = cursor.map_or(ids.len(), |c| ids.partition_point(|&x| x < c));
        let from = to.saturating_sub(size);
        (ids[from..to].iter().rev().copied().collect(), from > 0)
    }
}

/// Reads the reader's socket until told to stop, counting the messages it
/// is delivered; hands the socket back (`None` if it closed).
async fn drain(mut ws: Ws, received: Arc<AtomicU64>, stop: CancellationToken) -> Option<Ws> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return Some(ws),
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some(Incoming::Event { text: Some(_), .. }) = wire::read_server_frame(&bytes) {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// One sending member: takes message numbers until `total` are taken,
/// keeps at most `window` sends in flight at its pace, reports the ids it
/// was acknowledged with, then only reads (it receives every message of
/// the group) until it is stopped.
struct Sender {
    to: String,
    next: Arc<AtomicU64>,
    total: u64,
    window: usize,
    min_interval: Duration,
    payload_bytes: usize,
    index: usize,
    counters: Arc<Counters>,
}

impl Sender {
    async fn run(self, mut ws: Ws, done: tokio::sync::mpsc::Sender<Vec<u64>>, stop: CancellationToken) {
        let mut ids = Vec::new();
        let mut in_flight: Vec<u64> = Vec::with_capacity(self.window);
        let mut next_allowed = Instant::now();
        let mut claimed_all = false;
        let mut reported = false;
        let mut req_id = 0u64;
        loop {
            if claimed_all && in_flight.is_empty() && !reported {
                reported = true;
                let _ = done.send(std::mem::take(&mut ids)).await;
            }
            let may_send = !claimed_all && in_flight.len() < self.window;
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => self.on_frame(&bytes, &mut in_flight, &mut ids),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        Counters::add(&self.counters.dropped, 1);
                        break;
                    }
                    Some(Ok(_)) => {}
                },
                () = tokio::time::sleep_until(next_allowed.into()), if may_send => {
                    let n = self.next.fetch_add(1, Ordering::Relaxed);
                    if n >= self.total {
                        claimed_all = true;
                        continue;
                    }
                    next_allowed = Instant::now() + self.min_interval;
                    req_id += 1;
                    let body = super::conversations::send_body(
                        format!("h{n}"),
                        self.to.clone(),
                        true,
                        self.payload_bytes,
                        n as usize,
                    );
                    if ws.send(Message::Binary(wire::request_frame(req_id, body).into())).await.is_err() {
                        Counters::add(&self.counters.dropped, 1);
                        break;
                    }
                    in_flight.push(req_id);
                    Counters::add(&self.counters.sent, 1);
                }
            }
        }
        if !reported {
            // Stopped early (the run was cancelled or the socket closed):
            // what was acknowledged so far still counts.
            let _ = done.send(ids).await;
        }
        let _ = ws.close(None).await;
        tracing::trace!(sender = self.index, "history sender done");
    }

    fn on_frame(&self, bytes: &[u8], in_flight: &mut Vec<u64>, ids: &mut Vec<u64>) {
        match wire::read_server_frame(bytes) {
            Some(Incoming::Event { .. }) => {}
            Some(Incoming::Other(frame)) => {
                if let Some(v1::server_frame::Body::Response(response)) = frame.body
                    && let Some(pos) = in_flight.iter().position(|id| *id == response.req_id)
                {
                    in_flight.swap_remove(pos);
                    match response.result {
                        Some(v1::response::Result::Sent(sent)) => {
                            Counters::add(&self.counters.acked, 1);
                            ids.push(sent.server_msg_id);
                        }
                        Some(v1::response::Result::Error(error)) => log_error(&self.counters, &error),
                        _ => {}
                    }
                }
            }
            None => Counters::add(&self.counters.errors, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pages_follow_the_cursor_both_ways() {
        let ids: Vec<u64> = (1..=10).map(|i| i * 10).collect();
        assert_eq!(expected_page(&ids, None, v1::SearchDirection::Up, 3), (vec![100, 90, 80], true));
        assert_eq!(expected_page(&ids, Some(40), v1::SearchDirection::Up, 3), (vec![30, 20, 10], false));
        assert_eq!(expected_page(&ids, Some(50), v1::SearchDirection::Up, 3), (vec![40, 30, 20], true));
        assert_eq!(expected_page(&ids, Some(10), v1::SearchDirection::Up, 3), (vec![], false));
        assert_eq!(expected_page(&ids, Some(50), v1::SearchDirection::Down, 3), (vec![60, 70, 80], true));
        assert_eq!(expected_page(&ids, Some(70), v1::SearchDirection::Down, 3), (vec![80, 90, 100], false));
        assert_eq!(expected_page(&ids, None, v1::SearchDirection::Down, 3), (vec![10, 20, 30], true));
    }
}
