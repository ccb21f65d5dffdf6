//! The smoke run: the whole suite, tiny, against a real Natter started in
//! this process (port 0, temp dir) and bare baselines on port 0. Runs under
//! `cargo test --workspace` (so `make test`), so the tool never rots: every
//! scenario must connect, send, and account for every message. The NATS
//! baseline needs a nats-server and has its own test (`tests/nats.rs`).

use natter_bench::bare::{self, BareOptions};
use natter_bench::nats_server::NatsSource;
use natter_bench::report;
use natter_bench::suite::{BareSource, NatterSource, SuiteConfig, run_suite};
use natter_bench::target::{ServerKind, Target};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "natter-bench-smoke-secret";

async fn bare_server(cancel: &CancellationToken, batch_writes: bool, label: &str) -> Target {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(bare::serve(listener, BareOptions { batch_writes }, cancel.clone()));
    Target::single(ServerKind::Bare, addr, String::new(), None, label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_suite_measures_every_scenario_against_a_real_server() {
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
    let cancel = CancellationToken::new();
    let bare = BareSource::Given {
        plain: Box::new(bare_server(&cancel, false, "bare").await),
        batched: Box::new(bare_server(&cancel, true, "bare-batched").await),
    };

    let nats = NatsSource::Skip { reason: "the smoke test runs without it (tests/nats.rs runs it)".into() };
    let report = run_suite(&SuiteConfig::smoke(), &NatterSource::Given(natter), &bare, &nats, "smoke test".into())
        .await
        .expect("the smoke suite runs");

    let idle = &report.idle[0];
    assert_eq!((idle.ready, idle.alive_after_hold), (20, 20), "{idle:?}");

    let direct = report.direct.iter().find(|d| d.target == "natter").expect("1:1 on natter");
    for step in direct.steps.iter().chain(direct.saturation.iter()) {
        assert!(step.sent > 0, "{step:?}");
        assert_eq!(step.errors, 0, "{step:?}");
        assert_eq!(step.acked, step.sent, "every send answered: {step:?}");
        assert_eq!(step.delivered, step.acked, "every message reaches its peer: {step:?}");
        assert!(step.latency.count > 0 && step.latency.p50_ms > 0.0, "{step:?}");
        let disk = step.usage.disk_syncs.as_ref().expect("the disk was probed over the step");
        assert!(disk.latency.count > 0, "{disk:?}");
    }
    assert!(report.direct.iter().any(|d| d.target == "bare"), "1:1 bare baseline ran");

    let presence = &report.presence[0];
    assert_eq!(presence.subscribers, 5);
    assert_eq!(presence.complete_rounds, 2, "every subscriber saw every change: {presence:?}");
    let sweeper = report.sweeper.as_ref().expect("sweeper ran");
    assert_eq!((sweeper.subscriptions, sweeper.removed), (2_000, 2_000), "{sweeper:?}");

    let conversations = &report.conversations[0];
    assert_eq!((conversations.seeded, conversations.listed), (14, 14), "12 peers and 2 groups: {conversations:?}");
    assert_eq!(conversations.passes, 3, "{conversations:?}");
    assert_eq!((conversations.errors, conversations.mismatched_passes), (0, 0), "{conversations:?}");
    assert_eq!(conversations.pages, 9, "three pages of 5 per pass: {conversations:?}");
    assert_eq!(conversations.page_latency.count, conversations.pages);
    assert_eq!(conversations.first_page.count, 3);
    assert_eq!(conversations.last_page.count, 3);
    assert!(conversations.ping.count > 0 && conversations.pages_per_sec > 0.0, "{conversations:?}");

    let history = &report.history[0];
    assert_eq!(history.messages, 240, "every send stored: {history:?}");
    assert_eq!(history.pages, 24, "{history:?}");
    assert_eq!((history.errors, history.mismatched_pages), (0, 0), "every page as stored: {history:?}");
    for walk in [&history.newest_up, &history.random_up, &history.random_down] {
        assert!(walk.count > 0, "every kind of walk ran: {history:?}");
    }
    assert!(history.ping.count > 0 && history.pages_per_sec > 0.0, "{history:?}");

    let receipts = &report.receipts[0];
    assert!(receipts.complete, "every message reached its full count: {receipts:?}");
    assert_eq!((receipts.members, receipts.messages), (20, 6), "{receipts:?}");
    assert_eq!(receipts.expected_receipts, 120, "{receipts:?}");
    assert_eq!(receipts.receipts_sent, 120, "every member read every message: {receipts:?}");
    assert_eq!(receipts.receipts, 120, "every receipt answered ok: {receipts:?}");
    assert_eq!((receipts.errors, receipts.wrong_counts), (0, 0), "every final count is 20: {receipts:?}");
    assert_eq!(receipts.to_sender.count, 6, "one full count per message: {receipts:?}");
    assert_eq!(receipts.receipt_latency.count, 120, "{receipts:?}");
    assert_eq!(receipts.ack_latency.count, 6, "{receipts:?}");
    assert!(
        (6..=120).contains(&receipts.count_events),
        "counts coalesced, never more than one per receipt: {receipts:?}"
    );
    assert!(receipts.receipts_per_sec > 0.0, "{receipts:?}");

    assert_eq!(report.fanout.len(), 3, "natter, bare, bare-batched");
    for f in &report.fanout {
        assert!(f.complete, "{f:?}");
        assert_eq!(f.deliveries, f.expected_deliveries, "{f:?}");
        assert_eq!(f.time_to_last.count, f.messages, "{f:?}");
        assert!(f.deliveries_per_sec > 0.0, "{f:?}");
        assert!(f.usage.disk_syncs.as_ref().is_some_and(|d| d.latency.count > 0), "{f:?}");
    }

    let md = report::markdown(&report);
    for section in [
        "## Idle connections",
        "## 1:1 persisted messages",
        "## Group fan-out",
        "## Conversation list (C1)",
        "## History (C5)",
        "## Group read receipts (R5/R6)",
    ] {
        assert!(md.contains(section), "{section} missing from\n{md}");
    }
    assert!(report.nats.is_none());
    assert!(md.contains("NATS publish/subscribe baseline was not measured"), "the skip is reported:\n{md}");
    assert!(md.contains("Disk sync p99 / max"), "the disk probe's column:\n{md}");
    let json = serde_json::to_value(&report).expect("report serializes");
    assert!(json["fanout"].as_array().is_some_and(|a| a.len() == 3));

    cancel.cancel();
    node.shutdown().await.expect("clean shutdown");
}
