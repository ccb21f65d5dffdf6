//! The distributed deployment for end-to-end tests: one `natter` process per
//! role (message, presence, conversation and [`GATEWAYS`] gateways) over a
//! real nats-server and a real Cassandra.
//!
//! - **Infrastructure** comes from `NATTER_NATS` (default
//!   `nats://127.0.0.1:4222`) and `NATTER_CQL` (default `127.0.0.1:9042`);
//!   start it with `deploy/nats.sh start` and `deploy/cassandra.sh start`.
//!   Without it every test fails and says so: nothing is skipped.
//! - **The binary** is `target/<profile>/natter`, next to the test's own
//!   `deps/` directory, as `cargo build -p natter-server --features
//!   distributed` (or `cargo test --workspace`) leaves it; `NATTER_BIN`
//!   overrides. The harness never builds it.
//! - **Data:** a cluster has a keyspace to itself while it runs: the
//!   presence role's leader lease and the gateway leases are per keyspace,
//!   so two clusters on one keyspace would run each other's background
//!   jobs. Migrating one takes seconds, so keyspaces
//!   (`natter_e2e_<secs>_<pid>_<n>`, made with `natter migrate`) are kept in
//!   a pool and reused by later clusters: a cluster stops its presence and
//!   message roles with SIGTERM at the end, which gives their leases back.
//!   A cluster with webhook receivers gets a new keyspace: one of the pool
//!   may still hold an earlier cluster's sessions, which its presence leader
//!   would report offline (to the receivers) when their gateway's lease ends.
//!   User ids are still unique per cluster ([`Cluster::user`]) since the data
//!   stays, and each cluster has its own NATS subject prefix. Keyspaces of
//!   runs that are over (their process is gone) or older than an hour are
//!   dropped at the start of a run.
//! - **Processes** listen on ports from below the ephemeral range (see
//!   `listen_port`), the same ones again after a restart. They die with the test (kill on drop). Each
//!   keeps its stderr in a file; a role that fails to start panics with its
//!   tail, and a failing test prints every role's tail and keeps the files.
//! - **Parallelism:** at most `NATTER_E2E_CLUSTERS` (default 2) clusters run
//!   at once, whatever `--test-threads` says: each is five (scaled: seven)
//!   processes and the database is shared, which a 2-core machine cannot run
//!   many of.
//! - **Scaled:** [`Cluster::start_scaled`] runs [`SCALED`] message and
//!   [`SCALED`] presence processes instead of one each. The gateways reach
//!   each pair through one address, a round-robin TCP [`Balancer`] (gRPC
//!   connections are balanced per connection, as by a Kubernetes Service);
//!   that address is `[cluster] message_addr` / `presence_addr`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use natter_client::{Client, ClientOptions, Events};
use natter_gateway::Tokens;
use natter_server::Config;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{Deployment, connect_caught_up, test_options};

/// Gateways per cluster: two, so that users and devices can be spread over
/// processes that only share NATS and the database.
pub const GATEWAYS: usize = 2;

/// Message and presence processes each of a [scaled](Cluster::start_scaled)
/// cluster (one each otherwise).
pub const SCALED: usize = 2;

/// From spawn to the ready line. Generous: a role connects to NATS and
/// Cassandra and prepares its statements, on a machine that may be running
/// several clusters and the database at once.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// From SIGTERM to exit, on top of `server.shutdown_grace_secs`.
const STOP_MARGIN: Duration = Duration::from_secs(20);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);
/// For the roles behind the gateways to stop at the end of a test.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(15);
/// Lines of a process's stderr shown when something went wrong.
const TAIL_LINES: usize = 40;

const TOKEN_SECRET: &str = "e2e-distributed-token-secret-0123456789";
const API_KEY: &str = "e2e-distributed-api-key";

/// One process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Message process `0..n`: `Message(0)` only, unless [scaled](Cluster::start_scaled).
    Message(usize),
    /// Presence process `0..n`: `Presence(0)` only, unless [scaled](Cluster::start_scaled).
    Presence(usize),
    Conversation,
    /// Gateway `0..GATEWAYS`.
    Gateway(usize),
}

impl Role {
    fn subcommand(self) -> &'static str {
        match self {
            Self::Message(_) => "message",
            Self::Presence(_) => "presence",
            Self::Conversation => "conversation",
            Self::Gateway(_) => "gateway",
        }
    }

    fn name(self) -> String {
        match self {
            Self::Message(i) | Self::Presence(i) | Self::Gateway(i) => format!("{}-{i}", self.subcommand()),
            Self::Conversation => self.subcommand().to_owned(),
        }
    }
}

/// The node id in a message id: 41 bits of milliseconds, 10 bits of node
/// id, 12 bits of sequence (`natter_types::IdGenerator`). Tells which
/// message process minted an id (see [`Cluster::node_id`]).
pub fn node_of(message_id: u64) -> u16 {
    ((message_id >> 12) & 0x3ff) as u16
}

// ------------------------------------------------------------------ environment

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

pub fn nats_url() -> String {
    env_or("NATTER_NATS", "nats://127.0.0.1:4222")
}

pub fn cql_address() -> String {
    env_or("NATTER_CQL", "127.0.0.1:9042")
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Fails the test with what is missing and how to get it. Never a skip: a
/// suite that silently does nothing without its database looks green.
fn infra_missing(what: String) -> ! {
    let required = std::env::var("NATTER_REQUIRE_DISTRIBUTED").is_ok_and(|v| v == "1");
    panic!(
        "{}{what}\nThe distributed tests need a nats-server and Cassandra: `deploy/nats.sh start` and \
         `deploy/cassandra.sh start` (or point NATTER_NATS / NATTER_CQL at them), and the natter binary \
         built with `cargo build -p natter-server --features distributed`. These tests do not skip.",
        if required { "NATTER_REQUIRE_DISTRIBUTED=1 and " } else { "" }
    )
}

/// `target/<profile>/natter`: a test binary is `target/<profile>/deps/<name>-<hash>`.
fn natter_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("NATTER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary lives in target/<profile>/deps");
    profile_dir.join("natter")
}

/// The binary links natter-server's library: a library built after it (by
/// this test's build) means the server changed and the binary was not
/// rebuilt. Only a warning (shown with a failure): the feature sets of the
/// two builds may differ without any code change.
fn warn_if_stale(bin: &Path) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(bin_time) = modified(bin) else { return };
    let Some(deps) = bin.parent().map(|dir| dir.join("deps")) else { return };
    let Ok(entries) = std::fs::read_dir(&deps) else { return };
    let newest_lib = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("libnatter_server-"))
        .filter_map(|e| modified(&e.path()))
        .max();
    if newest_lib.is_some_and(|lib| lib > bin_time) {
        eprintln!(
            "warning: {} is older than natter-server's library; if the server changed, rebuild it with \
             `cargo build -p natter-server --features distributed`",
            bin.display()
        );
    }
}

/// Host and port of a `nats://host:port` URL.
fn nats_host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', ',']).next().unwrap_or(rest).to_owned()
}

/// A NATS server greets every connection with an `INFO` line.
async fn check_nats(url: &str) -> Result<(), String> {
    let address = nats_host_port(url);
    let greeting = async {
        let mut stream = TcpStream::connect(&address).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf == b"INFO" { Ok(()) } else { Err(format!("not a NATS greeting: {:?}", String::from_utf8_lossy(&buf))) }
    };
    match tokio::time::timeout(Duration::from_secs(5), greeting).await {
        Ok(result) => result,
        Err(_) => Err("no greeting within 5 s".into()),
    }
}

// ------------------------------------------------------------------ per-run setup

/// What every cluster of this test binary run shares.
struct Run {
    bin: PathBuf,
    /// Keyspace names are this plus `_<n>`.
    keyspace_prefix: String,
}

static RUN: OnceCell<Run> = OnceCell::const_new();

/// Migrated keyspaces no cluster is using, and how many were made.
static KEYSPACES: Mutex<(Vec<String>, usize)> = Mutex::new((Vec::new(), 0));

/// Checks the infrastructure and the binary and drops stale keyspaces, once
/// per process (a failure is retried, and so reported, by every test).
async fn run() -> &'static Run {
    RUN.get_or_init(|| async {
        let bin = natter_binary();
        if !bin.is_file() {
            infra_missing(format!("no natter binary at {}", bin.display()));
        }
        warn_if_stale(&bin);
        let nats = nats_url();
        if let Err(e) = check_nats(&nats).await {
            infra_missing(format!("no nats-server at {nats} ({e})"));
        }
        let keyspace_prefix = format!("natter_e2e_{}_{}", unix_secs(), std::process::id());
        drop_stale_keyspaces(&format!("{keyspace_prefix}_0")).await;
        Run { bin, keyspace_prefix }
    })
    .await
}

/// A migrated keyspace for one cluster, from the pool or new (`fresh`).
async fn take_keyspace(run: &Run, fresh: bool) -> String {
    let name = {
        let mut pool = KEYSPACES.lock();
        if !fresh && let Some(free) = pool.0.pop() {
            return free;
        }
        pool.1 += 1;
        format!("{}_{}", run.keyspace_prefix, pool.1)
    };
    migrate(&run.bin, &name).await;
    name
}

/// Drops the keyspaces of earlier runs: those whose process is gone (on this
/// machine) or that are older than an hour. A run cannot drop its own at
/// the end: a test binary has no "after all tests" hook.
async fn drop_stale_keyspaces(keyspace: &str) {
    let options = natter_store::cql::CqlOptions {
        contact_points: vec![cql_address()],
        keyspace: keyspace.to_owned(),
        request_timeout: Duration::from_secs(60),
        ..natter_store::cql::CqlOptions::default()
    };
    let session = match natter_store::cql::open_session(&options).await {
        Ok(session) => session,
        Err(e) => infra_missing(format!("no CQL database at {} ({})", cql_address(), e.message)),
    };
    let rows = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
        .await
        .expect("list keyspaces")
        .into_rows_result()
        .expect("keyspace rows");
    let now = unix_secs();
    for row in rows.rows::<(String,)>().expect("keyspace names") {
        let Ok((name,)) = row else { continue };
        let Some(rest) = name.strip_prefix("natter_e2e_") else { continue };
        let mut parts = rest.split('_').map(|s| s.parse::<u64>().ok());
        let (Some(Some(secs)), Some(Some(pid))) = (parts.next(), parts.next()) else { continue };
        let over = pid != u64::from(std::process::id()) && !Path::new(&format!("/proc/{pid}")).exists();
        if over || secs + 3600 < now {
            eprintln!("dropping stale test keyspace {name}");
            let _ = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ()).await;
        }
    }
}

async fn migrate(bin: &Path, keyspace: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.cql.contact_points = vec![cql_address()];
    config.cql.keyspace = keyspace.to_owned();
    config.cql.consistency = "ONE".into();
    let path = dir.path().join("migrate.toml");
    std::fs::write(&path, config.to_toml().expect("config as toml")).expect("write the migrate config");
    let mut command = Command::new(bin);
    command.arg("migrate").arg("--config").arg(&path).kill_on_drop(true);
    without_natter_env(&mut command);
    let output = match tokio::time::timeout(MIGRATE_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("running {} migrate: {e}", bin.display()),
        Err(_) => panic!("`natter migrate` of {keyspace} did not finish within {MIGRATE_TIMEOUT:?}"),
    };
    if !output.status.success() {
        infra_missing(format!(
            "`{} migrate` of keyspace {keyspace} failed ({}):\n{}{}",
            bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
}

/// The harness's own `NATTER_*` variables (`NATTER_NATS`, `NATTER_CQL`, …)
/// would be read by natter as settings (`NATTER_CQL` as the `[cql]` table):
/// children get their settings from their config file only.
fn without_natter_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NATTER_") {
            command.env_remove(name);
        }
    }
}

/// The lowest port the kernel hands out for outgoing connections and port-0
/// binds (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A free port for a process to listen on, and to listen on again after a
/// restart. Not one of port 0's: those are from the ephemeral range, so
/// while the process is down, an outgoing connection or a port-0 bind (of
/// any program on the machine, e.g. another test run) may take it. These
/// come from below that range (20000 up), at random, never twice in this
/// run, and free when picked.
fn listen_port() -> u16 {
    use std::hash::BuildHasher;
    static TAKEN: LazyLock<Mutex<std::collections::HashSet<u16>>> = LazyLock::new(Mutex::default);
    static RANDOM: LazyLock<std::collections::hash_map::RandomState> = LazyLock::new(Default::default);
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    const LOW: u16 = 20_000;
    let high = ephemeral_low();
    if high <= LOW + 1_000 {
        // An unusual port range: take what the kernel gives.
        return std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    }
    for _ in 0..1_000 {
        let draw = RANDOM.hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
        let port = LOW + (draw % u64::from(high - LOW)) as u16;
        // Marked first: one in use now is no good later either.
        if TAKEN.lock().insert(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{high}")
}

fn slots() -> Arc<Semaphore> {
    static SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
        let n = std::env::var("NATTER_E2E_CLUSTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2usize);
        Arc::new(Semaphore::new(n.max(1)))
    });
    SLOTS.clone()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    if let Some(pid) = pid {
        // ESRCH: it is already gone, which is what the signal was for.
        let _ = rustix::process::kill_process(pid, signal);
    }
}

// ------------------------------------------------------------------ one process

struct Process {
    role: Role,
    /// Its own config: the cluster's settings plus its addresses, pinned to
    /// the bound ones after the first start.
    config: Config,
    dir: PathBuf,
    child: Option<Child>,
    ws: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    starts: u32,
}

impl Process {
    fn new(role: Role, config: &Config, cluster_dir: &Path) -> Self {
        let dir = cluster_dir.join(role.name());
        std::fs::create_dir_all(&dir).expect("process dir");
        let mut config = config.clone();
        config.server.data_dir = dir.join("data");
        config.server.grpc_listen = format!("127.0.0.1:{}", listen_port());
        // Only gateways serve WebSockets.
        config.server.listen = if matches!(role, Role::Gateway(_)) {
            format!("127.0.0.1:{}", listen_port())
        } else {
            "127.0.0.1:0".into()
        };
        Self { role, config, dir, child: None, ws: None, grpc: None, starts: 0 }
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    /// What it wrote to stderr (its log) since its last start.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        let marker = format!("=== harness: start #{} of {} ===", self.starts, self.role.name());
        match text.rfind(&marker) {
            Some(at) => text[at + marker.len()..].to_owned(),
            None => text,
        }
    }

    fn failure(&self, why: &str) -> String {
        format!(
            "{} {why}\n--- last lines of {} ---\n{}",
            self.role.name(),
            self.stderr_path().display(),
            tail(&self.stderr_path(), TAIL_LINES)
        )
    }

    /// Writes the config and spawns the process; the receiver gets its ready line.
    fn spawn(&mut self, bin: &Path) -> oneshot::Receiver<String> {
        assert!(self.child.is_none(), "{} is already running", self.role.name());
        self.starts += 1;
        let config_path = self.dir.join("natter.toml");
        std::fs::write(&config_path, self.config.to_toml().expect("config as toml")).expect("write config");
        // Appended across restarts, each start marked, so one file tells the story.
        let mut stderr =
            std::fs::OpenOptions::new().create(true).append(true).open(self.stderr_path()).expect("stderr file");
        use std::io::Write;
        let _ = writeln!(stderr, "=== harness: start #{} of {} ===", self.starts, self.role.name());
        let mut command = Command::new(bin);
        command
            .arg(self.role.subcommand())
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        without_natter_env(&mut command);
        let mut child =
            command.spawn().unwrap_or_else(|e| panic!("spawning {} {}: {e}", bin.display(), self.role.name()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = oneshot::channel();
        let name = self.role.name();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("natter ready ")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(line);
                    continue;
                }
                // The contract has nothing else on stdout; show it rather than lose it.
                eprintln!("[{name} stdout] {line}");
            }
        });
        self.child = Some(child);
        ready_rx
    }

    /// Waits for the ready line; pins the bound addresses.
    async fn ready(&mut self, ready: oneshot::Receiver<String>) {
        let child = self.child.as_mut().expect("spawned");
        let outcome = tokio::time::timeout(START_TIMEOUT, async {
            tokio::select! {
                line = ready => line.map_err(|_| None),
                status = child.wait() => Err(status.ok()),
            }
        })
        .await;
        let line = match outcome {
            Ok(Ok(line)) => line,
            // Stdout closed: the process is exiting.
            Ok(Err(None)) => {
                let status = child.wait().await.ok();
                panic!("{}", self.failure(&format!("exited before it was ready ({status:?})")));
            }
            Ok(Err(Some(status))) => panic!("{}", self.failure(&format!("exited before it was ready ({status})"))),
            Err(_) => panic!("{}", self.failure(&format!("printed no ready line within {START_TIMEOUT:?}"))),
        };
        self.parse_ready(&line);
        if let Some(ws) = self.ws {
            self.config.server.listen = ws.to_string();
        }
        if let Some(grpc) = self.grpc {
            self.config.server.grpc_listen = grpc.to_string();
        }
    }

    /// `natter ready role=<role> ws=<ip:port> grpc=<ip:port>`
    fn parse_ready(&mut self, line: &str) {
        let fields: HashMap<&str, &str> =
            line.split_whitespace().skip(2).filter_map(|field| field.split_once('=')).collect();
        let addr = |key: &str| fields.get(key).map(|a| a.parse::<SocketAddr>().expect("an ip:port in the ready line"));
        assert_eq!(fields.get("role").copied(), Some(self.role.subcommand()), "ready line {line:?}");
        self.grpc = Some(addr("grpc").unwrap_or_else(|| panic!("no grpc= in the ready line {line:?}")));
        self.ws = addr("ws");
        if matches!(self.role, Role::Gateway(_)) {
            assert!(self.ws.is_some(), "a gateway's ready line names its ws address: {line:?}");
        }
    }

    async fn start(&mut self, bin: &Path) {
        let ready = self.spawn(bin);
        self.ready(ready).await;
    }

    /// SIGKILL: nothing of the shutdown path runs.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, rustix::process::Signal::KILL);
            let _ = child.wait().await;
        }
    }

    /// SIGTERM and wait for a clean exit (status 0).
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(&child, rustix::process::Signal::TERM);
        let limit = Duration::from_secs(self.config.server.shutdown_grace_secs) + STOP_MARGIN;
        let status: Option<ExitStatus> = tokio::time::timeout(limit, child.wait()).await.ok().and_then(Result::ok);
        match status {
            Some(status) if status.success() => {}
            Some(status) => panic!("{}", self.failure(&format!("did not stop cleanly after SIGTERM: {status}"))),
            None => {
                let _ = child.start_kill();
                panic!("{}", self.failure(&format!("still running {limit:?} after SIGTERM")));
            }
        }
    }
}

/// SIGTERM to each running process, then waits for all of them, at most
/// `limit` (SIGKILL after that). Blocking on purpose: it runs in `Drop`.
/// True if all of them exited by themselves.
fn terminate_blocking(mut processes: Vec<&mut Process>, limit: Duration) -> bool {
    for p in &processes {
        if let Some(child) = &p.child {
            signal(child, rustix::process::Signal::TERM);
        }
    }
    let deadline = std::time::Instant::now() + limit;
    let mut clean = true;
    for p in &mut processes {
        let Some(child) = p.child.as_mut() else { continue };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    clean &= status.success();
                    break;
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    eprintln!("{} did not stop within {limit:?} of SIGTERM; killing it", p.role.name());
                    let _ = child.start_kill();
                    clean = false;
                    break;
                }
            }
        }
        p.child = None;
    }
    clean
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // kill_on_drop would do it too; say it where it matters.
            let _ = child.start_kill();
        }
    }
}

// ------------------------------------------------------------------ the cluster

/// Which gateway each user's connections go to: a user's first connection
/// goes to gateway `k % GATEWAYS` for the `k`-th user seen, every further one
/// to the next gateway. So the first two users of a scenario (alice, bob)
/// land on different gateways, and a user's second device on the other
/// gateway than the first.
#[derive(Default)]
struct Routing {
    users: HashMap<String, (usize, usize)>,
}

impl Routing {
    fn next(&mut self, name: &str) -> usize {
        let seen = self.users.len();
        let (first, connections) = self.users.entry(name.to_ascii_lowercase()).or_insert((seen % GATEWAYS, 0));
        let gateway = (*first + *connections) % GATEWAYS;
        *connections += 1;
        gateway
    }
}

pub struct Cluster {
    config: Config,
    processes: Vec<Process>,
    tokens: Tokens,
    suffix: String,
    routing: Mutex<Routing>,
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    /// Back to the pool at the end (before the slot is given up).
    keyspace: Option<String>,
    /// Message and presence processes each.
    instances: usize,
    /// In front of the message and the presence processes when there are
    /// several of each; made at the first start, kept across restarts (the
    /// processes keep their addresses).
    fronts: Option<Fronts>,
    _slot: OwnedSemaphorePermit,
}

/// The balancers a scaled cluster's gateways reach the roles through.
struct Fronts {
    message: Balancer,
    presence: Balancer,
}

impl Cluster {
    /// Starts on the shared nats-server (`NATTER_NATS`).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on_nats(&nats_url(), adjust).await
    }

    /// Starts on the given NATS (e.g. a [`NatsServer`] the test owns).
    pub async fn start_on_nats(nats: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::launch(nats, 1, adjust).await
    }

    /// Starts with [`SCALED`] message processes (`Role::Message(0..)`) and
    /// [`SCALED`] presence processes (`Role::Presence(0..)`), each pair behind
    /// a round-robin [`Balancer`] whose address the gateways are configured
    /// with: the first gateway to connect to a role gets its process 0, the
    /// second its process 1; a connection to a process that is down goes to
    /// the other one.
    pub async fn start_scaled(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::launch(&nats_url(), SCALED, adjust).await
    }

    async fn launch(nats: &str, instances: usize, adjust: impl FnOnce(&mut Config)) -> Self {
        let run = run().await;
        let slot = slots().acquire_owned().await.expect("the semaphore is never closed");
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix(&format!("natter-e2e-c{n}-")).tempdir().expect("temp dir");

        let mut config = Config::default();
        // Each process gets its own ports (`Process::new`).
        config.server.shutdown_grace_secs = 5;
        config.auth.token_secret = TOKEN_SECRET.into();
        config.auth.api_key = API_KEY.into();
        config.nats.urls = vec![nats.to_owned()];
        // Clusters of one run share NATS: each keeps to its own subjects.
        config.nats.subject_prefix = format!("e2e{}c{n}", std::process::id());
        config.cql.contact_points = vec![cql_address()];
        // A one-node test cluster: LOCAL_QUORUM would mean the same, ONE says so.
        config.cql.consistency = "ONE".into();
        adjust(&mut config);
        // A used keyspace may hold sessions of an earlier cluster's gateways
        // (killed at its end, before they could report every close): its
        // presence leader takes them offline once their lease runs out, and
        // reports that to the webhook receivers of whoever leads then.
        let keyspace = take_keyspace(run, !config.presence.webhook.urls.is_empty()).await;
        config.cql.keyspace = keyspace.clone();
        config.validate().expect("valid test config");
        let tokens = natter_server::node::tokens(&config).expect("token signer");

        let processes = (0..instances)
            .map(Role::Message)
            .chain((0..instances).map(Role::Presence))
            .chain([Role::Conversation])
            .chain((0..GATEWAYS).map(Role::Gateway))
            .map(|role| Process::new(role, &config, dir.path()))
            .collect();
        let mut cluster = Self {
            config,
            processes,
            tokens,
            suffix: format!("c{n}"),
            routing: Mutex::default(),
            dir: Some(dir),
            bin: run.bin.clone(),
            keyspace: Some(keyspace),
            instances,
            fronts: None,
            _slot: slot,
        };
        cluster.start_all().await;
        cluster
    }

    /// The roles first (concurrently), then the gateways, which need their
    /// addresses.
    async fn start_all(&mut self) {
        let bin = self.bin.clone();
        futures::future::join_all(
            self.processes.iter_mut().filter(|p| !matches!(p.role, Role::Gateway(_))).map(|p| p.start(&bin)),
        )
        .await;
        if self.instances > 1 && self.fronts.is_none() {
            let addrs = |role: fn(usize) -> Role| -> Vec<SocketAddr> {
                (0..self.instances).map(|i| self.process(role(i)).grpc.expect("role started")).collect()
            };
            let (message, presence) = (addrs(Role::Message), addrs(Role::Presence));
            self.fronts = Some(Fronts {
                message: Balancer::round_robin(message).await,
                presence: Balancer::round_robin(presence).await,
            });
        }
        let (message, presence) = match &self.fronts {
            Some(fronts) => (fronts.message.grpc_url(), fronts.presence.grpc_url()),
            None => (
                format!("http://{}", self.process(Role::Message(0)).grpc.expect("message role started")),
                format!("http://{}", self.process(Role::Presence(0)).grpc.expect("presence role started")),
            ),
        };
        let conversation =
            format!("http://{}", self.process(Role::Conversation).grpc.expect("conversation role started"));
        for p in &mut self.processes {
            p.config.cluster.message_addr = message.clone();
            p.config.cluster.presence_addr = presence.clone();
            p.config.cluster.conversation_addr = conversation.clone();
        }
        futures::future::join_all(
            self.processes.iter_mut().filter(|p| matches!(p.role, Role::Gateway(_))).map(|p| p.start(&bin)),
        )
        .await;
    }

    fn process(&self, role: Role) -> &Process {
        self.processes.iter().find(|p| p.role == role).expect("a role of this cluster")
    }

    fn process_mut(&mut self, role: Role) -> &mut Process {
        self.processes.iter_mut().find(|p| p.role == role).expect("a role of this cluster")
    }

    /// The WebSocket address of gateway `i`.
    pub fn ws_addr(&self, gateway: usize) -> SocketAddr {
        self.process(Role::Gateway(gateway)).ws.expect("gateways have a ws address")
    }

    pub fn ws_url(&self, gateway: usize) -> String {
        format!("ws://{}", self.ws_addr(gateway))
    }

    /// Options for `name` on a gateway of the test's choosing.
    pub fn options_on(&self, name: &str, gateway: usize) -> ClientOptions {
        test_options(self.ws_url(gateway), Deployment::token(self, name))
    }

    pub async fn client_on(&self, name: &str, gateway: usize) -> (Client, Events) {
        connect_caught_up(self.options_on(name, gateway)).await
    }

    /// What `role` wrote to stderr (its log) since its last start.
    pub fn log(&self, role: Role) -> String {
        self.process(role).log()
    }

    /// The node id message process `role` leased at its last start, from its
    /// log line `node id leased node_id=<n>` (logged at INFO: a `RUST_LOG`
    /// that hides it makes this `None`).
    pub fn node_id(&self, role: Role) -> Option<u16> {
        assert!(matches!(role, Role::Message(_)), "only message processes lease a node id, not {role:?}");
        self.log(role).lines().filter(|line| line.contains("node id leased")).find_map(|line| {
            let rest = line.split_once("node_id=").or_else(|| line.split_once("\"node_id\":"))?.1;
            rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
        })
    }

    /// The running presence processes whose log says they hold the leader
    /// lease now: their last leadership line since their last start is
    /// `presence leadership taken`, not `presence background jobs stopped`
    /// (INFO lines, like [`node_id`](Self::node_id)'s).
    pub fn presence_leaders(&self) -> Vec<Role> {
        self.processes
            .iter()
            .filter(|p| matches!(p.role, Role::Presence(_)) && p.child.is_some())
            .filter(|p| {
                p.log()
                    .lines()
                    .rev()
                    .find_map(|line| {
                        if line.contains("presence leadership taken") {
                            Some(true)
                        } else if line.contains("presence background jobs stopped") {
                            Some(false)
                        } else {
                            None
                        }
                    })
                    .unwrap_or(false)
            })
            .map(|p| p.role)
            .collect()
    }

    /// How many connections the balancer in front of `role` has passed to
    /// it; `None` when the gateways reach it directly (not scaled).
    pub fn connections_to(&self, role: Role) -> Option<u64> {
        let fronts = self.fronts.as_ref()?;
        match role {
            Role::Message(i) => Some(fronts.message.connections(i)),
            Role::Presence(i) => Some(fronts.presence.connections(i)),
            _ => None,
        }
    }

    /// SIGKILL one process.
    pub async fn kill(&mut self, role: Role) {
        self.process_mut(role).kill().await;
    }

    /// Starts a stopped or killed process again, on its addresses.
    pub async fn start_role(&mut self, role: Role) {
        let bin = self.bin.clone();
        self.process_mut(role).start(&bin).await;
    }

    /// SIGTERM one process and wait for its clean exit.
    pub async fn stop_role(&mut self, role: Role) {
        self.process_mut(role).stop().await;
    }

    /// Panics if one of `roles` is not running any more: a crash test must
    /// not take down more than it killed.
    pub fn assert_running(&mut self, roles: &[Role]) {
        for role in roles {
            let p = self.process_mut(*role);
            match p.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => {}
                Some(Ok(Some(status))) => panic!("{}", p.failure(&format!("exited ({status})"))),
                Some(Err(e)) => panic!("{}", p.failure(&format!("cannot be checked: {e}"))),
                None => panic!("{} was not started again", role.name()),
            }
        }
    }

    /// Stops every process gracefully: gateways first (they say goodbye to
    /// their clients and drain), then the roles behind them.
    pub async fn stop(&mut self) {
        futures::future::join_all(
            self.processes.iter_mut().filter(|p| matches!(p.role, Role::Gateway(_))).map(Process::stop),
        )
        .await;
        futures::future::join_all(self.processes.iter_mut().map(Process::stop)).await;
    }
}

impl Deployment for Cluster {
    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Cluster::start_with(adjust).await
    }

    fn config(&self) -> &Config {
        &self.config
    }

    /// Tests share the keyspace: `alice` is `alice.c<n>` in cluster `n`. The
    /// dot is on purpose: ids with dots take a detour on NATS subjects.
    fn user(&self, name: &str) -> String {
        format!("{name}.{}", self.suffix)
    }

    fn token(&self, name: &str) -> String {
        let user = natter_types::UserId::parse(&self.user(name), "user").expect("valid user id");
        self.tokens.mint(&user, 3600).expect("mint").0
    }

    fn options(&self, name: &str) -> ClientOptions {
        let gateway = self.routing.lock().next(name);
        self.options_on(name, gateway)
    }

    fn ws_urls(&self) -> Vec<String> {
        (0..GATEWAYS).map(|i| self.ws_url(i)).collect()
    }

    /// The backend API is served by every gateway; the first one will do.
    fn grpc_url(&self) -> String {
        format!("http://{}", self.process(Role::Gateway(0)).grpc.expect("gateway started"))
    }

    fn api_key(&self) -> String {
        self.config.auth.api_key.clone()
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.start_all().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Gateways go first and at once: draining their clients would wait
        // for clients that cannot answer while this blocks.
        for p in &mut self.processes {
            if matches!(p.role, Role::Gateway(_))
                && let Some(child) = p.child.as_mut()
            {
                let _ = child.start_kill();
            }
        }
        // The others leave with SIGTERM, giving back the presence leader
        // lease and the node id, so the next cluster on this keyspace starts
        // its background jobs at once.
        let others: Vec<&mut Process> =
            self.processes.iter_mut().filter(|p| !matches!(p.role, Role::Gateway(_))).collect();
        let all_stopped = terminate_blocking(others, TEARDOWN_LIMIT);
        if let Some(keyspace) = self.keyspace.take()
            && all_stopped
        {
            KEYSPACES.lock().0.push(keyspace);
        }
        if !std::thread::panicking() {
            return;
        }
        // The test failed: show what every process said last, and keep the
        // files (configs, full stderr) for a closer look.
        for p in &self.processes {
            eprintln!(
                "--- {} (last lines of {}) ---\n{}",
                p.role.name(),
                p.stderr_path().display(),
                tail(&p.stderr_path(), 20)
            );
        }
        if let Some(dir) = self.dir.take() {
            eprintln!("--- kept the cluster's files in {} ---", dir.keep().display());
        }
    }
}

// ------------------------------------------------------------------ an owned nats-server

/// A nats-server of the test's own, on its own port, to kill and restart.
/// The binary is `NATS_SERVER_BIN`, or the one `deploy/nats.sh install` put
/// in `$NATTER_INFRA_DIR/bin` (default `~/.cache/natter-infra/bin`).
pub struct NatsServer {
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> Self {
        let bin = match std::env::var_os("NATS_SERVER_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => {
                let infra = std::env::var_os("NATTER_INFRA_DIR").map(PathBuf::from).unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/natter-infra")
                });
                infra.join("bin/nats-server")
            }
        };
        if !bin.is_file() {
            infra_missing(format!("no nats-server binary at {} (`deploy/nats.sh install`)", bin.display()));
        }
        // Fixed from here on, as clients reconnect to the same address after
        // a restart.
        let port = listen_port();
        let dir = tempfile::Builder::new().prefix("natter-e2e-nats-").tempdir().expect("temp dir");
        let mut server = Self { port, bin, dir, child: None };
        server.start_again().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Starts the (stopped) server on its port and waits until it accepts.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let log_err = log.try_clone().expect("log file");
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path().join("jetstream"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        // Nothing to await but the port: poll it briefly.
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("nats-server exited at start ({status}):\n{}", tail(&self.log_path(), TAIL_LINES));
            }
            if check_nats(&self.url()).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server does not accept connections on port {}:\n{}",
                self.port,
                tail(&self.log_path(), TAIL_LINES)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: clients see the connection drop without a goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, rustix::process::Signal::KILL);
            let _ = child.wait().await;
        }
    }
}

// ------------------------------------------------------------------ a load balancer

/// A TCP load balancer. [`start`](Self::start): each new connection goes to
/// the first upstream that accepts it, so an SDK client keeps one URL while
/// the gateway behind it dies, as a client behind a real load balancer
/// would. [`round_robin`](Self::round_robin): connection `n` goes to upstream
/// `n mod len`, or the next one that accepts, like a Kubernetes Service in
/// front of a role's pods (which balances per connection, not per gRPC call,
/// and stops sending to a pod that is gone).
///
/// It runs on a thread of its own: it keeps passing on data and closes
/// while the test's thread is blocked (a [`Cluster`] stopping its roles in
/// `Drop` waits for them to see their callers' connections close). Dropping
/// it closes every connection it holds.
pub struct Balancer {
    addr: SocketAddr,
    /// Connections passed to each upstream.
    passed: Arc<Vec<AtomicU64>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    pub async fn start(upstreams: Vec<SocketAddr>) -> Self {
        Self::spawn(upstreams, false)
    }

    pub async fn round_robin(upstreams: Vec<SocketAddr>) -> Self {
        Self::spawn(upstreams, true)
    }

    fn spawn(upstreams: Vec<SocketAddr>, rotate: bool) -> Self {
        assert!(!upstreams.is_empty(), "a balancer needs an upstream");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the balancer");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("balancer address");
        let passed: Arc<Vec<AtomicU64>> = Arc::new(upstreams.iter().map(|_| AtomicU64::new(0)).collect());
        let counters = passed.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let balance = async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            let upstreams = Arc::new(upstreams);
            let mut accepted = 0usize;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let first = if rotate { accepted % upstreams.len() } else { 0 };
                accepted += 1;
                let upstreams = upstreams.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    for i in (0..upstreams.len()).map(|k| (first + k) % upstreams.len()) {
                        if let Ok(mut outbound) = TcpStream::connect(upstreams[i]).await {
                            counters[i].fetch_add(1, Ordering::Relaxed);
                            // Ends when either side closes; dropping both
                            // passes the close on to the other.
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                    // No upstream: the client sees the connection close and retries.
                });
            }
        };
        let thread = std::thread::Builder::new()
            .name(format!("balancer-{}", addr.port()))
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the balancer's runtime");
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = balance => {}
                    }
                });
                // Dropping the runtime drops every connection's task.
            })
            .expect("the balancer's thread");
        Self { addr, passed, stop: Some(stop), thread: Some(thread) }
    }

    /// As a WebSocket URL (gateways).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// As a gRPC URL (roles).
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections went to upstream `i` so far.
    pub fn connections(&self, upstream: usize) -> u64 {
        self.passed[upstream].load(Ordering::Relaxed)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
