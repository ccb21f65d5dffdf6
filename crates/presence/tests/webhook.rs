//! The presence webhook (W1–W5) against a real HTTP receiver on port 0 that
//! verifies every call's signature. W3 runs on paused time with the real
//! 5 s timeout and 1 minute pause: the webhook's timers and reqwest's timeout
//! are tokio timers, and loopback I/O is ready by the time tokio looks, so
//! the clock only jumps when every task waits for a timer.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use natter_presence::webhook::{Webhook, WebhookOptions, signature};
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{SessionStatus, UserId, WebhookEvent};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SECRET: &str = "webhook-secret";

/// When a call arrived and the batch it carried.
type Call = (Instant, Vec<serde_json::Value>);

#[derive(Clone)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    /// How many calls arrived: waited on rather than polled, so that no
    /// timer of the test's own moves paused time.
    arrived: watch::Sender<usize>,
    /// While set, calls hang (time out at the sender).
    hang: Arc<Mutex<bool>>,
}

async fn receive(
    State(receiver): State<Receiver>,
    Query(query): Query<HashMap<String, String>>,
    Json(body): Json<Vec<serde_json::Value>>,
) -> StatusCode {
    // A receiver verifies the caller (W2) before trusting the body.
    let expected = signature(SECRET, &query["nonce"], &query["timestamp"]);
    assert_eq!(query["signature"], expected, "signature verifies");
    assert_eq!(query["appKey"], "app-1");
    let hang = *receiver.hang.lock();
    let arrived = {
        let mut calls = receiver.calls.lock();
        calls.push((Instant::now(), body));
        calls.len()
    };
    receiver.arrived.send_replace(arrived);
    if hang {
        std::future::pending::<()>().await;
    }
    StatusCode::OK
}

async fn start_receiver() -> (String, Receiver) {
    let receiver = Receiver { calls: Arc::default(), arrived: watch::Sender::new(0), hang: Arc::default() };
    let app = Router::new().route("/hook", post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

fn event(user: &str, status: SessionStatus, n: i64) -> WebhookEvent {
    WebhookEvent {
        user: UserId::parse(user, "u").unwrap(),
        status,
        os: "Android".into(),
        time: 1_700_000_000_000 + n,
        client_ip: "10.1.2.3:41748".into(),
        session_id: format!("s{n}"),
    }
}

fn options(url: &str) -> WebhookOptions {
    WebhookOptions {
        urls: vec![url.to_owned()],
        app_key: "app-1".into(),
        app_secret: SECRET.into(),
        timeout_ms: 300,
        ..WebhookOptions::default()
    }
}

/// Waits until `calls` calls have arrived, at most `within`.
async fn wait_for(receiver: &Receiver, calls: usize, within: Duration) {
    let mut arrived = receiver.arrived.subscribe();
    let waited = tokio::time::timeout(within, arrived.wait_for(|n| *n >= calls)).await;
    assert!(waited.is_ok(), "expected {calls} calls within {within:?}, got {}", receiver.calls.lock().len());
}

/// For the tests on real time.
const WAIT: Duration = Duration::from_secs(10);

fn session_ids(batch: &[serde_json::Value]) -> Vec<String> {
    batch.iter().map(|e| e["sessionId"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn w1_w2_w5_signed_json_batches_in_order() {
    let (url, receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let storage = natter_runtime::Tasks::new();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
    let hook = Webhook::new(options(&url), store.outbox.clone()).unwrap();
    // Queue before the worker starts, so the first call carries a batch.
    let statuses = [SessionStatus::Online, SessionStatus::Offline, SessionStatus::LoggedOut];
    let events: Vec<WebhookEvent> = (0..9).map(|n| event("apert60541", statuses[n as usize % 3], n)).collect();
    for e in &events {
        hook.enqueue(std::slice::from_ref(e)).await.unwrap();
    }
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    hook.spawn(&tasks, &cancel);
    wait_for(&receiver, 1, WAIT).await;

    let calls = receiver.calls.lock().clone();
    let first = &calls[0].1;
    assert_eq!(first.len(), 9, "batched in one POST");
    assert_eq!(session_ids(first), (0..9).map(|n| format!("s{n}")).collect::<Vec<_>>(), "in order");
    assert_eq!(
        first[0],
        serde_json::json!({
            "userid": "apert60541", "status": "0", "os": "Android", "time": 1_700_000_000_000i64,
            "clientIp": "10.1.2.3:41748", "sessionId": "s0"
        })
    );
    assert_eq!(first[1]["status"], "1");
    assert_eq!(first[2]["status"], "2");
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    assert!(store.outbox.peek(&url, 10).await.unwrap().is_empty(), "delivered events leave the outbox");
}

/// W3 with its real numbers: no answer within 5 s is a timeout, retried 2
/// more times, then the batch is dropped; many timeouts in a short time
/// pause the receiver for 1 minute, and then it resumes with its batch.
#[tokio::test(start_paused = true)]
async fn w3_timeouts_are_retried_twice_then_dropped_and_many_pause_the_receiver() {
    let defaults = WebhookOptions::default();
    assert_eq!((defaults.timeout_ms, defaults.retries, defaults.pause_ms), (5_000, 2, 60_000), "W3's numbers");
    let timeout = Duration::from_millis(defaults.timeout_ms);
    let pause = Duration::from_millis(defaults.pause_ms);
    let (url, receiver) = start_receiver().await;
    *receiver.hang.lock() = true;
    let dir = tempfile::tempdir().unwrap();
    let storage = natter_runtime::Tasks::new();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
    // "Many": the defaults, 4 timeouts within a minute.
    let opts = WebhookOptions {
        timeout_ms: defaults.timeout_ms,
        pause_ms: defaults.pause_ms,
        trip_timeouts: defaults.trip_timeouts,
        trip_window_ms: defaults.trip_window_ms,
        ..options(&url)
    };
    let hook = Webhook::new(opts, store.outbox.clone()).unwrap();
    hook.enqueue(&[event("a", SessionStatus::Online, 1)]).await.unwrap();
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    hook.spawn(&tasks, &cancel);

    // Batch A: the first call and 2 retries time out, then it is dropped.
    wait_for(&receiver, 3, 3 * timeout).await;
    hook.enqueue(&[event("b", SessionStatus::Offline, 2)]).await.unwrap();
    // Batch B: its first timeout is the 4th in the window: the receiver pauses.
    wait_for(&receiver, 4, timeout + timeout / 2).await;
    *receiver.hang.lock() = false;
    wait_for(&receiver, 5, timeout + pause + timeout / 2).await;

    let calls = receiver.calls.lock().clone();
    let ids: Vec<Vec<String>> = calls.iter().map(|(_, b)| session_ids(b)).collect();
    assert_eq!(ids, [vec!["s1"], vec!["s1"], vec!["s1"], vec!["s2"], vec!["s2"]], "A tried 3 times, B resumed");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0.duration_since(w[0].0)).collect();
    // Each call is made the moment the one before timed out (retries and
    // the next batch are not delayed); the 5th after the timeout and the pause.
    assert_eq!(gaps, [timeout, timeout, timeout, timeout + pause], "from call to call");
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    assert!(store.outbox.peek(&url, 10).await.unwrap().is_empty(), "B was delivered after the pause");
}

#[tokio::test]
async fn queued_events_survive_a_restart() {
    let (url, receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = natter_runtime::Tasks::new();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
        let hook = Webhook::new(options(&url), store.outbox.clone()).unwrap();
        hook.enqueue(&[event("a", SessionStatus::Online, 1), event("a", SessionStatus::Offline, 2)]).await.unwrap();
        // Stopped before any worker ran: the presence role went down.
        storage.stop(Duration::from_secs(30)).await.unwrap();
    }
    let storage = natter_runtime::Tasks::new();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
    let hook = Webhook::new(options(&url), store.outbox.clone()).unwrap();
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    hook.spawn(&tasks, &cancel);
    wait_for(&receiver, 1, WAIT).await;
    assert_eq!(session_ids(&receiver.calls.lock()[0].1), ["s1", "s2"]);
    cancel.cancel();
}
