//! The presence webhook (W1–W5): every session status change is queued in a
//! durable outbox per receiver and POSTed as a JSON array, oldest first, so
//! per-user order holds and nothing queued is lost to a restart.
//!
//! A call that gets no 200 within the timeout is retried `retries` more
//! times, then dropped (as the seed specifies). When `trip_timeouts` calls
//! time out within `trip_window`, the receiver is paused for `pause` and then
//! resumed with the batch it was on. Each receiver has its own worker, so a
//! slow one never holds up another.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use natter_store::WebhookOutbox;
use natter_types::{Result, WebhookEvent};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookOptions {
    /// Receiver URLs (http or https); empty disables the webhook.
    pub urls: Vec<String>,
    /// Sent as `appKey`.
    pub app_key: String,
    /// Signs each call: signature = hex(sha1(app_secret + nonce + timestamp)).
    pub app_secret: String,
    pub timeout_ms: u64,
    /// Further attempts after a failed one.
    pub retries: u32,
    /// Timeouts within `trip_window_ms` that pause a receiver.
    pub trip_timeouts: usize,
    pub trip_window_ms: u64,
    pub pause_ms: u64,
    /// Events per POST.
    pub max_batch: usize,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            app_key: String::new(),
            app_secret: String::new(),
            timeout_ms: 5_000,
            retries: 2,
            // A receiver's calls run one after another, so the window must
            // hold this many whole timeouts: four unanswered calls (20 s)
            // within a minute pause it.
            trip_timeouts: 4,
            trip_window_ms: 60_000,
            pause_ms: 60_000,
            max_batch: 100,
        }
    }
}

impl WebhookOptions {
    pub fn validate(&self) -> std::result::Result<(), String> {
        for url in &self.urls {
            let parsed =
                url::Url::parse(url).map_err(|e| format!("presence.webhook.urls: {url:?} is not a url: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("presence.webhook.urls: {url:?} must be http or https"));
            }
        }
        if !self.urls.is_empty() && self.app_secret.is_empty() {
            return Err("presence.webhook.app_secret must be set when urls are".into());
        }
        if self.timeout_ms == 0 || self.max_batch == 0 || self.trip_timeouts == 0 {
            return Err("presence.webhook.timeout_ms, max_batch and trip_timeouts must be greater than 0".into());
        }
        // Calls to one receiver are sequential: a window shorter than this
        // many timeouts could never see them and would never pause.
        let needed = self.timeout_ms.saturating_mul(self.trip_timeouts as u64);
        if self.trip_window_ms < needed {
            return Err(format!(
                "presence.webhook.trip_window_ms is {} ms; {} timeouts of {} ms need at least {needed} ms",
                self.trip_window_ms, self.trip_timeouts, self.timeout_ms
            ));
        }
        Ok(())
    }
}

/// hex(sha1(secret + nonce + timestamp)), as W2 specifies.
pub fn signature(app_secret: &str, nonce: &str, timestamp: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(app_secret.as_bytes());
    hasher.update(nonce.as_bytes());
    hasher.update(timestamp.as_bytes());
    hex::encode(hasher.finalize())
}

/// The JSON object of one event (W1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    userid: &'a str,
    status: &'a str,
    os: &'a str,
    time: i64,
    client_ip: &'a str,
    session_id: &'a str,
}

#[derive(Clone)]
pub struct Webhook {
    inner: Arc<Inner>,
}

struct Inner {
    options: WebhookOptions,
    outbox: Arc<dyn WebhookOutbox>,
    http: reqwest::Client,
    wake: Vec<Notify>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("urls", &self.inner.options.urls).finish_non_exhaustive()
    }
}

enum Attempt {
    Delivered,
    Failed,
    TimedOut,
}

impl Webhook {
    pub fn new(options: WebhookOptions, outbox: Arc<dyn WebhookOutbox>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(options.timeout_ms))
            .build()
            .map_err(|e| natter_types::Error::internal(format!("webhook http client: {e}")))?;
        let wake = options.urls.iter().map(|_| Notify::new()).collect();
        Ok(Self { inner: Arc::new(Inner { options, outbox, http, wake }) })
    }

    pub fn enabled(&self) -> bool {
        !self.inner.options.urls.is_empty()
    }

    /// Queues the events for every receiver (durably), then wakes the workers.
    pub async fn enqueue(&self, events: &[WebhookEvent]) -> Result<()> {
        for (url, wake) in self.inner.options.urls.iter().zip(&self.inner.wake) {
            self.inner.outbox.push(url, events).await?;
            wake.notify_one();
        }
        Ok(())
    }

    /// Starts one worker per receiver, owned by `tasks`, stopping on `cancel`.
    pub fn spawn(&self, tasks: &TaskTracker, cancel: &CancellationToken) {
        self.spawn_workers(tasks, cancel, None);
    }

    /// Like [`spawn`](Self::spawn), for when other processes queue events
    /// too (several presence processes on one store): their wake-ups do not
    /// reach this process, so an idle worker also looks every `poll`.
    pub fn spawn_polling(&self, tasks: &TaskTracker, cancel: &CancellationToken, poll: Duration) {
        self.spawn_workers(tasks, cancel, Some(poll));
    }

    fn spawn_workers(&self, tasks: &TaskTracker, cancel: &CancellationToken, idle_poll: Option<Duration>) {
        for index in 0..self.inner.options.urls.len() {
            let worker = Worker { hook: self.clone(), index, timeouts: VecDeque::new(), idle_poll };
            tasks.spawn(worker.run(cancel.clone()));
        }
    }
}

struct Worker {
    hook: Webhook,
    index: usize,
    /// When recent calls timed out, for the pause rule.
    timeouts: VecDeque<Instant>,
    idle_poll: Option<Duration>,
}

impl Worker {
    async fn run(mut self, cancel: CancellationToken) {
        let inner = self.hook.inner.clone();
        let url = &inner.options.urls[self.index];
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let batch = match inner.outbox.peek(url, inner.options.max_batch).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "reading the webhook outbox failed");
                    if sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(&(last_id, _)) = batch.last() else {
                let poll = async {
                    match self.idle_poll {
                        Some(poll) => tokio::time::sleep(poll).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = inner.wake[self.index].notified() => continue,
                    () = poll => continue,
                }
            };
            let events: Vec<WebhookEvent> = batch.into_iter().map(|(_, e)| e).collect();
            if !self.deliver(url, &events, &cancel).await {
                return;
            }
            if let Err(e) = inner.outbox.remove(url, last_id).await {
                tracing::warn!(url = %url, error = %e, "removing delivered webhook events failed");
            }
        }
    }

    /// Tries the batch until it is delivered or its attempts are used up;
    /// false if cancelled meanwhile.
    async fn deliver(&mut self, url: &str, events: &[WebhookEvent], cancel: &CancellationToken) -> bool {
        let options = self.hook.inner.options.clone();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.post(url, events).await {
                Attempt::Delivered => return true,
                Attempt::Failed => {}
                Attempt::TimedOut => {
                    let now = Instant::now();
                    self.timeouts.push_back(now);
                    let window = Duration::from_millis(options.trip_window_ms);
                    while self.timeouts.front().is_some_and(|t| now.duration_since(*t) > window) {
                        self.timeouts.pop_front();
                    }
                    if self.timeouts.len() >= options.trip_timeouts {
                        tracing::warn!(url = %url, pause_ms = options.pause_ms, "webhook receiver keeps timing out, pausing");
                        self.timeouts.clear();
                        if sleep_or_cancel(Duration::from_millis(options.pause_ms), cancel).await {
                            return false;
                        }
                        // Resume with this batch and fresh attempts.
                        attempts = 0;
                        continue;
                    }
                }
            }
            if attempts > options.retries {
                tracing::warn!(url = %url, events = events.len(), "webhook call failed after retries, dropping the batch");
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
        }
    }

    async fn post(&self, url: &str, events: &[WebhookEvent]) -> Attempt {
        let options = &self.hook.inner.options;
        let timestamp = natter_types::now_ms().to_string();
        let nonce = format!("{:016x}", nonce());
        let signature = signature(&options.app_secret, &nonce, &timestamp);
        let payload: Vec<Payload<'_>> = events
            .iter()
            .map(|e| Payload {
                userid: e.user.as_str(),
                status: e.status.code(),
                os: &e.os,
                time: e.time,
                client_ip: &e.client_ip,
                session_id: &e.session_id,
            })
            .collect();
        let request = self.hook.inner.http.post(url).query(&[
            ("appKey", options.app_key.as_str()),
            ("timestamp", timestamp.as_str()),
            ("nonce", nonce.as_str()),
            ("signature", signature.as_str()),
        ]);
        match request.json(&payload).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => Attempt::Delivered,
            Ok(response) => {
                tracing::debug!(url = %url, status = %response.status(), "webhook receiver refused");
                Attempt::Failed
            }
            Err(e) if e.is_timeout() => Attempt::TimedOut,
            Err(e) => {
                tracing::debug!(url = %url, error = %e, "webhook call failed");
                Attempt::Failed
            }
        }
    }
}

/// True if cancelled first.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

fn nonce() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w2_signature_is_hex_sha1_of_secret_nonce_timestamp() {
        // The FIPS 180 test vector: sha1("abc").
        assert_eq!(signature("a", "b", "c"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_ne!(signature("a", "c", "b"), signature("a", "b", "c"), "order matters");
    }

    #[test]
    fn w3_a_window_that_cannot_hold_the_timeouts_is_refused() {
        WebhookOptions::default().validate().expect("the defaults can pause a receiver");
        let never = WebhookOptions { trip_timeouts: 10, trip_window_ms: 10_000, ..WebhookOptions::default() };
        let err = never.validate().expect_err("10 sequential 5 s timeouts never fit in 10 s");
        assert!(err.contains("presence.webhook.trip_window_ms") && err.contains("50000"), "{err}");
    }
}
