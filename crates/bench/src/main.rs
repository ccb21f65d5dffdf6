//! `natter-bench`: the command line around the suite.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use natter_bench::bare::{self, BareOptions};
use natter_bench::client::{ClientOptions, raise_fd_limit};
use natter_bench::nats_server::{self, NatsSource};
use natter_bench::report;
use natter_bench::scenarios::conversations::ConversationsConfig;
use natter_bench::scenarios::direct::DirectConfig;
use natter_bench::scenarios::fanout::FanoutConfig;
use natter_bench::scenarios::history::HistoryConfig;
use natter_bench::scenarios::idle::IdleConfig;
use natter_bench::scenarios::receipts::ReceiptsConfig;
use natter_bench::suite::{self, BareSource, NatterSource, SuiteConfig};
use natter_bench::target::{self, ServerKind, Target};
use tokio_util::sync::CancellationToken;

/// Load generator and benchmark suite for Natter.
#[derive(Debug, Parser)]
#[command(name = "natter-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The standard suite (or `--smoke`): every scenario and baseline (the
    /// NATS one with the fan-out), a report in <out>/<date>.md and .json.
    Suite {
        /// The tiny smoke run instead of the standard suite.
        #[arg(long)]
        smoke: bool,
        /// Override the idle scenario's connection count (e.g. 500000).
        #[arg(long)]
        idle_conns: Option<usize>,
        /// Scenarios to run (idle, direct, fanout, presence, sweeper,
        /// conversations, history, receipts); all by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Idle connections only.
    Idle {
        #[arg(long, default_value_t = 100_000)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        hold_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// 1:1 persisted messages only.
    Direct {
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Offered loads in msg/s, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "2500,5000,10000,20000")]
        loads: Vec<f64>,
        #[arg(long, default_value_t = 8.0)]
        step_secs: f64,
        /// The 10,000 msg/s step (the p99 target's) runs at least this long.
        #[arg(long, default_value_t = 30.0)]
        target_step_secs: f64,
        /// Closed-loop saturation step; 0 skips it.
        #[arg(long, default_value_t = 10.0)]
        saturation_secs: f64,
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Group fan-out only (with the bare and NATS baselines).
    Fanout {
        #[arg(long, default_value_t = 1000)]
        group_size: usize,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        #[arg(long, default_value_t = 32)]
        senders: usize,
        /// Messages per group (the suite's 1000-member run sends 4000)
        #[arg(long, default_value_t = 4000)]
        messages: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[command(flatten)]
        common: Common,
    },
    /// The conversation list (C1) only: one user with many conversations
    /// pages the whole list, many times.
    Conversations {
        /// 1:1 conversations: peers that each send the user one message.
        #[arg(long, default_value_t = 500)]
        conversations: usize,
        /// Groups the user is also in (one message each).
        #[arg(long, default_value_t = 5)]
        groups: usize,
        /// Peers in each group besides the user.
        #[arg(long, default_value_t = 9)]
        group_members: usize,
        #[arg(long, default_value_t = 20)]
        page_size: usize,
        /// Times the whole list is paged.
        #[arg(long, default_value_t = 50)]
        passes: usize,
        #[command(flatten)]
        common: Common,
    },
    /// History (C5) only: one conversation with many messages, paged in
    /// walks from the newest and from random messages, both directions.
    History {
        /// Messages in the conversation.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Group members that send them (each at 45/s).
        #[arg(long, default_value_t = 64)]
        senders: usize,
        /// Sends in flight per sender while seeding.
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[arg(long, default_value_t = 50)]
        page_size: usize,
        /// Pages read in all.
        #[arg(long, default_value_t = 1200)]
        pages: usize,
        /// Pages per walk.
        #[arg(long, default_value_t = 10)]
        walk_pages: usize,
        /// How long seeding may take, in seconds.
        #[arg(long, default_value_t = 900.0)]
        seed_timeout_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Group read receipts (R5/R6) only: every member of a big group
    /// read-acks every message of its sender.
    Receipts {
        /// Members besides the sender; each reads every message.
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Messages the sender sends (each asks for read receipts).
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages open at once (sent, not yet at their full read count),
        /// 1 to 32.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Highest send rate of the sender in msg/s; 0: only the window
        /// limits it. Against a running server (--url) keep it under its
        /// `limits.requests_per_second` (every member sends at this rate).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// How long the messages may take to reach their full counts, in
        /// seconds.
        #[arg(long, default_value_t = 300.0)]
        timeout_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Runs the bare baseline server (the suite starts it by itself).
    BareServer {
        #[arg(long, default_value = "127.0.0.1:7200")]
        listen: SocketAddr,
        /// Write every queued frame of a socket in one flush.
        #[arg(long)]
        batch_writes: bool,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Where reports go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The natter binary to start (default: next to this one).
    #[arg(long)]
    natter_bin: Option<PathBuf>,
    /// Use a running Natter at this address (host:port, ws://host:port or
    /// ws://host:port/ws) instead of starting one; needs --secret. Several
    /// (comma separated or repeated) for a distributed deployment: clients
    /// are spread over them round robin, so group members sit on every
    /// gateway.
    #[arg(long, requires = "secret", value_delimiter = ',')]
    url: Vec<String>,
    /// The running server's token secret (auth.token_secret).
    #[arg(long, env = "NATTER_BENCH_SECRET")]
    secret: Option<String>,
    /// The running server's pid, to report its RSS and CPU; for a cluster,
    /// every role's (comma separated or repeated: reported summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Skip the baselines (bare WebSocket and NATS).
    #[arg(long)]
    no_baselines: bool,
    /// Skip the raw NATS baseline (the report says so).
    #[arg(long, conflicts_with = "nats_url")]
    no_nats: bool,
    /// Use the nats-server running at nats://host:port for the NATS baseline
    /// instead of starting one with deploy/nats.sh.
    #[arg(long)]
    nats_url: Option<String>,
    /// That nats-server's pid, to report its CPU and RSS.
    #[arg(long, requires = "nats_url")]
    nats_pid: Option<u32>,
    /// The deploy/nats.sh that starts the NATS baseline's server (default:
    /// ./deploy/nats.sh, else the one of the source tree this was built from).
    #[arg(long)]
    nats_script: Option<PathBuf>,
    /// Extra environment for the spawned natter (KEY=VALUE, repeatable),
    /// e.g. NATTER_GATEWAY__READ_BUFFER_BYTES=1024.
    #[arg(long = "server-env")]
    server_env: Vec<String>,
    /// Connections per loopback source address.
    #[arg(long, default_value_t = 1000)]
    per_source_ip: usize,
    /// Handshakes in flight.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

// The allocator natter runs with, so the bare baselines (children of this
// binary) are measured on equal terms and the generator costs less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // async-nats logs every connect and close at info: a thousand
                // lines per NATS baseline row.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Two workers, like the server on this box: the generator must not
    // take more than its share.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let (mut config, common) = match cli.command {
        Command::BareServer { listen, batch_writes } => return serve_bare(listen, batch_writes).await,
        Command::Suite { smoke, idle_conns, only, common } => {
            let mut config = if smoke { SuiteConfig::smoke() } else { SuiteConfig::standard() };
            if let (Some(n), Some(idle)) = (idle_conns, config.idle.as_mut()) {
                idle.connections = n;
            }
            if !only.is_empty() {
                let wants = |s: &str| only.iter().any(|o| o == s);
                if !wants("idle") {
                    config.idle = None;
                }
                if !wants("direct") {
                    config.direct = None;
                }
                if !wants("fanout") {
                    config.fanout.clear();
                }
                if !wants("presence") {
                    config.presence = None;
                }
                if !wants("sweeper") {
                    config.sweeper_subscriptions = None;
                }
                if !wants("conversations") {
                    config.conversations = None;
                }
                if !wants("history") {
                    config.history = None;
                }
                if !wants("receipts") {
                    config.receipts = None;
                }
                let known = ["idle", "direct", "fanout", "presence", "sweeper", "conversations", "history", "receipts"];
                if let Some(unknown) = only.iter().find(|o| !known.contains(&o.as_str())) {
                    anyhow::bail!("--only {unknown}: not a scenario (one of {})", known.join(", "));
                }
            }
            (config, common)
        }
        Command::Idle { conns, hold_secs, common } => {
            let mut config = empty("idle");
            config.idle = Some(IdleConfig { connections: conns, hold_secs });
            (config, common)
        }
        Command::Direct { users, loads, step_secs, target_step_secs, saturation_secs, window, common } => {
            let mut config = empty("direct");
            let standard = SuiteConfig::standard().direct.context("standard direct config")?;
            config.direct =
                Some(DirectConfig { users, loads, step_secs, target_step_secs, saturation_secs, window, ..standard });
            (config, common)
        }
        Command::Conversations { conversations, groups, group_members, page_size, passes, common } => {
            let mut config = empty("conversations");
            let standard = SuiteConfig::standard().conversations.context("standard conversations config")?;
            config.conversations = Some(ConversationsConfig {
                peers: conversations,
                groups,
                group_members,
                page_size,
                passes,
                ..standard
            });
            (config, common)
        }
        Command::History { messages, senders, window, page_size, pages, walk_pages, seed_timeout_secs, common } => {
            let mut config = empty("history");
            let standard = SuiteConfig::standard().history.context("standard history config")?;
            config.history = Some(HistoryConfig {
                messages,
                senders,
                window,
                page_size,
                pages,
                walk_pages,
                seed_timeout_secs,
                ..standard
            });
            (config, common)
        }
        Command::Receipts { members, messages, window, rate, timeout_secs, common } => {
            let mut config = empty("receipts");
            let standard = SuiteConfig::standard().receipts.context("standard receipts config")?;
            config.receipts = Some(ReceiptsConfig { members, messages, window, rate, timeout_secs, ..standard });
            (config, common)
        }
        Command::Fanout { group_size, groups, senders, messages, window, common } => {
            let mut config = empty("fanout");
            let standard = SuiteConfig::standard();
            let base = standard.fanout.last().context("standard fanout config")?.clone();
            config.fanout = vec![FanoutConfig {
                group_size,
                groups,
                senders_per_group: senders,
                messages_per_group: messages,
                window_per_group: window,
                ..base
            }];
            (config, common)
        }
    };
    config.baselines &= !common.no_baselines;
    config.client =
        ClientOptions { per_source_ip: common.per_source_ip, concurrency: common.connect_concurrency, ..config.client };
    let fds = raise_fd_limit(1 << 20);
    tracing::info!(fd_limit = fds, "raised the open-file limit (inherited by spawned servers)");

    let natter = if common.url.is_empty() {
        anyhow::ensure!(common.server_pid.is_empty(), "--server-pid is for a running server (--url)");
        None
    } else {
        let mut addrs = Vec::with_capacity(common.url.len());
        for url in &common.url {
            addrs.push(target::resolve_ws(url).await?);
        }
        Some(NatterSource::Given(Target {
            kind: ServerKind::Natter,
            addrs,
            secret: common.secret.clone().unwrap_or_default(),
            pids: common.server_pid.clone(),
            label: "natter".into(),
        }))
    };
    let natter = match natter {
        Some(given) => given,
        None => {
            let binary = match &common.natter_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?.parent().context("this binary has no directory")?.join("natter"),
            };
            anyhow::ensure!(
                binary.exists(),
                "{} not found: build it (cargo build --release -p natter-server) or pass --natter-bin",
                binary.display()
            );
            let env = common
                .server_env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("--server-env {kv} is not KEY=VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            NatterSource::Spawn { binary, env }
        }
    };
    let nats = if common.no_baselines {
        NatsSource::Skip { reason: "--no-baselines was given".into() }
    } else if common.no_nats {
        NatsSource::Skip { reason: "--no-nats was given".into() }
    } else if let Some(url) = &common.nats_url {
        NatsSource::Given { url: url.clone(), pid: common.nats_pid }
    } else {
        NatsSource::Spawn { script: common.nats_script.clone().unwrap_or_else(nats_server::default_script) }
    };
    let report = suite::run_suite(&config, &natter, &BareSource::Spawn, &nats, command_line).await?;
    let (json, md) = report::write(&report, &common.out)?;
    println!("{}", report::markdown(&report));
    tracing::info!(json = %json.display(), markdown = %md.display(), "report written");
    Ok(())
}

fn empty(name: &str) -> SuiteConfig {
    SuiteConfig {
        name: name.into(),
        idle: None,
        direct: None,
        fanout: Vec::new(),
        presence: None,
        sweeper_subscriptions: None,
        conversations: None,
        history: None,
        receipts: None,
        ..SuiteConfig::standard()
    }
}

async fn serve_bare(listen: SocketAddr, batch_writes: bool) -> anyhow::Result<()> {
    raise_fd_limit(1 << 20);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, batch_writes, "bare baseline serving");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    bare::serve(listener, BareOptions { batch_writes }, cancel).await
}
