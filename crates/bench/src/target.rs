//! The server under test: a Natter the bench starts itself (a child process,
//! so its RSS and CPU are its own in `/proc/<pid>`), one already running
//! (`--url` + `--secret`; several gateway URLs for the distributed mode), the
//! bare baseline, or the nats-server of the NATS baseline.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    Natter,
    /// The bare tokio + tungstenite broadcast server (no persistence).
    Bare,
    /// A nats-server (the raw NATS baseline; not a WebSocket server).
    Nats,
}

/// Where and how to reach a server.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: ServerKind,
    /// Where clients connect. Several for a distributed deployment (one per
    /// gateway): connection `i` goes to `addrs[i % len]`, so the members of
    /// a group are spread over every gateway and their messages cross NATS.
    pub addrs: Vec<SocketAddr>,
    /// HS256 secret for client tokens (Natter only).
    pub secret: String,
    /// Processes whose RSS and CPU are reported (summed) as the server's:
    /// one for a single node, every role's for a cluster; none if unknown.
    pub pids: Vec<u32>,
    /// Name in reports, e.g. "natter" or "bare".
    pub label: String,
}

impl Target {
    /// A target with one address and at most one known process.
    pub fn single(kind: ServerKind, addr: SocketAddr, secret: String, pid: Option<u32>, label: &str) -> Self {
        Self { kind, addrs: vec![addr], secret, pids: pid.into_iter().collect(), label: label.to_owned() }
    }

    /// The address connection number `i` uses.
    pub fn addr_for(&self, i: usize) -> anyhow::Result<SocketAddr> {
        self.addrs.get(i % self.addrs.len().max(1)).copied().with_context(|| format!("{} has no address", self.label))
    }

    /// The addresses as `a, b, …` (for reports).
    pub fn addrs_text(&self) -> String {
        self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// The request path and query a user connects with.
    pub fn ws_path(&self, user: &str, room: Option<&str>) -> anyhow::Result<String> {
        Ok(match self.kind {
            ServerKind::Natter => format!("/ws?format=proto&token={}", mint(&self.secret, user)?),
            ServerKind::Bare => match room {
                Some(room) => format!("/ws?format=proto&user={user}&room={room}"),
                None => format!("/ws?format=proto&user={user}"),
            },
            ServerKind::Nats => bail!("{} is a nats-server, not a WebSocket server", self.label),
        })
    }
}

/// Parses a WebSocket server address as the bench accepts it: `host:port`,
/// `ws://host:port` or `ws://host:port/ws` (what `make cluster` prints).
/// Clients always connect to `/ws`, so any other path is refused rather than
/// silently ignored.
pub async fn resolve_ws(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    if rest.contains("://") {
        bail!("--url {url}: only ws:// (plain WebSocket) is supported");
    }
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if !(path.is_empty() || path == "ws" || path == "ws/") {
        bail!("--url {url}: the bench connects to /ws; give host:port or ws://host:port/ws");
    }
    tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("--url {url}: cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("--url {url} does not resolve"))
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// A client token as Natter mints it: HS256 `{sub, iat, exp}`.
pub fn mint(secret: &str, user: &str) -> anyhow::Result<String> {
    let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims { sub: user, iat, exp: iat + 24 * 3600 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing a client token")
}

/// A random secret (the bench generates one per spawned server).
pub fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A loopback port free right now (the child binds it a moment later).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server process the bench started; killed when dropped, so every run
/// stops it whatever happens.
pub struct Spawned {
    pub target: Target,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `natter serve` on free loopback ports with a fresh data dir.
    /// Retried: a port found free can be taken before the child binds it.
    pub async fn natter(binary: &Path, label: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        retry(|| Self::natter_once(binary, label, env)).await
    }

    async fn natter_once(binary: &Path, label: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("natter-bench-").tempdir()?;
        let secret = random_secret()?;
        let port = free_port()?;
        let grpc_port = free_port()?;
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("serve")
            .env("NATTER_AUTH__TOKEN_SECRET", &secret)
            .env("NATTER_LOG__FILTER", "warn,natter_server=info");
        // The bench's own NATTER_BENCH_* settings are not server config (the
        // server rejects unknown NATTER_ keys).
        for (k, _) in std::env::vars() {
            if k.starts_with("NATTER_BENCH") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(cmd, dir, log, ServerKind::Natter, label, port, secret).await
    }

    /// Starts the bare baseline (this binary's `bare-server` subcommand).
    pub async fn bare(label: &str, batch_writes: bool) -> anyhow::Result<Self> {
        retry(|| Self::bare_once(label, batch_writes)).await
    }

    async fn bare_once(label: &str, batch_writes: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("natter-bench-bare-").tempdir()?;
        let port = free_port()?;
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("bare-server").arg("--listen").arg(format!("127.0.0.1:{port}"));
        if batch_writes {
            cmd.arg("--batch-writes");
        }
        Self::start(cmd, dir, log, ServerKind::Bare, label, port, String::new()).await
    }

    async fn start(
        mut cmd: Command,
        dir: tempfile::TempDir,
        log: PathBuf,
        kind: ServerKind,
        label: &str,
        port: u16,
        secret: String,
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.as_std().get_program()))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("{label} exited at start ({status}):\n{}", tail(&log));
            }
            if ready(addr, kind).await {
                break;
            }
            if Instant::now() > deadline {
                bail!("{label} did not answer on {addr} within 30 s:\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(%addr, label, pid = child.id(), "server started");
        Ok(Self { target: Target::single(kind, addr, secret, child.id(), label), child, log, _dir: dir })
    }

    /// Stops the server (SIGKILL: nothing in its temp dir is kept) and
    /// reports whether it had died on its own during the run.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} died during the run ({status}):\n{}", self.target.label, tail(&self.log));
        }
        self.child.kill().await?;
        Ok(())
    }
}

pub(crate) async fn retry<T, F, Fut>(start: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(e) if attempt < 3 => {
                tracing::warn!(attempt, error = format!("{e:#}"), "server did not start; retrying on other ports");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Natter answers `GET /healthz`; the bare server only needs to accept.
async fn ready(addr: SocketAddr, kind: ServerKind) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await else {
        return false;
    };
    if kind != ServerKind::Natter {
        return true;
    }
    let request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut response)).await;
    matches!(read, Ok(Ok(_))) && response.starts_with(b"HTTP/1.1 200")
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn gateway_urls_parse_as_make_cluster_prints_them() {
        let expected: SocketAddr = ([127, 0, 0, 1], 7100).into();
        for url in ["ws://127.0.0.1:7100/ws", "ws://127.0.0.1:7100", "127.0.0.1:7100", "ws://127.0.0.1:7100/ws/"] {
            assert_eq!(resolve_ws(url).await.unwrap(), expected, "{url}");
        }
        for url in ["ws://127.0.0.1:7100/api", "wss://127.0.0.1:7100/ws", "http://127.0.0.1:7100"] {
            assert!(resolve_ws(url).await.is_err(), "{url}");
        }
    }

    #[test]
    fn connections_go_round_robin_over_the_gateways() {
        let a: SocketAddr = ([127, 0, 0, 1], 7100).into();
        let b: SocketAddr = ([127, 0, 0, 1], 7110).into();
        let target = Target {
            kind: ServerKind::Natter,
            addrs: vec![a, b],
            secret: "s".into(),
            pids: vec![1, 2],
            label: "natter".into(),
        };
        let picked: Vec<SocketAddr> = (0..4).map(|i| target.addr_for(i).unwrap()).collect();
        assert_eq!(picked, [a, b, a, b]);
        assert_eq!(target.addrs_text(), "127.0.0.1:7100, 127.0.0.1:7110");
        let none = Target { addrs: Vec::new(), ..target };
        assert!(none.addr_for(0).is_err());
    }
}
