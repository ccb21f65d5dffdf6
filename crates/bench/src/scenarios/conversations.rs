//! The conversation list (C1): one user with many conversations, most of
//! them 1:1 (every peer sent the user a message) and a few groups; the
//! user's client then pages the whole list, first page to last, many times.
//! Latency is client-side: the request written to the WebSocket → its
//! response read off it, one request at a time, paced under the server's
//! per-connection limit (`Pager`). A `ping` between pages on the same socket
//! gives the floor under any request, so what the list itself costs is the
//! difference.
//!
//! Every pass is checked: each conversation exactly once, the last page's
//! cursor empty. A server whose `conversations.max_conversations` is below
//! what was seeded lists fewer (the bench's own server is started with
//! room for them all; a given one is taken as it is, and the row says so).

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, bail};
use natter_proto::v1;
use serde::Serialize;

use super::{Pager, Run, Usage, Window, log_error};
use crate::client;
use crate::progress::Progress;
use crate::stats::{Counters, Latency, LatencySummary};
use crate::target::ServerKind;
use crate::wire::{self, Payload};

#[derive(Debug, Clone, Serialize)]
pub struct ConversationsConfig {
    /// 1:1 conversations: distinct peers that each send the user a message.
    pub peers: usize,
    /// Groups the user is a member of (each with one message from the user).
    pub groups: usize,
    /// Peers in each group besides the user.
    pub group_members: usize,
    /// Conversations per page (1..=50).
    pub page_size: usize,
    /// Times the whole list is paged.
    pub passes: usize,
    /// A `ping` after every this many pages (0: none).
    pub ping_every: usize,
    /// Highest request rate of one connection (below the server's 50/s).
    pub per_conn_rate: f64,
    pub payload_bytes: usize,
}

impl ConversationsConfig {
    /// Conversations on the user's list once seeded.
    pub fn expected(&self) -> usize {
        self.peers + self.groups
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationsResult {
    pub target: String,
    /// Gateways the clients were spread over (more than one: distributed).
    pub gateways: usize,
    /// Conversations seeded (1:1 + groups) and how many a full pass listed.
    pub seeded: usize,
    pub listed: usize,
    pub groups: usize,
    pub page_size: usize,
    /// Full passes done (first page to the one with an empty cursor).
    pub passes: usize,
    pub pages: u64,
    pub errors: u64,
    /// Passes that did not list every seeded conversation exactly once.
    pub mismatched_passes: usize,
    /// Setup: connecting the peers, their sends, the groups (not measured).
    pub seed_secs: f64,
    /// Every page: request written → response read, client-side.
    pub page_latency: LatencySummary,
    pub first_page: LatencySummary,
    pub last_page: LatencySummary,
    /// `ping` round trips on the same socket between pages.
    pub ping: LatencySummary,
    /// Pages per second of time spent waiting for them: what one client
    /// paging back to back would get without the per-connection limit.
    pub pages_per_sec: f64,
    /// Pages per second over the wall time (paced by the client).
    pub wall_pages_per_sec: f64,
    pub duration_secs: f64,
    pub usage: Usage,
}

pub async fn run(run: &Run, config: &ConversationsConfig) -> anyhow::Result<ConversationsResult> {
    if run.target.kind != ServerKind::Natter {
        bail!("conversations: {} is not a Natter server", run.target.label);
    }
    if config.peers == 0 || !(1..=50).contains(&config.page_size) || config.passes == 0 {
        bail!("conversations: need at least one peer, a page size of 1 to 50 and at least one pass");
    }
    let target = &run.target;
    let progress = Progress::start(
        format!("conversations {} {}", config.expected(), target.label),
        run.counters.clone(),
        target.pids.clone(),
    );
    let result = measure(run, config, &progress).await;
    progress.stop().await;
    result
}

async fn measure(run: &Run, config: &ConversationsConfig, progress: &Progress) -> anyhow::Result<ConversationsResult> {
    let target = &run.target;
    let me = format!("{}-me", run.prefix);
    let peers: Vec<String> = (0..config.peers).map(|i| format!("{}-p{i}", run.prefix)).collect();
    let seed_started = Instant::now();

    // Groups first (their creation is the oldest activity on the list).
    progress.set_phase("creating groups");
    let mut groups = Vec::with_capacity(config.groups);
    for g in 0..config.groups {
        let mut members = vec![me.clone()];
        members.extend((0..config.group_members).map(|j| peers[(g * config.group_members + j) % peers.len()].clone()));
        members.dedup();
        groups.push(super::fanout::create_group(run, &members).await.with_context(|| format!("creating group {g}"))?);
    }

    // Every peer sends the user one message, then hangs up.
    progress.set_phase("peers sending");
    let users: Vec<(String, Option<String>)> = peers.iter().map(|p| (p.clone(), None)).collect();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1024);
    let ready = client::connect_all(target, &users, 0, &run.client, &run.counters, |i, mut ws| {
        let done = done_tx.clone();
        let counters = run.counters.clone();
        let body = send_body(format!("c{i}"), me.clone(), false, config.payload_bytes, i);
        run.tasks.spawn(async move {
            Counters::add(&counters.sent, 1);
            let outcome = match client::request(&mut ws, 1, body).await {
                Ok(v1::response::Result::Sent(_)) => {
                    Counters::add(&counters.acked, 1);
                    Ok(())
                }
                Ok(other) => Err(anyhow::anyhow!("send answered with {other:?}")),
                Err(e) => Err(e),
            };
            let _ = ws.close(None).await;
            let _ = done.send(outcome).await;
        });
    })
    .await;
    drop(done_tx);
    if ready < users.len() {
        bail!("conversations: only {ready} of {} peers connected", users.len());
    }
    for _ in 0..ready {
        done_rx.recv().await.context("a peer stopped before its send was answered")??;
    }

    // The user's client: one message into each group, then the list.
    progress.set_phase("user connecting");
    let path = target.ws_path(&me, None)?;
    let index = peers.len();
    let mut ws =
        client::connect(target, index, client::source_ip(index, run.client.per_source_ip), &path, &run.client).await?;
    client::wait_caught_up(&mut ws).await?;
    for (g, group) in groups.iter().enumerate() {
        let body = send_body(format!("g{g}"), group.clone(), true, config.payload_bytes, g);
        match client::request(&mut ws, 1 + g as u64, body).await? {
            v1::response::Result::Sent(_) => {}
            other => bail!("the group message was answered with {other:?}"),
        }
    }
    let seed_secs = seed_started.elapsed().as_secs_f64();
    let mut pager = Pager::new(ws, config.per_conn_rate);
    // Warm-up: one pass, not measured (first reads of the user's state).
    page_once(&mut pager, config, None).await?;

    progress.set_phase("paging");
    let mut stats = PassStats::default();
    let window = Window::open(&target.pids);
    let started = Instant::now();
    let (mut passes, mut mismatched, mut listed, mut errors) = (0, 0, 0, 0u64);
    for _ in 0..config.passes {
        match page_once(&mut pager, config, Some(&mut stats)).await? {
            Pass::Done { seen, ok } => {
                passes += 1;
                listed = seen;
                if !ok {
                    mismatched += 1;
                }
            }
            Pass::Failed(error) => {
                log_error(&run.counters, &error);
                errors += 1;
            }
        }
    }
    let duration_secs = started.elapsed().as_secs_f64();
    let usage = window.close();
    pager.close().await;

    let pages = stats.pages.summary();
    let busy_secs = stats.busy_ns as f64 / 1e9;
    Ok(ConversationsResult {
        target: target.label.clone(),
        gateways: target.addrs.len(),
        seeded: config.expected(),
        listed,
        groups: config.groups,
        page_size: config.page_size,
        passes,
        pages: pages.count,
        errors,
        mismatched_passes: mismatched,
        seed_secs,
        first_page: stats.first.summary(),
        last_page: stats.last.summary(),
        ping: stats.ping.summary(),
        pages_per_sec: if busy_secs > 0.0 { pages.count as f64 / busy_secs } else { 0.0 },
        wall_pages_per_sec: pages.count as f64 / duration_secs.max(1e-9),
        page_latency: pages,
        duration_secs,
        usage,
    })
}

#[derive(Default)]
struct PassStats {
    pages: Latency,
    first: Latency,
    last: Latency,
    ping: Latency,
    busy_ns: u64,
    since_ping: usize,
}

enum Pass {
    /// Conversations seen, and whether each seeded one came exactly once.
    Done {
        seen: usize,
        ok: bool,
    },
    Failed(v1::Error),
}

/// Pages the whole list once; records into `stats` unless it is a warm-up.
async fn page_once(
    pager: &mut Pager,
    config: &ConversationsConfig,
    mut stats: Option<&mut PassStats>,
) -> anyhow::Result<Pass> {
    let mut cursor = String::new();
    let mut seen = HashSet::new();
    let mut duplicates = false;
    // A cursor that never ends would loop forever: stop well past the end.
    let most = config.expected().div_ceil(config.page_size) * 2 + 10;
    for page_no in 0..most {
        let body = v1::client_frame::Body::GetServerConversations(v1::GetServerConversations {
            page_size: config.page_size as u32,
            cursor: std::mem::take(&mut cursor),
        });
        let (ns, reply) = pager.call(body).await?;
        let page = match reply {
            v1::response::Result::Conversations(page) => page,
            v1::response::Result::Error(error) => return Ok(Pass::Failed(error)),
            other => bail!("get_server_conversations answered with {other:?}"),
        };
        for item in &page.conversations {
            duplicates |= !seen.insert((item.conversation_id.clone(), item.conversation_type));
        }
        let last = page.cursor.is_empty();
        if let Some(stats) = stats.as_deref_mut() {
            stats.pages.record_ns(ns);
            stats.busy_ns += ns;
            if page_no == 0 {
                stats.first.record_ns(ns);
            }
            if last {
                stats.last.record_ns(ns);
            }
            stats.since_ping += 1;
            if config.ping_every > 0 && stats.since_ping >= config.ping_every {
                stats.since_ping = 0;
                stats.ping.record_ns(pager.ping().await?);
            }
        }
        if last {
            let ok = !duplicates && seen.len() == config.expected();
            return Ok(Pass::Done { seen: seen.len(), ok });
        }
        cursor = page.cursor;
    }
    Ok(Pass::Done { seen: seen.len(), ok: false })
}

/// A text message of the benchmark's size.
pub(crate) fn send_body(
    client_msg_id: String,
    to: String,
    group: bool,
    payload_bytes: usize,
    n: usize,
) -> v1::client_frame::Body {
    let text = wire::payload_text(&Payload { phase: 0, sender: 0, msg: n as u64, sent_ns: 0 }, payload_bytes);
    let chat_type = if group { v1::ChatType::Group } else { v1::ChatType::Single };
    v1::client_frame::Body::Send(v1::SendMessage {
        client_msg_id,
        to,
        chat_type: chat_type as i32,
        body: Some(v1::send_message::Body::Text(v1::TextBody { text })),
        ext: Default::default(),
        msg_config: None,
    })
}
