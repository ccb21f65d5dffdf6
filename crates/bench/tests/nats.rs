//! The raw NATS baseline, end to end: the suite's fan-out (tiny) against a
//! real Natter started in this process, with the nats-server the suite starts
//! itself through deploy/nats.sh (free port, temp dir) and stops afterwards.
//! deploy/nats.sh is what `make test` installs nats-server with, so this
//! fails — it does not skip — when it cannot get one. It runs with the
//! `nats-tests` feature (`make test`, `make test-nats`); without it, it is
//! listed as ignored, and the test of the error messages still runs.

use natter_bench::nats_server::{NatsServer, NatsSource, default_script};
use natter_bench::report;
use natter_bench::suite::{BareSource, NatterSource, SuiteConfig, run_suite};
use natter_bench::target::{ServerKind, Target};

const SECRET: &str = "natter-bench-nats-secret";

/// Alive, and not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "nats-tests"),
    ignore = "needs a nats-server: make test-nats (feature natter-bench/nats-tests)"
)]
async fn nats_baseline_fans_out_next_to_natter_and_stops_its_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = natter_server::Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.grpc_listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().to_path_buf();
    config.server.shutdown_grace_secs = 2;
    config.auth.token_secret = SECRET.into();
    config.validate().expect("valid config");
    let node = natter_server::Node::start(&config).await.expect("server starts");
    let natter = Target::single(ServerKind::Natter, node.ws_addr, SECRET.into(), None, "natter");

    let suite = SuiteConfig {
        idle: None,
        direct: None,
        presence: None,
        sweeper_subscriptions: None,
        receipts: None,
        // Only Natter and the NATS rows: the bare ones have the smoke test.
        baselines: false,
        ..SuiteConfig::smoke()
    };
    let bare = BareSource::Spawn;
    let nats = NatsSource::Spawn { script: default_script() };
    let report = run_suite(&suite, &NatterSource::Given(natter), &bare, &nats, "nats test".into())
        .await
        .expect("the fan-out with the NATS baseline runs (needs deploy/nats.sh and its nats-server)");

    let info = report.nats.as_ref().expect("the NATS baseline ran");
    assert!(info.started_by_bench && !info.version.is_empty(), "{info:?}");
    let labels: Vec<&str> = report.fanout.iter().map(|f| f.target.as_str()).collect();
    assert_eq!(labels, ["natter", "nats-per-member", "nats-2-gateways", "nats-shared"]);
    for f in &report.fanout {
        assert!(f.complete, "{f:?}");
        assert_eq!(f.errors, 0, "{f:?}");
        assert_eq!(f.messages, 20, "2 groups × 10 messages: {f:?}");
        assert_eq!(f.deliveries, f.expected_deliveries, "{f:?}");
        assert_eq!(f.time_to_last.count, f.messages, "{f:?}");
        assert!(f.deliveries_per_sec > 0.0, "{f:?}");
        if f.target.starts_with("nats") {
            assert_eq!(f.ack_latency.count, 0, "NATS has no acks: {f:?}");
            assert!(f.usage.server_cpu_percent.is_some(), "nats-server's CPU is measured: {f:?}");
        }
    }
    let md = report::markdown(&report);
    assert!(md.contains("| nats-per-member | 5 × 2 |"), "{md}");
    assert!(md.contains("natter = "), "ratios against the baselines:\n{md}");
    assert!(md.contains("NATS baseline: nats-server"), "{md}");

    // Stopped with the suite: nothing is left running.
    let pid = info.pid.expect("the started server's pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "nats-server {pid} still runs after the suite");

    node.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_nats_server_that_cannot_be_had_fails_with_a_clear_message() {
    let missing = NatsSource::Spawn { script: "/nonexistent/deploy/nats.sh".into() };
    let error = NatsServer::open(&missing).await.err().expect("no script, no server");
    assert!(format!("{error:#}").contains("--no-nats"), "{error:#}");

    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let unreachable = NatsSource::Given { url: format!("nats://127.0.0.1:{port}"), pid: None };
    let error = NatsServer::open(&unreachable).await.err().expect("nothing listens there");
    let text = format!("{error:#}");
    assert!(text.contains("cannot connect to nats-server") && text.contains("--nats-url"), "{text}");

    let skipped = NatsSource::Skip { reason: "test".into() };
    assert!(NatsServer::open(&skipped).await.expect("skipping is not an error").is_none());
}
