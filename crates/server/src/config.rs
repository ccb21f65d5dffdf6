//! Configuration, layered: defaults → TOML file → `NATTER_` environment
//! (`NATTER_SERVER__LISTEN=…`, double underscore between table and key) →
//! command-line flags. Validated once at start; every error names the setting.
//!
//! Every setting lives in a table, so only `NATTER_<TABLE>__<KEY>` variables
//! are settings; others with the prefix (`NATTER_CONFIG`, and the scripts' and
//! tests' `NATTER_INFRA_DIR`, `NATTER_NATS`, …) are not read as settings. An
//! unknown table or key in a setting variable is still an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use natter_types::Limits;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub limits: Limits,
    pub presence: natter_presence::PresenceOptions,
    pub conversations: natter_conversation::ConversationOptions,
    pub messages: MessagesConfig,
    pub log: LogConfig,
    /// Distributed mode: the NATS servers of the bus.
    pub nats: NatsConfig,
    /// Distributed mode: the CQL database (ScyllaDB or Cassandra).
    pub cql: CqlConfig,
    /// Distributed mode: where the other roles are.
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// WebSocket (`/ws`) and HTTP (`/healthz`) address.
    pub listen: String,
    /// Backend gRPC API address.
    pub grpc_listen: String,
    /// Where the embedded store and generated secrets live.
    pub data_dir: PathBuf,
    /// 0–1023; distinguishes id generators of several processes.
    pub node_id: u16,
    /// Seconds to wait for sessions to say goodbye on shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7100".into(),
            grpc_listen: "127.0.0.1:7101".into(),
            data_dir: PathBuf::from("natter-data"),
            node_id: 0,
            shutdown_grace_secs: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens. Empty: generated once and kept in
    /// `<data_dir>/token_secret`.
    pub token_secret: String,
    /// Lifetime of minted tokens when the caller does not say.
    pub token_ttl_secs: u64,
    /// Key the backend gRPC API requires (`authorization: Bearer <key>`).
    /// Empty: generated once and kept in `<data_dir>/api_key`.
    pub api_key: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { token_secret: String::new(), token_ttl_secs: 24 * 3600, api_key: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
    pub replay_page: usize,
    /// Bytes read from a socket per call. Every idle connection holds this
    /// much; a larger frame is still read whole, over several calls.
    pub read_buffer_bytes: usize,
    /// Frames are written out once this many bytes are queued (or at the
    /// end of a batch).
    pub write_buffer_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            ping_interval_secs: 25,
            idle_timeout_secs: 60,
            replay_page: 256,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Events kept in each user's log for resuming devices.
    pub log_retention_events: u64,
    /// Single node: memtable size of each keyspace in MiB, and the size of
    /// the tables its compactions write; fixed when the keyspace is created
    /// (a new data directory). Larger memtables mean
    /// longer write stalls (`DEFAULT_MEMTABLE_BYTES`, docs/PERFORMANCE.md#settings-that-matter).
    pub memtable_mib: u64,
    /// How long a client message id makes its sends idempotent, counted
    /// from the stored message's timestamp; records are dropped after it.
    pub idempotency_window_secs: u64,
    /// Single node: users' log heads kept in memory at most (~150 bytes
    /// each); the rest are read from disk when needed.
    pub heads_cached: usize,
}

/// Fewest `store.heads_cached`: below it, busy users' heads would be read
/// from disk at nearly every round.
const MIN_HEADS_CACHED: usize = 1024;

/// Longest `store.idempotency_window_secs`: a year.
const MAX_IDEMPOTENCY_WINDOW_SECS: u64 = 365 * 24 * 3600;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            log_retention_events: 10_000,
            memtable_mib: natter_store::embedded::DEFAULT_MEMTABLE_BYTES >> 20,
            idempotency_window_secs: natter_store::DEFAULT_IDEMPOTENCY_WINDOW.as_secs(),
            heads_cached: natter_store::embedded::EmbeddedOptions::default().heads_cached,
        }
    }
}

impl StoreConfig {
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_window_secs)
    }
}

/// The message service's rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// R8: seconds after sending (server time) during which a sender may
    /// recall a message; 1 to 604800 (7 days).
    pub recall_window_secs: u64,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self { recall_window_secs: natter_types::DEFAULT_RECALL_WINDOW.as_secs() }
    }
}

impl MessagesConfig {
    pub fn recall_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.recall_window_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `natter_gateway=debug,info`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info,fjall=warn,lsm_tree=warn".into(), format: "text".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// One or more `nats://host:port`; the client fails over and reconnects.
    pub urls: Vec<String>,
    /// First token of every subject (`<prefix>.user.<id>`), so several
    /// deployments can share one NATS.
    pub subject_prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self { urls: vec!["nats://127.0.0.1:4222".into()], subject_prefix: "natter".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CqlConfig {
    /// `host:port` of one or more nodes; the driver discovers the rest.
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// Reads and writes: ONE, QUORUM, LOCAL_QUORUM, ….
    pub consistency: String,
    /// The Paxos phase of conditional writes: SERIAL or LOCAL_SERIAL.
    pub serial_consistency: String,
    /// How `natter migrate` creates the keyspace: `simple:RF` or
    /// `network_topology:DC=RF,DC=RF`. An existing keyspace is left alone.
    pub replication: String,
    /// Prefer this data center's nodes; empty: no preference.
    pub local_datacenter: String,
    /// PasswordAuthenticator credentials; empty: none.
    pub username: String,
    pub password: String,
    pub pool_size_per_host: usize,
    pub request_timeout_ms: u64,
}

impl Default for CqlConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "natter".into(),
            consistency: "LOCAL_QUORUM".into(),
            serial_consistency: "LOCAL_SERIAL".into(),
            replication: "simple:1".into(),
            local_datacenter: String::new(),
            username: String::new(),
            password: String::new(),
            pool_size_per_host: 2,
            request_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// gRPC URI of the message role (a Kubernetes Service in front of its pods).
    pub message_addr: String,
    pub presence_addr: String,
    pub conversation_addr: String,
    /// Deadline of one call to another role.
    pub call_timeout_ms: u64,
    /// A process holds its id-generator node id under a lease this long and
    /// renews it every third of it; one that cannot renew stops.
    pub node_id_lease_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            message_addr: "http://127.0.0.1:7201".into(),
            presence_addr: "http://127.0.0.1:7301".into(),
            conversation_addr: "http://127.0.0.1:7401".into(),
            call_timeout_ms: 5_000,
            node_id_lease_secs: 30,
        }
    }
}

/// Flag values that override everything else; `None` leaves a setting alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Loads every layer and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let env = Env::prefixed("NATTER_").filter(|key| key.as_str().contains("__")).split("__");
        figment = figment.merge(env).merge(Serialized::default("server", overrides));
        let config: Config = figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, value) in [("server.listen", &self.server.listen), ("server.grpc_listen", &self.server.grpc_listen)]
        {
            value
                .parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("{name} = {value:?} is not an ip:port address: {e}"))?;
        }
        if self.server.node_id > natter_types::IdGenerator::MAX_NODE {
            anyhow::bail!(
                "server.node_id = {} must be at most {}",
                self.server.node_id,
                natter_types::IdGenerator::MAX_NODE
            );
        }
        if self.auth.token_ttl_secs == 0 {
            anyhow::bail!("auth.token_ttl_secs must be greater than 0");
        }
        if !self.auth.token_secret.is_empty() && self.auth.token_secret.len() < 16 {
            anyhow::bail!("auth.token_secret must be at least 16 bytes (or empty to generate one)");
        }
        if self.gateway.ping_interval_secs == 0 || self.gateway.idle_timeout_secs <= self.gateway.ping_interval_secs {
            anyhow::bail!(
                "gateway.idle_timeout_secs must be greater than gateway.ping_interval_secs, which must be > 0"
            );
        }
        let max_recall = natter_types::MAX_RECALL_WINDOW.as_secs();
        if !(1..=max_recall).contains(&self.messages.recall_window_secs) {
            anyhow::bail!(
                "messages.recall_window_secs = {} must be between 1 and {max_recall} (7 days)",
                self.messages.recall_window_secs
            );
        }
        if self.store.log_retention_events == 0 {
            anyhow::bail!("store.log_retention_events must be greater than 0");
        }
        if !(1..=1024).contains(&self.store.memtable_mib) {
            anyhow::bail!("store.memtable_mib = {} must be between 1 and 1024", self.store.memtable_mib);
        }
        if self.store.heads_cached < MIN_HEADS_CACHED {
            anyhow::bail!("store.heads_cached = {} must be at least {MIN_HEADS_CACHED}", self.store.heads_cached);
        }
        let window = self.store.idempotency_window_secs;
        if !(60..=MAX_IDEMPOTENCY_WINDOW_SECS).contains(&window) {
            anyhow::bail!(
                "store.idempotency_window_secs = {window} must be between 60 (a minute) and {MAX_IDEMPOTENCY_WINDOW_SECS} (a year)"
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            anyhow::bail!("log.format = {:?} must be text or json", self.log.format);
        }
        self.limits.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.presence.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.conversations.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(())
    }

    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn layers_apply_in_order_and_errors_name_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("natter.toml", "[server]\nlisten = \"127.0.0.1:9000\"\nnode_id = 3\n[limits]\nmax_body_bytes = 1000\nmax_frame_bytes = 4000\n")?;
            jail.set_env("NATTER_SERVER__NODE_ID", "5");
            // The file's own variable and the scripts' are not settings.
            jail.set_env("NATTER_CONFIG", "natter.toml");
            jail.set_env("NATTER_INFRA_DIR", "/tmp/infra");
            let overrides = Overrides { data_dir: Some("/tmp/x".into()), ..Overrides::default() };
            let config = Config::load(Some(Path::new("natter.toml")), &overrides).map_err(|e| e.to_string())?;
            assert_eq!(config.server.listen, "127.0.0.1:9000", "from the file");
            assert_eq!(config.server.node_id, 5, "env beats the file");
            assert_eq!(config.server.data_dir, PathBuf::from("/tmp/x"), "flags beat everything");
            assert_eq!(config.limits.max_body_bytes, 1000);
            assert_eq!(config.limits.max_sessions_per_user, 4, "defaults fill the rest");

            jail.set_env("NATTER_SERVER__LISTEN", "nowhere");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("server.listen"), "{err}");
            jail.set_env("NATTER_SERVER__LISTEN", "127.0.0.1:1");
            jail.set_env("NATTER_LIMITS__MAX_SESSIONS_PER_USER", "0");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("limits.max_sessions_per_user"), "{err}");
            jail.set_env("NATTER_LIMITS__MAX_SESSIONS_PER_USER", "2");
            jail.set_env("NATTER_STORE__MEMTABLE_MIB", "0");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("store.memtable_mib = 0") && err.contains("1 and 1024"), "{err}");
            jail.set_env("NATTER_STORE__MEMTABLE_MIB", "16");
            jail.set_env("NATTER_STORE__HEADS_CACHED", "10");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("store.heads_cached = 10") && err.contains("at least 1024"), "{err}");
            jail.set_env("NATTER_STORE__HEADS_CACHED", "5000");
            assert_eq!(Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?.store.heads_cached, 5000);
            assert_eq!(Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?.store.memtable_mib, 16);
            jail.set_env("NATTER_STORE__IDEMPOTENCY_WINDOW_SECS", "59");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("store.idempotency_window_secs = 59") && err.contains("between 60"), "{err}");
            jail.set_env("NATTER_STORE__IDEMPOTENCY_WINDOW_SECS", "86400");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.store.idempotency_window(), Duration::from_secs(86400));
            jail.set_env("NATTER_MESSAGES__RECALL_WINDOW_SECS", "604801");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("messages.recall_window_secs = 604801") && err.contains("7 days"), "{err}");
            jail.set_env("NATTER_MESSAGES__RECALL_WINDOW_SECS", "600");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.messages.recall_window(), Duration::from_secs(600));
            jail.create_file("bad.toml", "[server]\nlisen = \"x\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("lisen"), "unknown keys are named: {err}");
            jail.set_env("NATTER_LIMTS__MAX_SESSIONS_PER_USER", "2");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("limts"), "unknown tables in the environment are named: {err}");
            Ok(())
        });
    }

    #[test]
    fn dumped_config_loads_back_to_the_same() {
        let config = Config::default();
        let text = config.to_toml().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }
}
