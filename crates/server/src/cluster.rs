//! The distributed mode: one role per process, over NATS (the bus) and a CQL
//! database (every piece of truth: messages, logs, groups, presence,
//! sessions, leases). Any number of processes of each role may run; none
//! keeps truth in its memory, so any of them may die at any time.
//!
//! - `message`: the send pipeline and groups (`natter.v1.MessageRole`);
//!   leases its id-generator node id from the database.
//! - `presence`: sessions, subscriptions, webhooks (`natter.v1.PresenceRole`);
//!   the background jobs run in whichever instance holds the leader lease.
//! - `gateway`: WebSocket clients and the public backend API
//!   (`natter.v1.Backend`); reaches the other roles over gRPC and receives
//!   its users' events from their NATS subjects.
//! - `conversation`: its service does not exist yet; it serves health only.
//!
//! Calls between roles carry the cluster's API key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_api::{
    ConversationRoleServer, MessageRoleServer, PresenceRoleServer, RemoteConversations, RemoteMessages, RemotePresence,
};
use natter_bus::nats::NatsBus;
use natter_gateway::Tokens;
use natter_message::MessageOptions;
use natter_presence::LeaderLease;
use natter_runtime::{Stage, Tasks};
use natter_store::Leases;
use natter_store::cql::{CqlCredentials, CqlOptions, CqlStore, migrate, open_session};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::config::Config;
use crate::grpc::ApiKeyCheck;
use crate::process;
pub use crate::role::Role;
use crate::wiring::{self, Apis, Backends};

/// The store options of the `[cql]` table (log retention from `[store]`).
pub fn cql_options(config: &Config) -> anyhow::Result<CqlOptions> {
    let c = &config.cql;
    let parse_err = |setting: &str, e: String| anyhow::anyhow!("{setting}: {e}");
    let options = CqlOptions {
        contact_points: c.contact_points.clone(),
        keyspace: c.keyspace.clone(),
        replication: c.replication.parse().map_err(|e| parse_err("cql.replication", e))?,
        consistency: c.consistency.parse().map_err(|e| parse_err("cql.consistency", e))?,
        serial_consistency: c.serial_consistency.parse().map_err(|e| parse_err("cql.serial_consistency", e))?,
        pool_size_per_host: c.pool_size_per_host,
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        local_datacenter: Some(c.local_datacenter.clone()).filter(|dc| !dc.is_empty()),
        credentials: (!c.username.is_empty())
            .then(|| CqlCredentials { username: c.username.clone(), password: c.password.clone() }),
        log_retention_events: config.store.log_retention_events,
        idempotency_window: config.store.idempotency_window(),
        ..CqlOptions::default()
    };
    options.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(options)
}

/// What a distributed process needs beyond the common checks. Secrets are
/// never generated here: each process would make up a different one.
pub fn validate(config: &Config, role: Option<Role>) -> anyhow::Result<()> {
    cql_options(config)?;
    let Some(role) = role else { return Ok(()) };
    if config.auth.api_key.is_empty() {
        anyhow::bail!(
            "auth.api_key must be set in the distributed mode (every process needs the same key; \
             e.g. NATTER_AUTH__API_KEY)"
        );
    }
    if role == Role::Gateway && config.auth.token_secret.is_empty() {
        anyhow::bail!(
            "auth.token_secret must be set in the distributed mode (every gateway needs the same secret; \
             e.g. NATTER_AUTH__TOKEN_SECRET)"
        );
    }
    if matches!(role, Role::Gateway | Role::Presence | Role::Message) {
        if config.nats.urls.is_empty() || config.nats.urls.iter().any(|u| u.trim().is_empty()) {
            anyhow::bail!("nats.urls: at least one nats://host:port is needed");
        }
        let prefix = &config.nats.subject_prefix;
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            anyhow::bail!("nats.subject_prefix = {prefix:?} must be 1+ of a-z A-Z 0-9 _ -");
        }
    }
    if role == Role::Gateway {
        for (setting, value) in [
            ("cluster.message_addr", &config.cluster.message_addr),
            ("cluster.presence_addr", &config.cluster.presence_addr),
        ] {
            value
                .parse::<tonic::transport::Uri>()
                .ok()
                .filter(|uri| uri.scheme().is_some() && uri.host().is_some())
                .ok_or_else(|| anyhow::anyhow!("{setting} = {value:?} is not a URI like http://host:port"))?;
        }
    }
    if config.cluster.call_timeout_ms == 0 {
        anyhow::bail!("cluster.call_timeout_ms must be greater than 0");
    }
    if config.cluster.node_id_lease_secs < 3 {
        anyhow::bail!("cluster.node_id_lease_secs must be at least 3");
    }
    Ok(())
}

/// `natter migrate`: creates or updates the schema, idempotently (several
/// concurrent runs are safe: migrations are applied under a lease row).
pub async fn run_migrate(config: &Config) -> anyhow::Result<()> {
    validate(config, None)?;
    let options = cql_options(config)?;
    let session = open_session(&options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let migrated = migrate(&session, &options.keyspace, &options.replication)
        .await
        .map_err(|e| anyhow::anyhow!("migrating keyspace {}: {e}", options.keyspace))?;
    tracing::info!(keyspace = %options.keyspace, from = migrated.from, to = migrated.to, applied = ?migrated.applied, "schema migrated");
    println!("keyspace {} at schema version {} (was {})", options.keyspace, migrated.to, migrated.from);
    Ok(())
}

/// One running role; `stop` ends it in order.
pub struct RoleProcess {
    pub role: Role,
    /// The WebSocket address (gateways only).
    pub ws_addr: Option<SocketAddr>,
    pub grpc_addr: SocketAddr,
    tasks: Tasks,
    grace: Duration,
}

impl std::fmt::Debug for RoleProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleProcess").field("role", &self.role).field("grpc_addr", &self.grpc_addr).finish()
    }
}

/// A name for this process that is unique in the cluster (the pod name
/// when there is one, for the operator's sake, plus randomness, because a
/// restarted process must not be mistaken for the dead one).
fn instance_name(role: Role) -> anyhow::Result<String> {
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_default()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let random = process::random_hex(4)?;
    Ok(if host.is_empty() { format!("{role}-{random}") } else { format!("{role}-{host}-{random}") })
}

async fn connect_store(config: &Config) -> anyhow::Result<CqlStore> {
    let options = cql_options(config)?;
    CqlStore::connect(options).await.map_err(|e| anyhow::anyhow!("cql store: {e}"))
}

/// The distributed backends: the CQL store and NATS.
async fn connect(config: &Config) -> anyhow::Result<(CqlStore, Backends)> {
    let store = connect_store(config).await?;
    let urls = config.nats.urls.join(",");
    let bus = NatsBus::connect(&urls, &config.nats.subject_prefix).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let backends = Backends { stores: store.stores(), bus: Arc::new(bus), sessions: store.sessions() };
    Ok((store, backends))
}

/// Claims a node id and keeps renewing it. Two processes with one node id
/// could mint the same message id, so a process that cannot renew before
/// its lease runs out stops (the task fails, which stops the process).
async fn hold_node_id(tasks: &Tasks, leases: Arc<dyn Leases>, owner: String, ttl: Duration) -> anyhow::Result<u16> {
    let node_id =
        natter_store::claim_node_id(leases.as_ref(), &owner, ttl).await.map_err(|e| anyhow::anyhow!("node id: {e}"))?;
    let name = format!("node-id/{node_id}");
    tasks.spawn(Stage::Services, "node-id-lease", |cancel| async move {
        let mut last_renewed = tokio::time::Instant::now();
        // Renewing at a third leaves two chances before the lease ends; stop
        // with a margin, as the database's clock and ours differ a little.
        let deadline = ttl * 2 / 3;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(ttl / 3) => {}
            }
            match leases.acquire(&name, &owner, ttl).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => anyhow::bail!("lease {name} was taken over; stopping so ids stay unique"),
                Err(e) if last_renewed.elapsed() >= deadline => {
                    anyhow::bail!("lease {name} could not be renewed in time ({e}); stopping so ids stay unique")
                }
                Err(e) => tracing::warn!(lease = %name, error = %e, "renewing the node id lease failed, retrying"),
            }
        }
        // Not released: sends still in flight during the stop may mint ids
        // with it, and a successor taking it at once could mint the same
        // ones. It runs out by itself; there are 1024 to choose from.
        Ok(())
    });
    Ok(node_id)
}

impl RoleProcess {
    /// Starts `role` with `config`; returns once it serves. The role's
    /// services are wired as in the single node (`wiring`); what differs is
    /// the backends (CQL, NATS) and that the other roles are gRPC clients.
    pub async fn start(role: Role, config: &Config) -> anyhow::Result<Self> {
        validate(config, Some(role))?;
        let tasks = Tasks::new();
        let instance = instance_name(role)?;
        let api_key = config.auth.api_key.clone();
        let key_check = ApiKeyCheck::new(&api_key);
        let grpc_listener = process::bind(&config.server.grpc_listen, "server.grpc_listen").await?;
        let mut ws_addr = None;
        let (routes, services): (Routes, &[&str]) = match role {
            Role::Message => {
                let (store, backends) = connect(config).await?;
                let ttl = Duration::from_secs(config.cluster.node_id_lease_secs);
                let node_id = hold_node_id(&tasks, store.leases(), instance.clone(), ttl).await?;
                tracing::info!(node_id, "node id leased");
                let options = MessageOptions {
                    node_id,
                    limits: config.limits.clone(),
                    recall_window: config.messages.recall_window(),
                };
                let messages = wiring::message_service(options, &backends);
                let server = MessageRoleServer::new(messages, config.limits.clone()).into_service();
                (Routes::new(InterceptedService::new(server, key_check)), &["natter.v1.MessageRole"])
            }
            Role::Presence => {
                let (store, backends) = connect(config).await?;
                let leader = LeaderLease { leases: store.leases(), owner: instance.clone() };
                let (options, limits) = (config.presence.clone(), config.limits.clone());
                let presence = wiring::presence_service(options, limits, &backends, Some(leader), &tasks).await?;
                let server = PresenceRoleServer::new(presence).into_service();
                (Routes::new(InterceptedService::new(server, key_check)), &["natter.v1.PresenceRole"])
            }
            Role::Gateway => {
                let (_, backends) = connect(config).await?;
                let timeout = Duration::from_millis(config.cluster.call_timeout_ms);
                let remote_err =
                    |e: natter_types::Error| anyhow::anyhow!("{}: {}", e.field.unwrap_or_default(), e.message);
                let apis = Apis {
                    messages: Arc::new(
                        RemoteMessages::connect_lazy(&config.cluster.message_addr, timeout)
                            .and_then(|m| m.with_api_key(&api_key))
                            .map_err(remote_err)?,
                    ),
                    presence: Arc::new(
                        RemotePresence::connect_lazy(&config.cluster.presence_addr, timeout)
                            .and_then(|p| p.with_api_key(&api_key))
                            .map_err(remote_err)?,
                    ),
                    conversations: Arc::new(
                        RemoteConversations::connect_lazy(&config.cluster.conversation_addr, timeout)
                            .and_then(|c| c.with_api_key(&api_key))
                            .map_err(remote_err)?,
                    ),
                };
                let tokens = Tokens::new(config.auth.token_secret.as_bytes(), config.auth.token_ttl_secs);
                let options = wiring::gateway_options(config, instance.clone());
                let gateway = wiring::gateway(options, &backends, &apis, tokens.clone(), &tasks);
                let ws_listener = process::bind(&config.server.listen, "server.listen").await?;
                ws_addr = Some(process::serve_http(&tasks, ws_listener, &gateway)?);
                (wiring::backend_api(&apis, tokens, config, &api_key), &["natter.v1.Backend"])
            }
            Role::Conversation => {
                let (_, backends) = connect(config).await?;
                let conversations = wiring::conversation_service(config.conversations.clone(), &backends);
                let server = ConversationRoleServer::new(conversations).into_service();
                (Routes::new(InterceptedService::new(server, key_check)), &["natter.v1.ConversationRole"])
            }
        };
        let grpc_addr = process::serve_grpc(&tasks, grpc_listener, routes, services).await?;
        tracing::info!(%role, instance = %instance, grpc = %grpc_addr, ws = ?ws_addr, "natter role serving");
        Ok(Self { role, ws_addr, grpc_addr, tasks, grace: Duration::from_secs(config.server.shutdown_grace_secs) })
    }

    /// A token that stops the process when cancelled (e.g. by a signal).
    pub fn cancel_token(&self) -> CancellationToken {
        self.tasks.stop_token()
    }

    /// Runs until the cancel token fires or a task fails, then stops in
    /// order under one deadline (`server.shutdown_grace_secs`): health turns
    /// NOT_SERVING, listeners close, a gateway tells every client to
    /// reconnect elsewhere and waits for them, background jobs end.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.tasks.stop_requested().await;
        let role = self.role;
        let result = self.tasks.stop(self.grace).await;
        tracing::info!(%role, "natter role stopped");
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn distributed_config() -> Config {
        let mut config = Config::default();
        config.auth.api_key = "k".repeat(32);
        config.auth.token_secret = "s".repeat(32);
        config
    }

    #[test]
    fn roles_refuse_missing_secrets_and_bad_settings_by_name() {
        let ok = distributed_config();
        for role in [Role::Gateway, Role::Presence, Role::Message, Role::Conversation] {
            validate(&ok, Some(role)).unwrap();
            let mut no_key = ok.clone();
            no_key.auth.api_key.clear();
            let err = validate(&no_key, Some(role)).unwrap_err().to_string();
            assert!(err.contains("auth.api_key"), "{role}: {err}");
        }
        let mut no_secret = ok.clone();
        no_secret.auth.token_secret.clear();
        assert!(validate(&no_secret, Some(Role::Gateway)).unwrap_err().to_string().contains("auth.token_secret"));
        validate(&no_secret, Some(Role::Message)).unwrap();

        type Breaker = fn(&mut Config);
        let cases: [(&str, Breaker); 5] = [
            ("cql.consistency", |c| c.cql.consistency = "MOST".into()),
            ("cql.replication", |c| c.cql.replication = "three".into()),
            ("cql.keyspace", |c| c.cql.keyspace = "Bad-Name".into()),
            ("cluster.message_addr", |c| c.cluster.message_addr = "message:7101".into()),
            ("nats.urls", |c| c.nats.urls.clear()),
        ];
        for (setting, break_it) in cases {
            let mut config = ok.clone();
            break_it(&mut config);
            let err = validate(&config, Some(Role::Gateway)).unwrap_err().to_string();
            assert!(err.contains(setting), "{setting}: {err}");
        }
    }

    #[test]
    fn cql_settings_reach_the_store_options() {
        let mut config = distributed_config();
        config.cql.consistency = "one".into();
        config.cql.local_datacenter = "dc2".into();
        config.cql.username = "natter".into();
        config.store.log_retention_events = 77;
        config.store.idempotency_window_secs = 3600;
        let options = cql_options(&config).unwrap();
        assert_eq!(options.consistency, natter_store::cql::CqlConsistency::One);
        assert_eq!(options.local_datacenter.as_deref(), Some("dc2"));
        assert_eq!(options.credentials.unwrap().username, "natter");
        assert_eq!(options.log_retention_events, 77);
        assert_eq!(options.idempotency_window, std::time::Duration::from_secs(3600));
    }
}
