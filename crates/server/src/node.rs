//! The single-node mode: every service in one process over the embedded
//! store and the in-process bus. Tests start it on port 0 with a temp dir.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use natter_bus::local::LocalBus;
use natter_gateway::{Gateway, GatewayDeps, GatewayHandle, Tokens};
use natter_message::{MessageOptions, MessageService};
use natter_presence::PresenceService;
use natter_presence::local::LocalSessionRegistry;
use natter_proto::v1::backend_server::BackendServer;
use natter_store::SessionJournal;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::grpc::{ApiKeyCheck, BackendApi};
use crate::process::{self, Tasks};

/// A running single-node server; `shutdown` stops it in order.
pub struct Node {
    pub ws_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub api_key: String,
    pub tokens: Tokens,
    gateway: GatewayHandle,
    cancel: CancellationToken,
    store: EmbeddedStore,
    grace: Duration,
    tasks: Tasks,
    /// The store's tasks, stopped after `tasks`.
    storage: natter_runtime::Tasks,
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
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let data_dir = &config.server.data_dir;
        let tokens = tokens(config)?;
        let api_key = secret(&config.auth.api_key, data_dir, "api_key")?;
        let storage = natter_runtime::Tasks::new();
        let store = EmbeddedStore::open(
            &data_dir.join("store"),
            EmbeddedOptions {
                log_retention_events: config.store.log_retention_events,
                memtable_bytes: config.store.memtable_mib << 20,
                idempotency_window: config.store.idempotency_window(),
                heads_cached: config.store.heads_cached,
            },
            &storage,
        )
        .map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", data_dir.display()))?;
        let stores = store.stores();
        let bus = Arc::new(LocalBus::new());
        let messages = Arc::new(MessageService::new(
            MessageOptions { node_id: config.server.node_id, limits: config.limits.clone() },
            stores.clone(),
            bus.clone(),
        ));

        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone());
        let journal: Arc<dyn SessionJournal> = Arc::new(store.clone());
        let presence = PresenceService::new(
            config.presence.clone(),
            config.limits.clone(),
            Arc::new(LocalSessionRegistry::with_journal(journal.clone())),
            stores.presence.clone(),
            stores.outbox.clone(),
            bus.clone(),
            cancel.child_token(),
        )
        .map_err(|e| anyhow::anyhow!("presence service: {e}"))?;
        presence.start().await.map_err(|e| anyhow::anyhow!("starting presence: {e}"))?;
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
        let deps = GatewayDeps {
            messages: messages.clone(),
            log: stores.log.clone(),
            bus,
            presence: presence.clone(),
            tokens: tokens.clone(),
        };
        let gateway = Gateway::new(
            process::gateway_options(config, format!("node-{}", config.server.node_id)),
            deps,
            cancel.child_token(),
        );
        let gateway_handle = gateway.handle();

        let ws_listener = process::bind(&config.server.listen, "server.listen").await?;
        let grpc_listener = process::bind(&config.server.grpc_listen, "server.grpc_listen").await?;
        let ws_addr = process::serve_http(&mut tasks, ws_listener, &gateway, cancel.clone())?;
        tasks.spawn("gateway", async move { gateway.run().await.map_err(anyhow::Error::from) });
        tasks.spawn("presence", {
            let presence = presence.clone();
            async move {
                presence.stopped().await;
                Ok(())
            }
        });
        let api =
            BackendApi { messages, presence: presence.clone(), tokens: tokens.clone(), limits: config.limits.clone() };
        let routes = tonic::service::Routes::new(BackendServer::with_interceptor(api, ApiKeyCheck::new(&api_key)));
        let grpc_addr =
            process::serve_grpc(&mut tasks, grpc_listener, routes, &["natter.v1.Backend"], cancel.clone()).await?;
        tracing::info!(ws = %ws_addr, grpc = %grpc_addr, data_dir = %data_dir.display(), "natter serving");
        Ok(Self {
            ws_addr,
            grpc_addr,
            api_key,
            tokens,
            gateway: gateway_handle,
            cancel,
            store,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            tasks,
            storage,
        })
    }

    pub fn gateway(&self) -> &GatewayHandle {
        &self.gateway
    }

    /// A token that stops the node when cancelled (e.g. by a signal).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs until the cancel token fires or a server task fails, then stops.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.cancel.cancelled().await;
        self.shutdown().await
    }

    /// Ordered stop: stop accepting, tell every session to reconnect
    /// (goodbye), wait up to the grace period, then sync the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let stopped = self.tasks.stop(self.grace).await;
        self.store.sync_all().await.map_err(|e| anyhow::anyhow!("final store sync: {e}"))?;
        let storage = self.storage.stop(self.grace).await;
        tracing::info!("natter stopped");
        stopped.and(storage)
    }
}
