//! Presence end to end against the single node only: what a dead run left
//! behind. The presence scenarios shared with the distributed mode run in
//! `tests/single_node.rs` (`natter_e2e::scenarios!`).

use natter_e2e::{TestServer, scenarios};

/// Single node: a run that died without closing its sessions (they are
/// still in the store's journal of open sessions, as SIGKILL leaves them)
/// has them announced offline when the node starts again, once.
#[tokio::test]
async fn sessions_left_open_by_a_dead_run_are_announced_offline_at_start() {
    use natter_store::SessionJournal;
    use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
    use natter_types::{SessionId, SessionInfo, UserId};

    let dir = tempfile::tempdir().unwrap();
    let lost = SessionInfo {
        user: UserId::parse("erin", "user").unwrap(),
        session: SessionId("node-0-dead-1".into()),
        device: "phone".into(),
        gateway: "node-0".into(),
        platform: "iOS".into(),
        client_addr: "10.0.0.9:5000".into(),
        connected_at: 1,
    };
    {
        let storage = natter_runtime::Tasks::new();
        let store = EmbeddedStore::open(&dir.path().join("store"), EmbeddedOptions::default(), &storage).unwrap();
        store.opened(&lost).await.unwrap();
        storage.stop(std::time::Duration::from_secs(30)).await.unwrap();
    }
    let receiver = scenarios::WebhookReceiver::start().await;
    let data_dir = dir.path().to_path_buf();
    let mut server = TestServer::start_with(|c| {
        c.server.data_dir = data_dir;
        receiver.configure(c);
    })
    .await;
    let event = receiver.events(1).await.remove(0);
    assert_eq!(
        (event["userid"].as_str(), event["sessionId"].as_str(), event["status"].as_str(), event["os"].as_str()),
        (Some("erin"), Some("node-0-dead-1"), Some("1"), Some("iOS")),
        "{event}"
    );

    // Recorded closed: the next start announces nothing more.
    server.restart().await;
    let (_client, _events) = server.client("frank").await;
    let next = receiver.events(2).await.remove(1);
    assert_eq!((next["userid"].as_str(), next["status"].as_str()), (Some("frank"), Some("0")), "{next}");
}
