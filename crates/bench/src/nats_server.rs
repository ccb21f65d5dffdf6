//! The nats-server for the raw NATS baseline: one the bench starts itself
//! with `deploy/nats.sh` (a free port, its own directory under a temp dir,
//! stopped when the suite is done, also on failure), or one already running
//! (`--nats-url`, e.g. the one `make cluster` uses).
//!
//! Why the script and not a child process: `deploy/nats.sh` is how every
//! other part of the project installs and configures nats-server, so the
//! baseline measures the same server, built and configured the same way, as
//! the distributed mode's tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::target::{self, ServerKind, Target};

/// Where the NATS baseline's server comes from.
#[derive(Debug, Clone)]
pub enum NatsSource {
    /// Started with this `deploy/nats.sh`, stopped afterwards.
    Spawn { script: PathBuf },
    /// Running at `nats://host:port`; `pid` for its CPU and RSS, if known.
    Given { url: String, pid: Option<u32> },
    /// No NATS baseline; the reason goes into the report.
    Skip { reason: String },
}

/// What the report says about the nats-server.
#[derive(Debug, Clone, Serialize)]
pub struct NatsInfo {
    pub url: String,
    /// The server's own version (from its INFO).
    pub version: String,
    pub pid: Option<u32>,
    /// Whether the bench started it (and stopped it afterwards).
    pub started_by_bench: bool,
}

/// A reachable nats-server; stops it when dropped if the bench started it.
pub struct NatsServer {
    pub info: NatsInfo,
    addr: SocketAddr,
    started: Option<Started>,
}

struct Started {
    script: PathBuf,
    port: u16,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl Started {
    fn stop_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.script);
        cmd.arg("stop").arg("--port").arg(self.port.to_string()).arg("--dir").arg(&self.dir);
        cmd
    }
}

impl NatsServer {
    /// Starts a server or checks the given one; `Ok(None)` when skipped.
    pub async fn open(source: &NatsSource) -> anyhow::Result<Option<Self>> {
        match source {
            NatsSource::Skip { .. } => Ok(None),
            NatsSource::Spawn { script } => {
                if !script.exists() {
                    bail!(
                        "the NATS baseline needs a nats-server: {} not found; pass --nats-script, --nats-url, or \
                         --no-nats to skip the NATS baseline",
                        script.display()
                    );
                }
                // Retried like the other servers: the free port can be taken
                // before nats-server binds it.
                Ok(Some(target::retry(|| Self::start(script)).await?))
            }
            NatsSource::Given { url, pid } => Ok(Some(Self::given(url, *pid).await.with_context(|| {
                format!("--nats-url {url}: start that nats-server, or drop --nats-url to let the bench start one")
            })?)),
        }
    }

    async fn start(script: &Path) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new().prefix("natter-bench-nats-").tempdir()?;
        let dir = temp.path().join("nats");
        let port = target::free_port()?;
        let output = tokio::process::Command::new(script)
            .arg("start")
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {} start", script.display()))?;
        let started = Started { script: script.to_owned(), port, dir, _temp: temp };
        if !output.status.success() {
            let log = std::fs::read_to_string(started.dir.join("nats-server.log")).unwrap_or_default();
            // The script may have left a server behind (it timed out waiting).
            let _ = started.stop_command().output();
            bail!(
                "could not start nats-server for the NATS baseline with `{} start --port {port}` ({}):\n{}{}\n\
                 Install it with `deploy/nats.sh install` (needs go), or pass --nats-url, or --no-nats to skip \
                 the NATS baseline.",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
            );
        }
        let pid = std::fs::read_to_string(started.dir.join("nats-server.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let url = format!("nats://{addr}");
        // From here on the server is ours: dropping `server` stops it.
        let mut server = Self {
            info: NatsInfo { url: url.clone(), version: String::new(), pid, started_by_bench: true },
            addr,
            started: Some(started),
        };
        server.info.version = server_version(&url).await?;
        tracing::info!(%url, pid, version = %server.info.version, "nats-server started");
        Ok(server)
    }

    async fn given(url: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let authority = url.strip_prefix("nats://").unwrap_or(url);
        if authority.contains("://") || authority.contains(['/', '@', ',']) {
            bail!("--nats-url {url}: give one plain nats://host:port (no TLS, credentials or lists)");
        }
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("--nats-url {url}: cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("--nats-url {url} does not resolve"))?;
        let url = format!("nats://{addr}");
        let version = server_version(&url).await?;
        Ok(Self { info: NatsInfo { url, version, pid, started_by_bench: false }, addr, started: None })
    }

    /// The server as a target for a baseline row labelled `label`.
    pub fn target(&self, label: &str) -> Target {
        Target::single(ServerKind::Nats, self.addr, String::new(), self.info.pid, label)
    }

    /// Stops the server if the bench started it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(started) = self.started.take() else { return Ok(()) };
        let output = tokio::process::Command::from(started.stop_command())
            .output()
            .await
            .with_context(|| format!("running {} stop", started.script.display()))?;
        if !output.status.success() {
            bail!(
                "stopping nats-server failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A failed run never leaves a server behind: deploy/nats.sh detaches
        // it from this process, so nothing else would stop it. Blocking here
        // is brief (the script waits at most 30 s for the server to exit).
        if let Some(started) = self.started.take()
            && let Err(e) = started.stop_command().output()
        {
            tracing::warn!(error = %e, port = started.port, "could not stop nats-server");
        }
    }
}

/// Connects once: proves the server speaks NATS and reads its version.
async fn server_version(url: &str) -> anyhow::Result<String> {
    let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(url))
        .await
        .with_context(|| format!("no answer from nats-server at {url} within 10 s"))?
        .with_context(|| format!("cannot connect to nats-server at {url}"))?;
    let version = client.server_info().version;
    drop(client);
    Ok(version)
}

/// `deploy/nats.sh` of the working directory's checkout, else of the tree
/// this binary was built from.
pub fn default_script() -> PathBuf {
    let here = PathBuf::from("deploy/nats.sh");
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats.sh")
}
