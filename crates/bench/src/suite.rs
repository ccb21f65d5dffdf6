//! The suites: which scenarios run, at what size, against which servers, and
//! the targets the results are checked against. Natter and the baselines
//! (bare WebSocket servers, raw NATS) run in the same invocation with the
//! same client code and flow control, so results can be read as ratios that
//! hold on a noisy machine.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::bare::BareOptions;
use crate::client::ClientOptions;
use crate::nats_server::{NatsInfo, NatsServer, NatsSource};
use crate::procfs::{self, Machine};
use crate::report::thousands;
use crate::scenarios::conversations::{ConversationsConfig, ConversationsResult};
use crate::scenarios::direct::{DirectConfig, DirectResult, P99_TARGET_LOAD};
use crate::scenarios::fanout::{FanoutConfig, FanoutResult};
use crate::scenarios::history::{HistoryConfig, HistoryResult};
use crate::scenarios::idle::{IdleConfig, IdleResult};
use crate::scenarios::nats::Layout;
use crate::scenarios::presence::{PresenceFanoutConfig, PresenceFanoutResult, SweeperResult};
use crate::scenarios::receipts::{ReceiptsConfig, ReceiptsResult};
use crate::scenarios::{Run, conversations, direct, fanout, history, idle, nats, presence, receipts};
use crate::target::{Spawned, Target};

#[derive(Debug, Clone, Serialize)]
pub struct SuiteConfig {
    pub name: String,
    pub idle: Option<IdleConfig>,
    pub direct: Option<DirectConfig>,
    pub fanout: Vec<FanoutConfig>,
    /// One presence change fanned out to many subscribers.
    pub presence: Option<PresenceFanoutConfig>,
    /// Subscriptions for the sweeper-cost run (in-process).
    pub sweeper_subscriptions: Option<usize>,
    /// One user's conversation list paged (C1).
    pub conversations: Option<ConversationsConfig>,
    /// One conversation's history paged (C5).
    pub history: Option<HistoryConfig>,
    /// Every member of a big group read-acks every message of its sender
    /// (R5/R6).
    pub receipts: Option<ReceiptsConfig>,
    /// Run the bare baselines too (fan-out, and 1:1 saturation). The NATS
    /// baseline runs with every fan-out unless its source is `Skip`.
    pub baselines: bool,
    /// Connections that hold the members' subscriptions in the NATS
    /// baseline's gateway layout (`make cluster` runs two gateways).
    pub nats_gateways: usize,
    #[serde(skip)]
    pub client: ClientOptions,
}

impl SuiteConfig {
    /// The standard suite, sized for a 2-core machine with the generator on
    /// the same box: a few minutes in all. Each fan-out run lasts several
    /// seconds (4 million deliveries in the 1000-member one), so that one
    /// disk stall of a few hundred milliseconds does not decide its rate.
    pub fn standard() -> Self {
        Self {
            name: "standard".into(),
            idle: Some(IdleConfig { connections: 100_000, hold_secs: 10.0 }),
            direct: Some(DirectConfig {
                users: 2000,
                loads: vec![2_500.0, 5_000.0, 10_000.0, 20_000.0],
                step_secs: 8.0,
                target_step_secs: 30.0,
                warmup_load: 2_000.0,
                warmup_secs: 3.0,
                saturation_secs: 10.0,
                window: 8,
                per_conn_rate: 45.0,
                payload_bytes: 100,
                drain_secs: 10.0,
            }),
            fanout: vec![
                FanoutConfig {
                    group_size: 100,
                    groups: 10,
                    senders_per_group: 20,
                    messages_per_group: 2_000,
                    window_per_group: 16,
                    per_conn_rate: 45.0,
                    payload_bytes: 100,
                    timeout_secs: 60.0,
                },
                FanoutConfig {
                    group_size: 1000,
                    groups: 1,
                    senders_per_group: 32,
                    messages_per_group: 4_000,
                    window_per_group: 32,
                    per_conn_rate: 45.0,
                    payload_bytes: 100,
                    timeout_secs: 60.0,
                },
            ],
            presence: Some(PresenceFanoutConfig { subscribers: 3000, rounds: 20, timeout_secs: 30.0 }),
            sweeper_subscriptions: Some(1_000_000),
            conversations: Some(ConversationsConfig {
                peers: 500,
                groups: 5,
                group_members: 9,
                page_size: 20,
                passes: 50,
                ping_every: 4,
                per_conn_rate: 45.0,
                payload_bytes: 100,
            }),
            history: Some(HistoryConfig {
                messages: 100_000,
                senders: 64,
                window: 8,
                page_size: 50,
                pages: 1200,
                walk_pages: 10,
                ping_every: 4,
                per_conn_rate: 45.0,
                payload_bytes: 100,
                seed_timeout_secs: 900.0,
            }),
            // 200,000 receipts: 2 s at the target's rate; bounded by the
            // timeout if the server is far below it.
            receipts: Some(ReceiptsConfig {
                members: 1000,
                messages: 200,
                window: 8,
                rate: 0.0,
                payload_bytes: 100,
                timeout_secs: 300.0,
            }),
            baselines: true,
            nats_gateways: 2,
            client: ClientOptions::default(),
        }
    }

    /// A tiny run that exercises every scenario and baseline in seconds
    /// (`make test` runs it so the tool never rots).
    pub fn smoke() -> Self {
        Self {
            name: "smoke".into(),
            idle: Some(IdleConfig { connections: 20, hold_secs: 0.2 }),
            direct: Some(DirectConfig {
                users: 10,
                loads: vec![100.0],
                step_secs: 1.0,
                target_step_secs: 0.0,
                warmup_load: 50.0,
                warmup_secs: 0.3,
                saturation_secs: 1.0,
                window: 4,
                per_conn_rate: 45.0,
                payload_bytes: 100,
                drain_secs: 5.0,
            }),
            fanout: vec![FanoutConfig {
                group_size: 5,
                groups: 2,
                senders_per_group: 2,
                messages_per_group: 10,
                window_per_group: 4,
                per_conn_rate: 45.0,
                payload_bytes: 100,
                timeout_secs: 20.0,
            }],
            presence: Some(PresenceFanoutConfig { subscribers: 5, rounds: 2, timeout_secs: 20.0 }),
            sweeper_subscriptions: Some(2_000),
            conversations: Some(ConversationsConfig {
                peers: 12,
                groups: 2,
                group_members: 3,
                page_size: 5,
                passes: 3,
                ping_every: 2,
                per_conn_rate: 45.0,
                payload_bytes: 100,
            }),
            history: Some(HistoryConfig {
                messages: 240,
                senders: 4,
                window: 4,
                page_size: 20,
                pages: 24,
                walk_pages: 4,
                ping_every: 3,
                per_conn_rate: 45.0,
                payload_bytes: 100,
                seed_timeout_secs: 60.0,
            }),
            receipts: Some(ReceiptsConfig {
                members: 20,
                messages: 6,
                window: 4,
                rate: 0.0,
                payload_bytes: 100,
                timeout_secs: 20.0,
            }),
            baselines: true,
            nats_gateways: 2,
            client: ClientOptions {
                // Exercise the source-address spread even in a tiny run.
                per_source_ip: 4,
                ..ClientOptions::default()
            },
        }
    }
}

/// Where the Natter under test comes from.
#[derive(Debug, Clone)]
pub enum NatterSource {
    /// A fresh `natter serve` child per scenario (clean RSS, no leftovers).
    Spawn { binary: PathBuf, env: Vec<(String, String)> },
    /// A running server, used for every scenario as it is.
    Given(Target),
}

/// Where the bare baselines come from.
#[derive(Debug, Clone)]
pub enum BareSource {
    /// Children of this binary (`natter-bench bare-server`).
    Spawn,
    /// Running servers: one-frame-per-write and batched-writes.
    Given { plain: Box<Target>, batched: Box<Target> },
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub date: String,
    pub started_unix: u64,
    pub duration_secs: f64,
    pub machine: Machine,
    pub git_rev: Option<String>,
    pub command: String,
    pub natter: String,
    /// The NATS baseline's server; `None` when it was skipped (see notes).
    pub nats: Option<NatsInfo>,
    pub config: SuiteConfig,
    pub idle: Vec<IdleResult>,
    pub direct: Vec<DirectResult>,
    pub fanout: Vec<FanoutResult>,
    pub presence: Vec<PresenceFanoutResult>,
    pub sweeper: Option<SweeperResult>,
    pub conversations: Vec<ConversationsResult>,
    pub history: Vec<HistoryResult>,
    pub receipts: Vec<ReceiptsResult>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

/// One target of the issue, checked against what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// A server for one scenario: spawned (stopped afterwards) or given.
enum Server {
    Spawned(Box<Spawned>),
    Given(Target),
}

impl Server {
    fn target(&self) -> Target {
        match self {
            Server::Spawned(s) => s.target.clone(),
            Server::Given(t) => t.clone(),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Server::Spawned(s) => (*s).stop().await,
            Server::Given(_) => Ok(()),
        }
    }
}

async fn natter(source: &NatterSource) -> anyhow::Result<Server> {
    natter_with(source, Vec::new()).await
}

/// A Natter for one scenario; `settings` (`NATTER_*` environment) go to a
/// server the bench starts, before the user's `--server-env` (which wins).
/// A given server is used as it is.
async fn natter_with(source: &NatterSource, settings: Vec<(String, String)>) -> anyhow::Result<Server> {
    Ok(match source {
        NatterSource::Spawn { binary, env } => {
            let env: Vec<(String, String)> = settings.into_iter().chain(env.iter().cloned()).collect();
            Server::Spawned(Box::new(Spawned::natter(binary, "natter", &env).await?))
        }
        NatterSource::Given(t) => Server::Given(t.clone()),
    })
}

async fn bare(source: &BareSource, options: BareOptions) -> anyhow::Result<Server> {
    let label = if options.batch_writes { "bare-batched" } else { "bare" };
    Ok(match source {
        BareSource::Spawn => Server::Spawned(Box::new(Spawned::bare(label, options.batch_writes).await?)),
        BareSource::Given { plain, batched } => {
            Server::Given(if options.batch_writes { (**batched).clone() } else { (**plain).clone() })
        }
    })
}

/// Runs one scenario on a server and stops the server after it, also when
/// the scenario failed.
async fn on<T, F, Fut>(server: Server, client: &ClientOptions, name: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Run) -> Fut,
    Fut: std::future::Future<Output = (Run, anyhow::Result<T>)>,
{
    let run = Run::new(server.target(), client.clone(), name);
    let (run, result) = f(run).await;
    run.finish().await;
    let stopped = server.stop().await;
    let value = result?;
    stopped?;
    Ok(value)
}

/// Runs the suite. `nats_source` is where the NATS baseline's server comes
/// from (started here and stopped before this returns, when the bench starts
/// it); it is only needed when the suite has a fan-out.
pub async fn run_suite(
    config: &SuiteConfig,
    natter_source: &NatterSource,
    bare_source: &BareSource,
    nats_source: &NatsSource,
    command: String,
) -> anyhow::Result<SuiteReport> {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut report = SuiteReport {
        suite: config.name.clone(),
        date: date_of(started_unix),
        started_unix,
        duration_secs: 0.0,
        machine: procfs::machine(),
        git_rev: git_rev(),
        command,
        natter: match natter_source {
            NatterSource::Spawn { binary, .. } => format!("spawned {} (single-node mode)", binary.display()),
            NatterSource::Given(t) if t.addrs.len() > 1 => {
                format!("running at {} ({} gateways: distributed mode)", t.addrs_text(), t.addrs.len())
            }
            NatterSource::Given(t) => format!("running at {}", t.addrs_text()),
        },
        nats: None,
        config: config.clone(),
        idle: Vec::new(),
        direct: Vec::new(),
        fanout: Vec::new(),
        presence: Vec::new(),
        sweeper: None,
        conversations: Vec::new(),
        history: Vec::new(),
        receipts: Vec::new(),
        checks: Vec::new(),
        notes: Vec::new(),
    };
    // Started first, so that a missing nats-server fails the run at once
    // rather than after minutes of other scenarios; idle, it costs nothing.
    let nats_server = if config.fanout.is_empty() { None } else { NatsServer::open(nats_source).await? };
    report.nats = nats_server.as_ref().map(|n| n.info.clone());
    let ran = run_scenarios(config, natter_source, bare_source, nats_server.as_ref(), &mut report).await;
    let stopped = match nats_server {
        Some(server) => server.stop().await,
        None => Ok(()),
    };
    // The scenario's own error first: it is the one worth reading.
    ran?;
    stopped?;

    report.checks = checks(&report);
    report.notes = notes(&report, config, nats_source);
    for idle in &report.idle {
        if let Some(limit) = idle.capped_by_fd_limit {
            report.notes.push(format!(
                "Idle connections to {} were capped at {} (of {} requested) by the open-file limit of {limit}: \
                 one socket is one descriptor in the server and one in the generator, and this process could \
                 not raise its hard RLIMIT_NOFILE (no CAP_SYS_RESOURCE).",
                idle.target, idle.ready, idle.requested
            ));
        }
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn run_scenarios(
    config: &SuiteConfig,
    natter_source: &NatterSource,
    bare_source: &BareSource,
    nats_server: Option<&NatsServer>,
    report: &mut SuiteReport,
) -> anyhow::Result<()> {
    let client = &config.client;
    let plain = BareOptions { batch_writes: false };
    let batched = BareOptions { batch_writes: true };

    if let Some(idle_config) = &config.idle {
        tracing::info!(connections = idle_config.connections, "idle connections");
        let server = natter(natter_source).await?;
        let result = on(server, client, "i", |run| async move {
            let r = idle::run(&run, idle_config).await;
            (run, r)
        })
        .await?;
        report.idle.push(result);
    }

    if let Some(direct_config) = &config.direct {
        tracing::info!(users = direct_config.users, "1:1 persisted messages");
        let server = natter(natter_source).await?;
        let result = on(server, client, "d", |run| async move {
            let r = direct::run(&run, direct_config).await;
            (run, r)
        })
        .await?;
        report.direct.push(result);
        if config.baselines && direct_config.saturation_secs > 0.0 {
            // The ceiling for 1:1 through a socket: saturation only.
            let bare_config = DirectConfig { loads: Vec::new(), ..direct_config.clone() };
            let server = bare(bare_source, plain).await?;
            let result = on(server, client, "d", |run| async move {
                let r = direct::run(&run, &bare_config).await;
                (run, r)
            })
            .await?;
            report.direct.push(result);
        }
    }

    for fanout_config in &config.fanout {
        tracing::info!(group_size = fanout_config.group_size, groups = fanout_config.groups, "group fan-out");
        let mut servers = vec![natter(natter_source).await?];
        if config.baselines {
            servers.push(bare(bare_source, plain).await?);
            servers.push(bare(bare_source, batched).await?);
        }
        // Started one at a time: a running baseline would compete for CPU.
        let mut pending = servers.into_iter();
        while let Some(server) = pending.next() {
            let result = on(server, client, "f", |run| async move {
                let r = fanout::run(&run, fanout_config).await;
                (run, r)
            })
            .await;
            match result {
                Ok(r) => report.fanout.push(r),
                Err(e) => {
                    for rest in pending {
                        let _ = rest.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        if let Some(nats_server) = nats_server {
            for layout in [Layout::PerMember, Layout::Gateways(config.nats_gateways), Layout::Shared] {
                let server = Server::Given(nats_server.target(&layout.label()));
                let result = on(server, client, "n", |run| async move {
                    let r = nats::run(&run, fanout_config, layout).await;
                    (run, r)
                })
                .await?;
                report.fanout.push(result);
            }
        }
    }

    if let Some(presence_config) = &config.presence {
        tracing::info!(subscribers = presence_config.subscribers, "presence change fan-out");
        let server = natter(natter_source).await?;
        let result = on(server, client, "p", |run| async move {
            let r = presence::fanout(&run, presence_config).await;
            (run, r)
        })
        .await?;
        report.presence.push(result);
    }
    if let Some(subscriptions) = config.sweeper_subscriptions {
        tracing::info!(subscriptions, "presence sweeper cost");
        report.sweeper = Some(presence::sweeper(subscriptions).await?);
    }

    if let Some(conversations_config) = &config.conversations {
        tracing::info!(conversations = conversations_config.expected(), "conversation list");
        // Room for every seeded conversation (the default keeps 100): past
        // the cap a listing would drop, and forget, the oldest ones.
        let cap = conversations_config.expected().max(100);
        let settings = vec![("NATTER_CONVERSATIONS__MAX_CONVERSATIONS".to_owned(), cap.to_string())];
        let server = natter_with(natter_source, settings).await?;
        let result = on(server, client, "c", |run| async move {
            let r = conversations::run(&run, conversations_config).await;
            (run, r)
        })
        .await?;
        report.conversations.push(result);
    }

    if let Some(history_config) = &config.history {
        tracing::info!(messages = history_config.messages, senders = history_config.senders, "history");
        let server = natter(natter_source).await?;
        let result = on(server, client, "h", |run| async move {
            let r = history::run(&run, history_config).await;
            (run, r)
        })
        .await?;
        report.history.push(result);
    }

    if let Some(receipts_config) = &config.receipts {
        tracing::info!(members = receipts_config.members, messages = receipts_config.messages, "group read receipts");
        // Every member sends one receipt per message, as fast as the sender
        // sends: far over the default 50 requests/s per connection, which is
        // not what is measured here. Room for the group as well.
        let unlimited = RECEIPTS_REQUESTS_PER_SECOND.to_string();
        let settings = vec![
            ("NATTER_LIMITS__REQUESTS_PER_SECOND".to_owned(), unlimited.clone()),
            ("NATTER_LIMITS__REQUEST_BURST".to_owned(), unlimited),
            ("NATTER_LIMITS__MAX_GROUP_MEMBERS".to_owned(), (receipts_config.members + 1).max(3000).to_string()),
        ];
        let server = natter_with(natter_source, settings).await?;
        let result = on(server, client, "r", |run| async move {
            let r = receipts::run(&run, receipts_config).await;
            (run, r)
        })
        .await?;
        report.receipts.push(result);
    }

    Ok(())
}

/// The per-connection request limit (and burst) of a natter the bench starts
/// for the receipts scenario: high enough never to be reached.
const RECEIPTS_REQUESTS_PER_SECOND: u32 = 1_000_000;

/// The issue's targets for a 2-core box, single-node mode.
fn checks(report: &SuiteReport) -> Vec<Check> {
    let mut checks = Vec::new();
    // Only runs sized for a target are checked against it (not the smoke run).
    if let Some(idle) = report.idle.iter().find(|r| r.target == "natter" && r.requested >= 100_000) {
        let held = idle.alive_after_hold;
        checks.push(Check {
            name: "idle connections held by one gateway".into(),
            goal: "≥ 100,000 (stretch 500,000)".into(),
            measured: match idle.capped_by_fd_limit {
                Some(limit) => format!("{held} of {} requested (open-file limit {limit})", idle.requested),
                None => format!("{held} of {} requested", idle.requested),
            },
            met: held >= 100_000,
        });
        if let Some(per_conn) = idle.server_rss_per_conn_bytes {
            checks.push(Check {
                name: "server RSS per idle connection".into(),
                goal: "≤ 8 KiB".into(),
                measured: format!("{:.1} KiB (at {} connections)", per_conn / 1024.0, idle.ready),
                met: per_conn <= 8192.0,
            });
        }
    }
    if let Some(direct) = report.direct.iter().find(|r| r.target == "natter" && r.users >= 1000) {
        if let Some(sat) = &direct.saturation {
            checks.push(Check {
                name: "1:1 persisted saturation throughput".into(),
                goal: "≥ 20,000 msg/s".into(),
                measured: format!("{:.0} msg/s", sat.throughput_per_sec),
                met: sat.throughput_per_sec >= 20_000.0,
            });
        }
        // p99 at half the throughput target.
        if let Some(step) = direct.steps.iter().find(|s| s.offered_per_sec == Some(P99_TARGET_LOAD)) {
            checks.push(Check {
                name: "1:1 p99 send → recipient at 10,000 msg/s".into(),
                goal: "≤ 10 ms".into(),
                measured: format!(
                    "{:.2} ms over {:.0} s (achieved {:.0} msg/s, {} errors{})",
                    step.latency.p99_ms,
                    step.duration_secs,
                    step.throughput_per_sec,
                    step.errors,
                    // Whether the disk itself stalled meanwhile.
                    step.usage.disk_syncs.as_ref().map_or(String::new(), |d| format!(
                        "; the disk's own sync p99 {:.2} ms, max {:.1} ms",
                        d.latency.p99_ms, d.latency.max_ms
                    ))
                ),
                met: step.latency.p99_ms <= 10.0 && step.errors == 0 && step.undelivered == 0,
            });
        }
    }
    let thousand: Vec<&FanoutResult> = report.fanout.iter().filter(|r| r.group_size == 1000).collect();
    if let Some(n) = thousand.iter().find(|r| r.target == "natter") {
        checks.push(Check {
            name: "1000-member group fan-out".into(),
            goal: "≥ 300,000 deliveries/s".into(),
            measured: format!("{:.0} deliveries/s", n.deliveries_per_sec),
            met: n.deliveries_per_sec >= 300_000.0 && n.complete,
        });
        if let Some(best) = best_bare(&thousand) {
            let ratio = n.deliveries_per_sec / best.deliveries_per_sec.max(1.0);
            checks.push(Check {
                name: "1000-member fan-out vs the bare baseline".into(),
                goal: "≥ 0.6 × bare".into(),
                measured: format!("{ratio:.2} × {} ({:.0} deliveries/s)", best.target, best.deliveries_per_sec),
                met: ratio >= 0.6 && n.complete,
            });
        }
    }
    if let Some(c) = report.conversations.iter().find(|r| r.seeded >= 500 && r.gateways == 1) {
        checks.push(Check {
            name: format!("C1 conversation page p99 ({} conversations, pages of {})", c.seeded, c.page_size),
            goal: "≤ 5 ms (single node)".into(),
            measured: format!(
                "{:.2} ms over {} pages (p50 {:.2} ms, max {:.2} ms; {} of {} listed, {} errors, {} passes wrong)",
                c.page_latency.p99_ms,
                c.pages,
                c.page_latency.p50_ms,
                c.page_latency.max_ms,
                c.listed,
                c.seeded,
                c.errors,
                c.mismatched_passes
            ),
            met: c.page_latency.p99_ms <= 5.0
                && c.errors == 0
                && c.mismatched_passes == 0
                && c.listed == c.seeded
                && c.pages > 0,
        });
    }
    if let Some(h) = report.history.iter().find(|r| r.messages >= 100_000) {
        let (goal, limit) =
            if h.gateways > 1 { ("≤ 15 ms (one-box cluster)", 15.0) } else { ("≤ 2 ms (single node)", 2.0) };
        checks.push(Check {
            name: format!("C5 history page p99 ({} messages, pages of {})", h.messages, h.page_size),
            goal: goal.into(),
            measured: format!(
                "{:.2} ms over {} pages (p50 {:.2} ms, max {:.2} ms; {} errors, {} pages wrong)",
                h.page_latency.p99_ms,
                h.pages,
                h.page_latency.p50_ms,
                h.page_latency.max_ms,
                h.errors,
                h.mismatched_pages
            ),
            met: h.page_latency.p99_ms <= limit && h.errors == 0 && h.mismatched_pages == 0 && h.pages > 0,
        });
    }
    // The targets are single-node; a cluster's figures are in the table
    // (and a note), not checked.
    if let Some(r) = report.receipts.iter().find(|r| r.members >= 1000 && r.gateways == 1) {
        let correct = r.complete && r.errors == 0 && r.wrong_counts == 0 && r.messages > 0;
        checks.push(Check {
            name: format!("group read receipts ({} members, every one reads every message)", r.members),
            goal: "≥ 100,000 receipts/s".into(),
            measured: format!(
                "{} receipts/s ({} of {} answered ok over {:.1} s; {} errors, {} wrong counts{})",
                thousands(r.receipts_per_sec),
                r.receipts,
                r.expected_receipts,
                r.duration_secs,
                r.errors,
                r.wrong_counts,
                if r.complete { "" } else { "; timed out" }
            ),
            met: r.receipts_per_sec >= 100_000.0 && correct && r.receipts == r.expected_receipts,
        });
        checks.push(Check {
            name: "group read count p99: last member's receipt → the sender's onReadMessage".into(),
            goal: "≤ 20 ms".into(),
            measured: format!(
                "{:.2} ms over {} messages (p50 {:.2} ms, max {:.2} ms)",
                r.to_sender.p99_ms, r.to_sender.count, r.to_sender.p50_ms, r.to_sender.max_ms
            ),
            met: r.to_sender.p99_ms <= 20.0 && correct && r.to_sender.count == r.messages,
        });
    }
    checks
}

/// The higher of the bare baselines among `rows`, the true ceiling of a
/// WebSocket server (the NATS rows measure a different layer). A baseline
/// that timed out measured no ceiling.
fn best_bare<'a>(rows: &[&'a FanoutResult]) -> Option<&'a FanoutResult> {
    rows.iter()
        .copied()
        .filter(|r| r.target.starts_with("bare") && r.complete)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec))
}

fn notes(report: &SuiteReport, config: &SuiteConfig, nats_source: &NatsSource) -> Vec<String> {
    let mut notes = vec![
        "The load generator runs on the same machine and shares its two cores; its own CPU is reported next to the server's. CPU is in percent of one core (200% = both cores); \"Other CPU\" is everything else on the machine in the same window (other builds and tests, kernel time charged to neither process).".to_owned(),
        format!(
            "\"Disk sync\" is a probe of the disk itself over the same window: a 4 KiB overwrite and fdatasync in the temp dir (where a natter the bench starts keeps its data; with --url, the bench's own disk) every {} ms, with no allocation or metadata to commit, so it takes the device's write and flush plus whatever the device has queued (the time the probe's thread waited for a core is taken out). A store's fsync cannot be faster; a max of hundreds of ms means the disk stalled, whoever queued the writes.",
            crate::disk::INTERVAL.as_millis()
        ),
    ];
    match (&report.nats, nats_source) {
        (Some(nats), _) => notes.push(format!(
            "The nats-* fan-out rows are raw core-NATS publish/subscribe through nats-server {} ({} {}), with no \
             WebSocket, store or log: `nats-per-member` publishes each group message once per member on \
             `bench.user.<member>` (as the distributed mode's message role does), each member a connection with \
             its own subscription; `nats-{}-gateways` is the same traffic with the subscriptions held by {} \
             connections, as that many gateways hold one subscription per online user; `nats-shared` is one \
             publish per message on one subject of the group, one connection per member (NATS's own fan-out, for \
             reference: Natter does not use it). One publishing connection, the live-event payload Natter puts on \
             the bus at the same text size, and the same groups, senders, pace and window as the WebSocket rows. \
             NATS has no ack (Ack –); Server CPU is nats-server's, and the generator's Bench CPU includes the \
             publisher and every subscriber.",
            nats.version,
            if nats.started_by_bench { "started by the bench with deploy/nats.sh at" } else { "running at" },
            nats.url,
            config.nats_gateways,
            config.nats_gateways,
        )),
        (None, NatsSource::Skip { reason }) if !config.fanout.is_empty() => {
            notes.push(format!("The raw NATS publish/subscribe baseline was not measured: {reason}."));
        }
        _ => {}
    }
    for c in &report.conversations {
        if c.listed != c.seeded {
            notes.push(format!(
                "The conversation list on {} listed {} of the {} conversations seeded. A server keeps at most \
                 `conversations.max_conversations` per user (100 by default) and drops the least recently active \
                 past it; the natter the bench starts gets room for all of them, a given one is measured as it is \
                 configured.",
                c.target, c.listed, c.seeded
            ));
        }
    }
    for r in &report.receipts {
        if r.gateways > 1 {
            notes.push(format!(
                "Group read receipts on {} gateways ({}): {} receipts/s, last member's receipt → the sender's \
                 count p50 / p99 / max {:.2} / {:.2} / {:.2} ms, {} errors, {} wrong counts. Recorded; the \
                 targets (≥ 100,000 receipts/s, p99 ≤ 20 ms) are for a single node.",
                r.gateways,
                r.target,
                thousands(r.receipts_per_sec),
                r.to_sender.p50_ms,
                r.to_sender.p99_ms,
                r.to_sender.max_ms,
                r.errors,
                r.wrong_counts
            ));
        }
        if r.errors > 0 {
            notes.push(format!(
                "The read receipts run on {} had {} errors (the first few are in the log). Every member sends one \
                 receipt per message, as fast as the sender sends: a natter the bench starts gets \
                 `limits.requests_per_second` and `request_burst` of {RECEIPTS_REQUESTS_PER_SECOND}; a running one \
                 (--url) is measured as configured, and its per-connection limit (50/s, burst 100 by default) \
                 answers RATE_LIMITED past it: set them higher there, or pace the sender under them (--rate).",
                r.target, r.errors
            ));
        }
    }
    // Senders keep Natter's per-connection pace, so a baseline fast enough
    // can hit that ceiling instead of its own.
    for f in &report.fanout {
        let Some(c) = config.fanout.iter().find(|c| c.group_size == f.group_size && c.groups == f.groups) else {
            continue;
        };
        let ceiling = f.senders as f64 * c.per_conn_rate * f.group_size as f64;
        if f.deliveries_per_sec >= 0.8 * ceiling {
            notes.push(format!(
                "{} ({} × {}) reached {:.0}% of the senders' pace ceiling ({} senders × {} msg/s × {} members = \
                 {:.0} deliveries/s): that row is bounded by the generator's pace, not by the server.",
                f.target,
                f.group_size,
                f.groups,
                100.0 * f.deliveries_per_sec / ceiling,
                f.senders,
                c.per_conn_rate,
                f.group_size,
                ceiling
            ));
        }
    }
    notes
}

fn git_rev() -> Option<String> {
    // For a build from an exported tree (no .git), the caller names it.
    if let Ok(rev) = std::env::var("NATTER_BENCH_REV") {
        return Some(rev);
    }
    let out =
        std::process::Command::new("git").args(["describe", "--always", "--dirty", "--abbrev=10"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `YYYY-MM-DD` (UTC) of a Unix time: Howard Hinnant's civil-from-days.
pub fn date_of(unix: u64) -> String {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::Usage;
    use crate::stats::LatencySummary;

    fn fanout(target: &str, deliveries_per_sec: f64, complete: bool) -> FanoutResult {
        FanoutResult {
            target: target.into(),
            group_size: 1000,
            groups: 1,
            senders: 32,
            messages: 1500,
            expected_deliveries: 1_500_000,
            deliveries: if complete { 1_500_000 } else { 24_019 },
            errors: 0,
            duration_secs: 1.0,
            deliveries_per_sec,
            messages_per_sec: 0.0,
            time_to_last: LatencySummary::default(),
            ack_latency: LatencySummary::default(),
            usage: Usage::default(),
            complete,
        }
    }

    /// A baseline that timed out is no ceiling, however fast its partial
    /// deliveries came; the NATS rows are never the bare ceiling.
    #[test]
    fn the_bare_ceiling_is_the_best_complete_bare_row() {
        let bare = fanout("bare", 250_000.0, true);
        let batched_timed_out = fanout("bare-batched", 900_000.0, false);
        let nats = fanout("nats-2-gateways", 600_000.0, true);
        let rows = [&bare, &batched_timed_out, &nats];
        assert_eq!(best_bare(&rows).map(|r| r.target.as_str()), Some("bare"));
        let batched = fanout("bare-batched", 800_000.0, true);
        let rows = [&bare, &batched, &nats];
        assert_eq!(best_bare(&rows).map(|r| r.target.as_str()), Some("bare-batched"));
        assert!(best_bare(&[&nats, &batched_timed_out]).is_none());
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(951_782_400), "2000-02-29");
        assert_eq!(date_of(1_795_322_962), "2026-11-22");
    }
}
