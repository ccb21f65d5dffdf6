//! `natter`: the command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use natter_server::{Config, Node, Overrides};
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
            let cancel = node.cancel_token();
            tokio::spawn(async move {
                stop_signal().await;
                tracing::info!("stop signal received, draining");
                cancel.cancel();
            });
            node.run_until_stopped().await
        }
    }
}
