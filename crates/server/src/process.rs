//! Plumbing every natter process shares, whichever mode: the HTTP
//! (WebSocket) and gRPC servers with health, in the ingress stage of the
//! process's task set.

use std::io::Read;
use std::net::SocketAddr;

use anyhow::Context;
use natter_gateway::Gateway;
use natter_runtime::{Stage, Tasks};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub(crate) async fn bind(address: &str, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding {setting} {address}"))
}

/// Serves the gateway's WebSocket route and `/healthz`; stops accepting
/// when the ingress stage stops (sessions are drained by the gateway, in the
/// stage after).
pub(crate) fn serve_http(tasks: &Tasks, listener: TcpListener, gateway: &Gateway) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let router = gateway.router().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tasks.spawn(Stage::Ingress, "http", |stop| async move {
        axum::serve(without_nagle(listener), router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("http server")
    });
    Ok(addr)
}

/// Accepts sockets with Nagle's algorithm off. With it on, a frame written
/// while the client has not yet acknowledged the one before waits for that
/// acknowledgement, which a client delays by up to 40 ms
/// (docs/PERFORMANCE.md#settings-that-matter).
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

/// Serves `routes` plus grpc.health.v1 and reflection until the ingress
/// stage stops.
/// Health reports NOT_SERVING as soon as the stop begins, so load balancers
/// and probes move away while the process drains.
pub(crate) async fn serve_grpc(
    tasks: &Tasks,
    listener: TcpListener,
    routes: tonic::service::Routes,
    services: &[&str],
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
    tasks.spawn(Stage::Ingress, "grpc", |stop| async move {
        let stopping = {
            async move {
                stop.cancelled().await;
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
