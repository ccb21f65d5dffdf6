//! `natter`: the command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use natter_server::{Config, Node, Overrides, Role};
use natter_types::UserId;

/// Natter: a self-hosted instant-messaging backend.
#[derive(Debug, Parser)]
#[command(name = "natter", version, about)]
struct Cli {
    /// TOML config file (layered over the defaults; NATTER_* env and flags override it).
    #[arg(long, short, global = true, env = "NATTER_CONFIG")]
    config: Option<PathBuf>,
    /// Address for WebSocket clients (/ws) and /healthz.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Address of the backend gRPC API.
    #[arg(long, global = true)]
    grpc_listen: Option<String>,
    /// Directory of the embedded store and generated secrets.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long, global = true)]
    dump_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process (the default).
    Serve,
    /// Mint a client token for a user with the configured secret.
    Token {
        /// The user id the token proves.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Distributed mode: serve WebSocket clients and the backend API.
    Gateway,
    /// Distributed mode: sessions, presence subscriptions and webhooks.
    Presence,
    /// Distributed mode: the send pipeline and groups.
    Message,
    /// Distributed mode: the conversation store (health only for now).
    Conversation,
    /// Distributed mode: create or update the CQL schema, then exit.
    Migrate,
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

// mimalloc v2: glibc's malloc costs ~10 % of the server's CPU at 1:1 saturation; v3 would cost
// ~0.8 KiB more per idle connection (docs/PERFORMANCE.md#settings-that-matter).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides { listen: cli.listen, grpc_listen: cli.grpc_listen, data_dir: cli.data_dir };
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    if cli.dump_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, ttl } => {
            let user = UserId::parse(&user, "--user").map_err(|e| anyhow::anyhow!(e.message))?;
            let (token, _) =
                natter_server::node::tokens(&config)?.mint(&user, ttl).map_err(|e| anyhow::anyhow!(e.message))?;
            println!("{token}");
            Ok(())
        }
        Command::Serve => {
            init_tracing(&config);
            let node = Node::start(&config).await?;
            stop_on_signal(node.cancel_token());
            node.run_until_stopped().await
        }
        Command::Migrate => {
            init_tracing(&config);
            distributed::migrate(&config).await
        }
        Command::Gateway => distributed::run(Role::Gateway, &config).await,
        Command::Presence => distributed::run(Role::Presence, &config).await,
        Command::Message => distributed::run(Role::Message, &config).await,
        Command::Conversation => distributed::run(Role::Conversation, &config).await,
    }
}

fn stop_on_signal(cancel: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stop signal received, draining");
        cancel.cancel();
    });
}

#[cfg(feature = "distributed")]
mod distributed {
    use natter_server::cluster::{RoleProcess, run_migrate};
    use natter_server::{Config, Role};

    pub async fn migrate(config: &Config) -> anyhow::Result<()> {
        run_migrate(config).await
    }

    pub async fn run(role: Role, config: &Config) -> anyhow::Result<()> {
        super::init_tracing(config);
        let process = RoleProcess::start(role, config).await?;
        // The one line on stdout: scripts and tests wait for it and learn the
        // bound addresses (port 0 works).
        match process.ws_addr {
            Some(ws) => println!("natter ready role={role} ws={ws} grpc={}", process.grpc_addr),
            None => println!("natter ready role={role} grpc={}", process.grpc_addr),
        }
        super::stop_on_signal(process.cancel_token());
        process.run_until_stopped().await
    }
}

#[cfg(not(feature = "distributed"))]
mod distributed {
    use natter_server::{Config, Role};

    fn missing(what: &str) -> anyhow::Result<()> {
        anyhow::bail!(
            "`natter {what}` is part of the distributed mode, which this binary was built without; \
             build with `cargo build --release --features distributed` (or use `natter serve`)"
        )
    }

    pub async fn migrate(_config: &Config) -> anyhow::Result<()> {
        missing("migrate")
    }

    pub async fn run(role: Role, _config: &Config) -> anyhow::Result<()> {
        missing(role.name())
    }
}
