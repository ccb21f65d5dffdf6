//! The single-node mode: every service in one process over the embedded
//! store and the in-process bus. Tests start it on port 0 with a temp dir.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use natter_bus::local::LocalBus;
use natter_gateway::{Gateway, Tokens};
use natter_message::MessageOptions;
use natter_presence::local::LocalSessionRegistry;
use natter_runtime::Tasks;
use natter_store::SessionJournal;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::process;
use crate::wiring::{self, Backends};

/// A running single-node server; `shutdown` stops it in order.
pub struct Node {
    pub ws_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub api_key: String,
    pub tokens: Tokens,
    gateway: Gateway,
    grace: Duration,
    tasks: Tasks,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("ws_addr", &self.ws_addr)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

/// The configured secret, or one generated once and kept in the data dir
/// (mode 0600), so `natter token` and `natter serve` agree without setup.
pub fn secret(configured: &str, data_dir: &Path, file: &str) -> anyhow::Result<String> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let path = data_dir.join(file);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(existing.to_owned());
        }
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let value = process::random_hex(32)?;
    write_private(&path, &value).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated secret");
    Ok(value)
}

#[cfg(unix)]
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(value.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

pub fn tokens(config: &Config) -> anyhow::Result<Tokens> {
    let secret = secret(&config.auth.token_secret, &config.server.data_dir, "token_secret")?;
    Ok(Tokens::new(secret.as_bytes(), config.auth.token_ttl_secs))
}

impl Node {
    /// Every role in this process: the same wiring as the distributed roles
    /// (`wiring`), over the embedded store and the in-process bus.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let data_dir = &config.server.data_dir;
        let tokens = tokens(config)?;
        let api_key = secret(&config.auth.api_key, data_dir, "api_key")?;
        let tasks = Tasks::new();
        let store = EmbeddedStore::open(
            &data_dir.join("store"),
            EmbeddedOptions {
                log_retention_events: config.store.log_retention_events,
                memtable_bytes: config.store.memtable_mib << 20,
                idempotency_window: config.store.idempotency_window(),
                heads_cached: config.store.heads_cached,
            },
            &tasks,
        )
        .map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", data_dir.display()))?;
        let journal: Arc<dyn SessionJournal> = Arc::new(store.clone());
        let backends = Backends {
            stores: store.stores(),
            bus: Arc::new(LocalBus::new()),
            sessions: Arc::new(LocalSessionRegistry::with_journal(journal.clone())),
        };
        let message = MessageOptions {
            node_id: config.server.node_id,
            limits: config.limits.clone(),
            recall_window: config.messages.recall_window(),
        };
        let (apis, presence) =
            wiring::local_services(message, config.presence.clone(), config.conversations.clone(), &backends, &tasks)
                .await?;
        // Sessions the journal still holds belong to a run that died without
        // closing them: announce them offline before serving new ones.
        match journal.open_sessions().await {
            Ok(lost) if !lost.is_empty() => {
                tracing::info!(sessions = lost.len(), "announcing the previous run's sessions offline");
                presence.announce_lost(&lost).await;
                journal.closed(&lost).await.map_err(|e| anyhow::anyhow!("recording lost sessions closed: {e}"))?;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the previous run's sessions failed"),
        }
        let gateway_options = wiring::gateway_options(config, format!("node-{}", config.server.node_id));
        let gateway = wiring::gateway(gateway_options, &backends, &apis, tokens.clone(), &tasks);

        let ws_listener = process::bind(&config.server.listen, "server.listen").await?;
        let grpc_listener = process::bind(&config.server.grpc_listen, "server.grpc_listen").await?;
        let ws_addr = process::serve_http(&tasks, ws_listener, &gateway)?;
        let routes = wiring::backend_api(&apis, tokens.clone(), config, &api_key);
        let grpc_addr = process::serve_grpc(&tasks, grpc_listener, routes, &["natter.v1.Backend"]).await?;
        tracing::info!(ws = %ws_addr, grpc = %grpc_addr, data_dir = %data_dir.display(), "natter serving");
        Ok(Self {
            ws_addr,
            grpc_addr,
            api_key,
            tokens,
            gateway,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            tasks,
        })
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// A token that stops the node when cancelled (e.g. by a signal).
    pub fn cancel_token(&self) -> CancellationToken {
        self.tasks.stop_token()
    }

    /// Runs until the cancel token fires or a server task fails, then stops.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.tasks.stop_requested().await;
        self.shutdown().await
    }

    /// Ordered stop under one deadline (`server.shutdown_grace_secs`): stop
    /// accepting, tell every session to reconnect (goodbye) and wait for
    /// them, stop the background jobs, then drain and sync the store (its own
    /// task, last).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let stopped = self.tasks.stop(self.grace).await;
        tracing::info!("natter stopped");
        stopped
    }
}
