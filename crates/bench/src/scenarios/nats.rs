//! The raw NATS baseline for the distributed mode: group fan-out through
//! core NATS publish/subscribe with nothing else — no WebSockets, no store,
//! no per-user log. It is the ceiling of the bus a distributed Natter puts
//! between its message role and its gateways, measured on the same machine,
//! with the same groups, message counts, pace and flow control as the
//! WebSocket fan-out (`scenarios::fanout`) and the same tracker, so that the
//! rows compare.
//!
//! A group message travels the way the distributed mode moves it: the
//! publisher (one client, like one message-role process) publishes it once
//! per member on `bench.user.<member>`; each member's subscription counts its
//! deliveries. The payload is the `BusMessage` live event Natter publishes,
//! at the same text size, encoded once per message (the message role encodes
//! one per recipient, with its own seq: that cost is Natter's, not the bus's).
//! Three layouts of the same traffic:
//!
//! - [`Layout::PerMember`]: one connection per member, subscribed to its own
//!   subject (every recipient is a NATS client, as every member is a socket
//!   in the WebSocket rows);
//! - [`Layout::Gateways`]: the same subjects and publishes, with the
//!   subscriptions held by a few connections, as gateways hold one
//!   subscription per online user (what the distributed mode really does);
//! - [`Layout::Shared`]: one connection per member, all subscribed to one
//!   subject of the group, one publish per message: NATS's own fan-out, for
//!   reference (Natter does not use it: events carry per-user sequence numbers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use natter_proto::v1;

use super::fanout::{FanoutConfig, FanoutResult, PHASE, Tracker, validate};
use super::{Run, Window};
use crate::progress::Progress;
use crate::stats::{self, Counters};
use crate::target::ServerKind;
use crate::wire::{self, Payload};

/// How the members' subscriptions are laid out (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    PerMember,
    /// This many connections (round robin over the members).
    Gateways(usize),
    Shared,
}

impl Layout {
    /// The row's name in reports.
    pub fn label(self) -> String {
        match self {
            Layout::PerMember => "nats-per-member".into(),
            Layout::Gateways(n) => format!("nats-{n}-gateways"),
            Layout::Shared => "nats-shared".into(),
        }
    }
}

/// Read buffer of a per-member connection: the WebSocket load clients read
/// with 4 KiB, so a recipient costs the generator about the same either way.
/// Gateway-like connections keep async-nats's default (64 KiB), as Natter's
/// gateways do.
const MEMBER_READ_BUFFER: u16 = 4096;

pub async fn run(run: &Run, config: &FanoutConfig, layout: Layout) -> anyhow::Result<FanoutResult> {
    validate(config)?;
    let target = &run.target;
    if target.kind != ServerKind::Nats {
        bail!("nats fan-out: {} is not a nats-server", target.label);
    }
    if layout == Layout::Gateways(0) {
        bail!("nats fan-out: the gateway layout needs at least one connection");
    }
    let url = format!("nats://{}", target.addr_for(0)?);
    let progress = Progress::start(
        format!("fan-out {} x{} {}", config.group_size, config.groups, target.label),
        run.counters.clone(),
        target.pids.clone(),
    );
    let result = measure(run, config, layout, &url, &progress).await;
    // Also after a failure: no task outlives the scenario.
    run.finish().await;
    progress.stop().await;
    result
}

async fn measure(
    run: &Run,
    config: &FanoutConfig,
    layout: Layout,
    url: &str,
    progress: &Progress,
) -> anyhow::Result<FanoutResult> {
    let members = config.groups * config.group_size;
    let member_subject = |g: usize, m: usize| format!("bench.user.{}-g{g}-{m}", run.prefix);
    let group_subject = |g: usize| format!("bench.group.{}-g{g}", run.prefix);

    progress.set_phase("connecting");
    let connections = match layout {
        Layout::PerMember | Layout::Shared => members,
        Layout::Gateways(n) => n,
    };
    let read_buffer = if matches!(layout, Layout::Gateways(_)) { None } else { Some(MEMBER_READ_BUFFER) };
    let clients = connect_many(url, connections, read_buffer, run).await?;

    progress.set_phase("subscribing");
    let tracker = Tracker::new(config);
    for i in 0..members {
        let (g, m) = (i / config.group_size, i % config.group_size);
        let subject = if layout == Layout::Shared { group_subject(g) } else { member_subject(g, m) };
        let client = clients.get(i % clients.len()).context("no subscriber connection")?;
        let subscriber = client.subscribe(subject).await.context("subscribing")?;
        run.tasks.spawn(receive(subscriber, tracker.clone(), run.counters.clone(), run.cancel.clone()));
    }
    // A flush is a round trip: once it returns, the server has every
    // subscription sent before it, so no publish below can miss one.
    let flushes = clients.iter().map(async_nats::Client::flush);
    for flushed in futures::future::join_all(flushes).await {
        flushed.context("flushing the subscriptions")?;
    }

    // One publishing client, as one message-role process has.
    let publisher = connect(url, None).await?;
    let subjects: Arc<Vec<Vec<async_nats::Subject>>> = Arc::new(
        (0..config.groups)
            .map(|g| match layout {
                Layout::Shared => vec![group_subject(g).into()],
                _ => (0..config.group_size).map(|m| member_subject(g, m).into()).collect(),
            })
            .collect(),
    );

    progress.set_phase("publishing");
    let senders = config.senders_per_group.min(config.group_size);
    let window = Window::open(&run.target.pids);
    for g in 0..config.groups {
        for s in 0..senders {
            let sender = Sender {
                group: g,
                index: (g * config.group_size + s) as u32,
                payload_bytes: config.payload_bytes,
                min_interval: Duration::from_secs_f64(1.0 / config.per_conn_rate),
                publisher: publisher.clone(),
                subjects: subjects.clone(),
                tracker: tracker.clone(),
                global: run.counters.clone(),
                prefix: run.prefix.clone(),
            };
            run.tasks.spawn(sender.run(run.cancel.clone()));
        }
    }
    let complete = tracker.wait_complete(config.timeout_secs).await;
    let usage = window.close();
    // The tasks end before the connections close, so that no subscription
    // sees its connection go and counts as dropped.
    run.finish().await;
    let published = Counters::get(&tracker.counters.sent);
    Ok(tracker.result(&run.target.label, senders * config.groups, published, usage, complete))
}

async fn connect(url: &str, read_buffer: Option<u16>) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new().name("natter-bench");
    if let Some(size) = read_buffer {
        options = options.read_buffer_capacity(size);
    }
    options.connect(url).await.with_context(|| format!("connecting to nats-server at {url}"))
}

/// Opens `n` connections, as many at a time as WebSocket handshakes.
async fn connect_many(
    url: &str,
    n: usize,
    read_buffer: Option<u16>,
    run: &Run,
) -> anyhow::Result<Vec<async_nats::Client>> {
    let attempts = (0..n).map(|_| async {
        let client = connect(url, read_buffer).await;
        if client.is_ok() {
            Counters::add(&run.counters.connected, 1);
            Counters::add(&run.counters.ready, 1);
        }
        client
    });
    futures::stream::iter(attempts)
        .buffer_unordered(run.client.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One subscription: counts each benchmark message it receives.
async fn receive(
    mut subscriber: async_nats::Subscriber,
    tracker: Arc<Tracker>,
    global: Arc<Counters>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = subscriber.next() => match message {
                Some(message) => match wire::read_bus_text(&message.payload) {
                    Some(Some(text)) => {
                        if let Some(p) = wire::parse_payload(text) {
                            tracker.on_delivery(&p, &global);
                        }
                    }
                    Some(None) => {}
                    None => Counters::add(&global.errors, 1),
                },
                None => {
                    Counters::add(&global.dropped, 1);
                    break;
                }
            },
        }
    }
}

/// One sending member: like the WebSocket senders, it takes one of its
/// group's permits (returned by the message's last recipient) and keeps
/// the same pace; then it publishes as the message role would.
struct Sender {
    group: usize,
    index: u32,
    payload_bytes: usize,
    min_interval: Duration,
    publisher: async_nats::Client,
    subjects: Arc<Vec<Vec<async_nats::Subject>>>,
    tracker: Arc<Tracker>,
    global: Arc<Counters>,
    prefix: String,
}

impl Sender {
    async fn run(self, cancel: tokio_util::sync::CancellationToken) {
        let Some(subjects) = self.subjects.get(self.group) else { return };
        let mut next_allowed = Instant::now();
        loop {
            let permit = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                permit = self.tracker.acquire(self.group, next_allowed) => permit,
            };
            let Some(permit) = permit else { break };
            let Some(msg) = self.tracker.claim(self.group, permit) else { break };
            next_allowed = Instant::now() + self.min_interval;
            let sent_ns = stats::now_ns();
            self.tracker.sending(sent_ns);
            let payload = self.payload(msg, sent_ns);
            Counters::add(&self.global.sent, 1);
            let mut failed = None;
            for subject in subjects {
                // Awaited one by one, as the message role publishes.
                if let Err(e) = self.publisher.publish(subject.clone(), payload.clone()).await {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => {
                    Counters::add(&self.tracker.counters.sent, 1);
                    Counters::add(&self.global.acked, 1);
                }
                Some(e) => {
                    if Counters::get(&self.global.errors) < 5 {
                        tracing::warn!(error = %e, "nats publish failed");
                    }
                    Counters::add(&self.global.errors, 1);
                    Counters::add(&self.tracker.counters.errors, 1);
                    self.tracker.abandon(msg);
                }
            }
        }
    }

    /// The live event as the message role would publish it, encoded once.
    fn payload(&self, msg: u64, sent_ns: u64) -> Bytes {
        let text = wire::payload_text(&Payload { phase: PHASE, sender: self.index, msg, sent_ns }, self.payload_bytes);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let message = v1::Message {
            // A snowflake-sized id, so the varint is as long as Natter's.
            id: ((now_ms as u64) << 22) | msg,
            client_msg_id: format!("m{msg}"),
            from: format!("{}-g{}-{}", self.prefix, self.group, self.index),
            to: format!("{}-g{}", self.prefix, self.group),
            chat_type: v1::ChatType::Group as i32,
            timestamp: now_ms,
            body: Some(v1::message::Body::Text(v1::TextBody { text })),
            ext: Default::default(),
            from_system: false,
            allow_group_ack: false,
            position: 0,
        };
        Bytes::from(wire::bus_live_message(msg + 1, msg, message))
    }
}
