//! Plumbing every natter process shares, whichever mode: the owned task set
//! with an ordered stop, the HTTP (WebSocket) and gRPC servers, health.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use natter_gateway::{Gateway, GatewayOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Config;

/// The long-lived tasks of a process. A task that fails cancels the process
/// token, so one broken part stops the whole process instead of leaving it
/// half alive (an orchestrator then restarts it).
pub(crate) struct Tasks {
    cancel: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Tasks {
    pub(crate) fn new(cancel: CancellationToken) -> Self {
        Self { cancel, tasks: Vec::new() }
    }

    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let cancel = self.cancel.clone();
        self.tasks.push((
            name,
            tokio::spawn(async move {
                let result = task.await;
                if let Err(e) = &result {
                    tracing::error!(task = name, error = format!("{e:#}"), "task failed, stopping");
                    cancel.cancel();
                }
                result
            }),
        ));
    }

    /// Cancels and waits for every task, each up to `grace`; the first
    /// failure is the result.
    pub(crate) async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        self.cancel.cancel();
        let mut first_error = None;
        for (name, task) in self.tasks {
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    first_error.get_or_insert(e.context(format!("{name} task")));
                }
                Ok(Err(join)) => {
                    first_error.get_or_insert(anyhow::anyhow!("{name} task panicked: {join}"));
                }
                Err(_) => tracing::warn!(task = name, "did not stop within the grace period"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

pub(crate) async fn bind(address: &str, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding {setting} {address}"))
}

/// Serves the gateway's WebSocket route and `/healthz`; stops accepting
/// when `cancel` fires (sessions are drained by the gateway itself).
pub(crate) fn serve_http(
    tasks: &mut Tasks,
    listener: TcpListener,
    gateway: &Gateway,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let router = gateway.router().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tasks.spawn("http", async move {
        axum::serve(without_nagle(listener), router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .context("http server")
    });
    Ok(addr)
}

/// Accepts sockets with Nagle's algorithm off. With it on, a frame written
/// while the client had not yet acknowledged the one before waited for that
/// acknowledgement, which a client delays by up to 40 ms: a 1:1 message
/// at 10,000 msg/s had a p99.9 of 45 ms (docs/PERFORMANCE.md).
fn without_nagle(listener: TcpListener) -> axum::serve::TapIo<TcpListener, fn(&mut TcpStream)> {
    use axum::serve::ListenerExt as _;
    fn set_nodelay(stream: &mut TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on an accepted socket failed");
        }
    }
    listener.tap_io(set_nodelay)
}

/// The gRPC server's sockets, with Nagle's algorithm off as for the
/// gateway's ([`without_nagle`]); tonic leaves it on for a listener it is given.
fn grpc_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `routes` plus grpc.health.v1 and reflection until `cancel`.
/// Health reports NOT_SERVING as soon as the stop begins, so load balancers
/// and probes move away while the process drains.
pub(crate) async fn serve_grpc(
    tasks: &mut Tasks,
    listener: TcpListener,
    routes: tonic::service::Routes,
    services: &[&str],
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, services, ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(natter_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building grpc reflection")?;
    let routes = routes.add_service(health_service).add_service(reflection);
    let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
    tasks.spawn("grpc", async move {
        let stopping = {
            let cancel = cancel.clone();
            async move {
                cancel.cancelled().await;
                let names: Vec<&str> = services.iter().map(String::as_str).collect();
                set_health(&health, &names, ServingStatus::NotServing).await;
            }
        };
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(grpc_incoming(listener), stopping)
            .await
            .context("grpc server")
    });
    Ok(addr)
}

async fn set_health(health: &HealthReporter, services: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in services {
        health.set_service_status(*service, status).await;
    }
}

/// The gateway settings of `config`, for a gateway called `gateway_id`.
pub(crate) fn gateway_options(config: &Config, gateway_id: String) -> GatewayOptions {
    GatewayOptions {
        gateway_id,
        limits: config.limits.clone(),
        ping_interval: Duration::from_secs(config.gateway.ping_interval_secs),
        idle_timeout: Duration::from_secs(config.gateway.idle_timeout_secs),
        replay_page: config.gateway.replay_page,
        read_buffer_bytes: config.gateway.read_buffer_bytes,
        write_buffer_bytes: config.gateway.write_buffer_bytes,
        // Three renewals per lease: one lost renewal does not end sessions.
        lease_renew_interval: Duration::from_millis(config.presence.lease_ms) / 3,
    }
}

/// `n` random bytes as lowercase hex, from the kernel's generator.
pub(crate) fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::serve::Listener as _;
    use futures::StreamExt as _;

    use super::*;

    /// Both servers' accepted sockets write small frames at once.
    #[tokio::test]
    async fn accepted_sockets_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut http = without_nagle(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = http.accept().await;
        assert!(stream.nodelay().unwrap(), "http");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut grpc = grpc_incoming(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let stream = grpc.next().await.unwrap().unwrap();
        assert!(stream.nodelay().unwrap(), "grpc");
    }
}
