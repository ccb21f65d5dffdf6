//! Presence scenarios (issue "presence service"):
//! - `fanout`: one user's presence change fanned out to `subscribers` online
//!   subscribers over real WebSockets; time from the publish to the last
//!   subscriber's `onPresenceStatusChange`, per round.
//! - `sweeper`: the expiry sweeper's cost for many stored subscriptions,
//!   in-process over the embedded store: time to load the schedule, and time
//!   and CPU per removed subscription when they all expire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use natter_proto::v1;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::scenarios::Run;
use crate::stats::{Latency, LatencySummary, now_ns};
use crate::wire::{self, Incoming};

#[derive(Debug, Clone, Serialize)]
pub struct PresenceFanoutConfig {
    pub subscribers: usize,
    pub rounds: usize,
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceFanoutResult {
    pub subscribers: usize,
    pub rounds: usize,
    /// Publish sent → last subscriber received, per round (ms).
    pub to_last: LatencySummary,
    /// Deliveries per second over all rounds (sum of subscribers reached /
    /// sum of round times).
    pub deliveries_per_sec: f64,
    pub complete_rounds: usize,
}

struct Tracker {
    /// Round whose publish is in flight, and when it was sent.
    round: AtomicU64,
    sent_ns: AtomicU64,
    received: AtomicU64,
    last_ns: AtomicU64,
}

pub async fn fanout(run: &Run, config: &PresenceFanoutConfig) -> anyhow::Result<PresenceFanoutResult> {
    let target_user = format!("{}-target", run.prefix);
    let users: Vec<(String, Option<String>)> =
        (0..config.subscribers).map(|i| (format!("{}-sub{i}", run.prefix), None)).collect();
    let tracker = Arc::new(Tracker {
        round: AtomicU64::new(u64::MAX),
        sent_ns: AtomicU64::new(0),
        received: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
    });
    let (subscribed_tx, mut subscribed_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1024);
    let ready = client::connect_all(&run.target, &users, 0, &run.client, &run.counters, |_, ws| {
        let tracker = tracker.clone();
        let target_user = target_user.clone();
        let subscribed = subscribed_tx.clone();
        let cancel = run.cancel.clone();
        run.tasks.spawn(async move {
            let result = subscriber(ws, &target_user, &tracker, &subscribed, cancel).await;
            if let Err(e) = result {
                tracing::debug!(error = format!("{e:#}"), "presence subscriber ended");
            }
        });
    })
    .await;
    drop(subscribed_tx);
    if ready < users.len() {
        run.finish().await;
        bail!("presence fan-out: only {ready} of {} subscribers connected", users.len());
    }
    for _ in 0..ready {
        subscribed_rx.recv().await.context("a subscriber stopped before subscribing")??;
    }

    let path = run.target.ws_path(&target_user, None)?;
    let mut publisher =
        client::connect(&run.target, ready + 1, client::source_ip(ready + 1, 1), &path, &run.client).await?;
    client::wait_caught_up(&mut publisher).await?;
    // The publisher's own online change reached everyone; let it settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let to_last = Latency::new();
    let (mut delivered, mut busy_ns, mut complete) = (0u64, 0u64, 0usize);
    for round in 0..config.rounds as u64 {
        tracker.received.store(0, Ordering::SeqCst);
        tracker.round.store(round, Ordering::SeqCst);
        let sent = now_ns();
        tracker.sent_ns.store(sent, Ordering::SeqCst);
        let body =
            v1::client_frame::Body::PublishPresence(v1::PublishPresence { description: format!("round-{round}") });
        publisher.send(Message::Binary(wire::request_frame(round + 1, body).into())).await?;
        let deadline = Instant::now() + Duration::from_secs_f64(config.timeout_secs);
        while tracker.received.load(Ordering::SeqCst) < ready as u64 && Instant::now() < deadline {
            // Drain the publisher's socket (its response and own change).
            let _ = tokio::time::timeout(Duration::from_millis(2), publisher.next()).await;
        }
        let got = tracker.received.load(Ordering::SeqCst);
        delivered += got;
        let span = tracker.last_ns.load(Ordering::SeqCst).saturating_sub(sent);
        busy_ns += span;
        if got >= ready as u64 {
            complete += 1;
            to_last.record_ns(span);
        }
    }
    run.finish().await;
    Ok(PresenceFanoutResult {
        subscribers: ready,
        rounds: config.rounds,
        to_last: to_last.summary(),
        deliveries_per_sec: if busy_ns == 0 { 0.0 } else { delivered as f64 / (busy_ns as f64 / 1e9) },
        complete_rounds: complete,
    })
}

async fn subscriber(
    mut ws: Ws,
    target: &str,
    tracker: &Tracker,
    subscribed: &tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let body = v1::client_frame::Body::SubscribePresence(v1::SubscribePresence {
        usernames: vec![target.to_owned()],
        expiry: 3600,
    });
    let outcome = client::request(&mut ws, 1, body).await.map(|_| ());
    let failed = outcome.is_err();
    let _ = subscribed.send(outcome).await;
    if failed {
        return Ok(());
    }
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            m = ws.next() => m,
        };
        let bytes = match message {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
            // The server's pings (tungstenite answers them as it reads).
            Some(Ok(_)) => continue,
        };
        if let Some(Incoming::Other(frame)) = wire::read_server_frame(&bytes)
            && let Some(v1::server_frame::Body::OnPresenceStatusChange(p)) = frame.body
            && p.user_id == target
        {
            let round = tracker.round.load(Ordering::SeqCst);
            if p.description == format!("round-{round}") {
                let now = now_ns();
                tracker.last_ns.fetch_max(now, Ordering::SeqCst);
                tracker.received.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SweeperResult {
    pub subscriptions: usize,
    /// Writing them (not part of the sweeper's cost).
    pub write_secs: f64,
    /// Rebuilding the schedule from the store at start.
    pub load_secs: f64,
    /// From the common expiry until every one is removed.
    pub sweep_secs: f64,
    pub removed: u64,
    /// Process CPU per removed subscription during the sweep.
    pub cpu_us_per_removed: f64,
    /// Process RSS growth for the schedule.
    pub schedule_rss_bytes_per_entry: f64,
}

/// `subscriptions` subscriptions (1000 targets per subscriber) that all
/// expire at the same moment, swept by the real sweeper.
pub async fn sweeper(subscriptions: usize) -> anyhow::Result<SweeperResult> {
    use natter_presence::sweeper::Sweeper;
    use natter_runtime::Clock;
    use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
    use natter_types::UserId;

    let dir = tempfile::tempdir()?;
    let storage = natter_runtime::Tasks::new();
    let stores =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stores = stores.stores();
    let per_subscriber = 1000.min(subscriptions.max(1));
    let subscribers = subscriptions.div_ceil(per_subscriber);
    let clock = Clock::new();
    let expires_at = clock.now_ms() + 60_000;
    let targets: Arc<Vec<UserId>> =
        Arc::new((0..per_subscriber).map(|t| UserId::parse(&format!("t{t}"), "t")).collect::<Result<_, _>>()?);

    let started = Instant::now();
    let writes = futures::stream::iter(0..subscribers).map(|s| {
        let store = stores.presence.clone();
        let targets = targets.clone();
        async move {
            let subscriber = UserId::parse(&format!("s{s}"), "s")?;
            for chunk in targets.chunks(100) {
                store
                    .subscribe(&subscriber, chunk, expires_at, usize::MAX, clock.now_ms())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        }
    });
    let results: Vec<anyhow::Result<()>> = writes.buffer_unordered(32).collect().await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    let write_secs = started.elapsed().as_secs_f64();

    let rss_before = crate::procfs::sample(None)?.rss_bytes;
    // The sweeper reads a clock a minute ahead: every subscription is due.
    let sweeper = Sweeper::new(stores.presence.clone(), clock.shifted(61_000));
    let started = Instant::now();
    let loaded = sweeper.load().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let load_secs = started.elapsed().as_secs_f64();
    let rss_after = crate::procfs::sample(None)?.rss_bytes;

    let cpu_before = crate::procfs::sample(None)?.cpu_ticks;
    let started = Instant::now();
    let removed = sweeper.sweep_due().await as u64;
    let sweep_secs = started.elapsed().as_secs_f64();
    // Clock ticks are 1/100 s.
    let cpu = crate::procfs::sample(None)?.cpu_ticks.saturating_sub(cpu_before) as f64 / 100.0;
    Ok(SweeperResult {
        subscriptions: loaded,
        write_secs,
        load_secs,
        sweep_secs,
        removed,
        cpu_us_per_removed: if removed == 0 { 0.0 } else { cpu * 1e6 / removed as f64 },
        schedule_rss_bytes_per_entry: rss_after.saturating_sub(rss_before) as f64 / loaded.max(1) as f64,
    })
}
