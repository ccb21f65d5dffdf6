//! The server under test: a Natter the bench starts itself (a child process,
//! so its RSS and CPU are its own in `/proc/<pid>`), one already running
//! (`--url` + `--secret`), or the bare baseline.

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
}

/// Where and how to reach a server.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    /// HS256 secret for client tokens (Natter only).
    pub secret: String,
    /// Process to read RSS and CPU from, when known.
    pub pid: Option<u32>,
    /// Name in reports, e.g. "natter" or "bare".
    pub label: String,
}

impl Target {
    /// The request path and query a user connects with.
    pub fn ws_path(&self, user: &str, room: Option<&str>) -> anyhow::Result<String> {
        Ok(match self.kind {
            ServerKind::Natter => format!("/ws?format=proto&token={}", mint(&self.secret, user)?),
            ServerKind::Bare => match room {
                Some(room) => format!("/ws?format=proto&user={user}&room={room}"),
                None => format!("/ws?format=proto&user={user}"),
            },
        })
    }
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
fn free_port() -> anyhow::Result<u16> {
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
        Ok(Self {
            target: Target { kind, addr, secret, pid: child.id(), label: label.to_owned() },
            child,
            log,
            _dir: dir,
        })
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

async fn retry<F, Fut>(start: F) -> anyhow::Result<Spawned>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Spawned>>,
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
    if kind == ServerKind::Bare {
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
