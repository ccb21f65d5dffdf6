//! One client connection, from hello to goodbye.
//!
//! Delivery (the O1 / delivery-contract core): the session subscribes to the
//! user's live events *before* reading the durable log, replays everything
//! after the cursor, says `caught_up`, then forwards live events. Each live
//! event names the seq before it (`prev`); if the session has delivered less
//! than that — a lagging subscription, a lost bus message, or two appends
//! published out of order — it reads the gap from the log first. Events at
//! or below what it delivered are skipped. So every durable event reaches the
//! socket once, in seq order, whatever the bus does.
//!
//! Requests are answered by a worker task, one at a time in arrival order
//! (so a client's messages are stored in the order it sent them), while the
//! main loop keeps delivering events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::future::BoxFuture;
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt, TryFutureExt};
use natter_bus::{Control, Live, LiveEvent, Transient};
use natter_proto::v1::{self, server_frame::Body as Out};
use natter_types::SessionInfo;
use natter_types::{Error, ErrorCode, LogEvent, SessionId, SessionStatus, UserId, now_ms};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::codec::{self, Decoded, Format};
use crate::ratelimit::TokenBucket;
use crate::{Command, Shared, dispatch};

/// Requests queued per connection before new ones are refused.
const MAX_QUEUED_REQUESTS: usize = 32;

/// How long a live event that arrived ahead of a gap waits for the missing
/// ones before the gap is read from the log. Concurrent senders' appends
/// are published in a different order than they committed, a few
/// milliseconds apart; waiting this long saves most log reads.
const REORDER_WAIT: Duration = Duration::from_millis(20);
/// Live events held back at most; past this the log is read at once.
const REORDER_MAX: usize = 64;
/// Frames written per socket before a flush, when more are ready: one
/// syscall for many frames instead of one each.
const WRITE_BATCH: usize = 64;

/// A request waiting for the worker: its id and body.
type Request = Box<(u64, v1::client_frame::Body)>;

/// From 1: session 0's heartbeat phase would be 0, a ping with its hello.
static SESSION_NUMBER: AtomicU64 = AtomicU64::new(1);

/// A new session's number, unique within this gateway process.
pub(crate) fn next_session_number() -> u64 {
    SESSION_NUMBER.fetch_add(1, Ordering::Relaxed)
}

/// Where in the ping interval session `number`'s heartbeat ticks, as a
/// fraction of the interval. Sessions that connect together (after a
/// gateway restart, or a load test's setup) would otherwise ping together
/// for as long as they live: 2000 pings and their pongs at once hold back
/// every message of the next ~50 ms (docs/PERFORMANCE.md#settings-that-matter). Multiples of the
/// golden ratio's fractional part fill [0, 1) evenly however many sessions
/// connect, and consecutive ones land far apart.
pub(crate) fn heartbeat_phase(number: u64) -> f64 {
    const GOLDEN_FRACTION: f64 = 0.618_033_988_749_895;
    (number as f64 * GOLDEN_FRACTION).fract()
}

pub(crate) struct Connection {
    pub(crate) user: UserId,
    pub(crate) session: SessionId,
    /// From [`next_session_number`]; sets the heartbeat's phase.
    pub(crate) number: u64,
    pub(crate) device: String,
    pub(crate) format: Format,
    pub(crate) platform: String,
    pub(crate) client_addr: String,
    pub(crate) cursor: Option<u64>,
    /// Token expiry, seconds since the epoch.
    pub(crate) expires_at: u64,
    pub(crate) connected_at: i64,
}

/// Why the session ended; decides the goodbye and the close code.
enum End {
    ClientGone,
    Kicked,
    LoggedOut,
    Shutdown,
    TokenExpired,
    Idle,
    Failed(Error),
}

struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    sink: SplitSink<WebSocket, Message>,
    /// Highest seq written to this socket.
    delivered: u64,
    /// Live events that arrived before the events they follow, by `prev`.
    ahead: BTreeMap<u64, LiveEvent>,
    /// When to stop waiting for the gap before `ahead` and read the log.
    gap_deadline: Option<Instant>,
}

/// The session's whole life. Set up before the future exists: an async fn
/// keeps its arguments (here the socket and the connection) in its state for
/// as long as it runs, next to what they were moved into, and every idle
/// session holds that state.
pub(crate) fn run(shared: Arc<Shared>, socket: WebSocket, conn: Connection) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    let (commands_tx, commands_rx) = mpsc::channel(4);
    let mut session =
        Session { shared: shared.clone(), conn, sink, delivered: 0, ahead: BTreeMap::new(), gap_deadline: None };
    async move {
        let (user, id) = (session.conn.user.clone(), session.conn.session.clone());
        shared.local.insert(id.clone(), commands_tx);
        shared.connected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(user = %user, session = %id, "session opened");

        let end = session.serve(stream, commands_rx).await;
        let status = if matches!(end, End::LoggedOut) { SessionStatus::LoggedOut } else { SessionStatus::Offline };
        // Boxed, like the other once-per-session and rare steps below: a
        // future is as large as its largest step, and every idle session
        // holds it (docs/PERFORMANCE.md#idle-connections).
        Box::pin(session.close(end)).await;

        shared.local.remove(&id);
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        // A kicked session was already removed (and announced) by the registry;
        // closing it again is a no-op there.
        if let Err(e) = shared.deps.presence.session_closed(&session.info(), status).await {
            tracing::warn!(user = %user, session = %id, error = %e, "reporting the session closed failed");
        }
        tracing::debug!(user = %user, session = %id, "session closed");
    }
}

impl Session {
    async fn serve(&mut self, mut stream: SplitStream<WebSocket>, mut commands: mpsc::Receiver<Command>) -> End {
        if let Err(e) = Box::pin(self.register()).await {
            return End::Failed(e);
        }
        let deps = self.shared.deps.clone();
        let mut live = match deps.bus.subscribe_user(&self.conn.user).await {
            Ok(live) => live,
            Err(e) => return End::Failed(e),
        };
        if let Err(e) = Box::pin(self.hello_and_replay()).await {
            return End::Failed(e);
        }

        // Started at the first request: an idle connection has no worker.
        let mut worker: Option<Worker> = None;

        let options = &self.shared.options;
        let limits = options.limits.clone();
        let mut bucket = TokenBucket::new(limits.requests_per_second, limits.request_burst);
        let first_ping = options.ping_interval.mul_f64(heartbeat_phase(self.conn.number));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + first_ping, options.ping_interval);
        let idle_timeout = options.idle_timeout;
        let mut last_heard = Instant::now();
        let token_left = Duration::from_secs(self.conn.expires_at.saturating_sub(crate::auth::unix_now()));
        let token_expiry = tokio::time::sleep(token_left);
        tokio::pin!(token_expiry);
        let cancel = self.shared.cancel.clone();

        loop {
            let step = tokio::select! {
                () = cancel.cancelled() => return End::Shutdown,
                Some(Command::Kick) = commands.recv() => return End::Kicked,
                () = &mut token_expiry => return End::TokenExpired,
                incoming = stream.next() => {
                    let Some(Ok(message)) = incoming else { return End::ClientGone };
                    last_heard = Instant::now();
                    if matches!(message, Message::Close(_)) {
                        return End::ClientGone;
                    }
                    match self.on_frame(&message, &mut bucket, &mut worker, limits.max_frame_bytes).await {
                        Ok(Some(end)) => return end,
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                Some(response) = next_response(&mut worker) => self.send(*response).await,
                live_event = live.next() => self.on_live(live_event).await,
                () = gap_timer(self.gap_deadline) => self.fill_gap().await,
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_timeout {
                        return End::Idle;
                    }
                    match self.check_head().await {
                        Ok(()) => self.sink.feed(Message::Ping(Default::default())).await.map_err(socket_error),
                        Err(e) => Err(e),
                    }
                }
            };
            // Whatever else is ready goes out with it, in one write.
            let step = match step {
                Ok(()) => self.write_ready(&mut worker, &mut live).await,
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                return End::Failed(e);
            }
        }
    }

    async fn on_live(&mut self, live: Option<Live>) -> Result<(), Error> {
        match live {
            Some(Live::Event(event)) => self.deliver_live(event).await,
            Some(Live::Transient(frame)) => self.send_transient(&frame).await,
            Some(Live::Lagged) => self.fill_gap().await,
            None => Err(Error::unavailable("live event stream ended")),
        }
    }

    /// Writes the responses and live events that are ready now (up to a
    /// batch), then flushes once.
    async fn write_ready(
        &mut self,
        worker: &mut Option<Worker>,
        live: &mut futures::stream::BoxStream<'static, Live>,
    ) -> Result<(), Error> {
        for _ in 0..WRITE_BATCH {
            if let Some(response) = worker.as_mut().and_then(|w| w.responses.try_recv().ok()) {
                self.send(*response).await?;
                continue;
            }
            match live.next().now_or_never() {
                Some(event) => self.on_live(event).await?,
                None => break,
            }
        }
        self.sink.flush().await.map_err(socket_error)
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            user: self.conn.user.clone(),
            session: self.conn.session.clone(),
            device: self.conn.device.clone(),
            gateway: self.shared.options.gateway_id.clone(),
            platform: self.conn.platform.clone(),
            client_addr: self.conn.client_addr.clone(),
            connected_at: self.conn.connected_at,
        }
    }

    /// Reports the session to presence; kicks the devices this one displaces.
    async fn register(&mut self) -> Result<(), Error> {
        let deps = &self.shared.deps;
        let kicked = deps.presence.session_opened(self.info()).await?;
        for old in kicked {
            tracing::info!(user = %old.user, session = %old.session, "kicking oldest device");
            let kick = Control::Kick { user: old.user, sessions: vec![old.session] };
            deps.bus.publish_control(&old.gateway, kick).await?;
        }
        Ok(())
    }

    async fn hello_and_replay(&mut self) -> Result<(), Error> {
        let log = &self.shared.deps.log;
        let user = &self.conn.user;
        let (head, oldest) = log.bounds(user).await?;
        // Without a cursor a device starts where the user's devices last
        // acknowledged: it receives what none of them has processed yet.
        let start = match self.conn.cursor {
            Some(cursor) => cursor,
            None => log.acked(user).await?.max(oldest.saturating_sub(1)).min(head),
        };
        self.delivered = start;
        let limits = &self.shared.options.limits;
        let hello = v1::Hello {
            user_id: user.to_string(),
            session_id: self.conn.session.to_string(),
            head,
            cursor: start,
            server_time: now_ms(),
            max_body_bytes: limits.max_body_bytes as u32,
            max_frame_bytes: limits.max_frame_bytes as u32,
        };
        self.send(Out::Hello(hello)).await?;
        self.catch_up().await?;
        self.send(Out::CaughtUp(v1::CaughtUp { seq: self.delivered })).await?;
        self.sink.flush().await.map_err(socket_error)
    }

    /// Writes every durable event after `delivered`, page by page.
    async fn catch_up(&mut self) -> Result<(), Error> {
        let log = self.shared.deps.log.clone();
        let page_size = self.shared.options.replay_page.max(1);
        loop {
            match log.read(&self.conn.user, self.delivered, page_size).await? {
                Ok(page) => {
                    let Some(&(last, _)) = page.events.last() else {
                        return Ok(());
                    };
                    let superseded = superseded_counts(&page.events);
                    for (i, (seq, event)) in page.events.iter().enumerate() {
                        if superseded.contains(&i) {
                            continue;
                        }
                        let frame = Out::Event(natter_proto::replay_frame(*seq, event));
                        self.sink.feed(codec::encode(&wrap(frame), self.conn.format)).await.map_err(socket_error)?;
                    }
                    self.sink.flush().await.map_err(socket_error)?;
                    self.delivered = last;
                }
                Err(expired) => {
                    tracing::info!(user = %self.conn.user, requested = expired.requested, oldest = expired.oldest, "cursor older than retention");
                    let resync =
                        v1::ResyncRequired { requested: expired.requested, oldest: expired.oldest, head: expired.head };
                    self.send(Out::ResyncRequired(resync)).await?;
                    self.delivered = expired.head;
                }
            }
        }
    }

    async fn deliver_live(&mut self, live: LiveEvent) -> Result<(), Error> {
        if live.seq <= self.delivered {
            return Ok(());
        }
        if live.prev > self.delivered {
            // Missed something, or it is still on its way. The log has it
            // durably; wait a moment for the live copy before reading it.
            if self.ahead.len() >= REORDER_MAX {
                return self.fill_gap().await;
            }
            self.ahead.insert(live.prev, live);
            self.gap_deadline.get_or_insert_with(|| Instant::now() + REORDER_WAIT);
            return Ok(());
        }
        self.delivered = live.seq;
        self.send_live(&live).await?;
        self.release_ahead().await
    }

    /// A live event whose publish was lost shows up at the next event's
    /// `prev`; one with no successor would wait for a reconnect. Comparing
    /// the log's head with what was delivered at every heartbeat bounds that
    /// wait by the ping interval.
    async fn check_head(&mut self) -> Result<(), Error> {
        if self.gap_deadline.is_some() {
            return Ok(()); // a gap read is due anyway
        }
        let (head, _) = self.shared.deps.log.bounds(&self.conn.user).await?;
        if head > self.delivered {
            tracing::debug!(user = %self.conn.user, head, delivered = self.delivered, "live event missed, reading the log");
            self.fill_gap().await?;
        }
        Ok(())
    }

    /// Reads what is missing from the log, then delivers what waited.
    /// Boxed: the log read is rare, and its state would otherwise be part of
    /// every session's future.
    fn fill_gap(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.catch_up().await?;
            self.release_ahead().await
        })
    }

    /// Delivers held-back events that now follow on, and drops those the
    /// log already delivered.
    async fn release_ahead(&mut self) -> Result<(), Error> {
        loop {
            let delivered = self.delivered;
            self.ahead.retain(|_, e| e.seq > delivered);
            let Some(next) = self.ahead.remove(&delivered) else { break };
            self.delivered = next.seq;
            self.send_live(&next).await?;
        }
        if self.ahead.is_empty() {
            self.gap_deadline = None;
        }
        Ok(())
    }

    async fn on_frame(
        &mut self,
        message: &Message,
        bucket: &mut TokenBucket,
        worker: &mut Option<Worker>,
        max_frame_bytes: usize,
    ) -> Result<Option<End>, Error> {
        let frame = match codec::decode(message, max_frame_bytes) {
            None => return Ok(None),
            Some(Decoded::Invalid { req_id, error }) => {
                return self.send(error_response(req_id, &error)).await.map(|()| None);
            }
            Some(Decoded::Frame(frame)) => frame,
        };
        let req_id = frame.req_id;
        match frame.body {
            None => {
                let error = Error::bad_request("frame", "has no request body");
                self.send(error_response(req_id, &error)).await.map(|()| None)
            }
            Some(v1::client_frame::Body::Ack(ack)) => {
                // Never beyond what this socket was given.
                let seq = ack.seq.min(self.delivered);
                self.shared.deps.log.ack(&self.conn.user, seq).await.map(|()| None)
            }
            Some(v1::client_frame::Body::Logout(_)) => {
                let ok = Out::Response(v1::Response { req_id, result: Some(v1::response::Result::Ok(v1::Empty {})) });
                self.send(ok).await?;
                Ok(Some(End::LoggedOut))
            }
            Some(body) => {
                if !bucket.try_take() {
                    let limits = &self.shared.options.limits;
                    let error = Error::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} requests per second (burst {}) on this connection",
                            limits.requests_per_second, limits.request_burst
                        ),
                    );
                    return self.send(error_response(req_id, &error)).await.map(|()| None);
                }
                let worker = worker.get_or_insert_with(|| Worker::start(&self.shared, &self.conn.user));
                if worker.requests.try_send(Box::new((req_id, body))).is_err() {
                    let error = Error::new(
                        ErrorCode::RateLimited,
                        format!("more than {MAX_QUEUED_REQUESTS} requests waiting for an answer"),
                    );
                    return self.send(error_response(req_id, &error)).await.map(|()| None);
                }
                Ok(None)
            }
        }
    }

    /// A live-only frame, already encoded for both formats.
    async fn send_transient(&mut self, frame: &Transient) -> Result<(), Error> {
        let message = match self.conn.format {
            Format::Proto => Message::Binary(frame.proto.clone()),
            Format::Json => match Utf8Bytes::try_from(frame.json.clone()) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(frame.proto.clone()),
            },
        };
        self.sink.feed(message).await.map_err(socket_error)
    }

    /// Queues a frame; the serve loop flushes after each round. Encodes
    /// before returning the future, so the future holds only the encoded
    /// frame: it is part of the state of every caller (and of every idle
    /// session), and `Out` is ~230 bytes.
    fn send(&mut self, body: Out) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let frame = codec::encode(&wrap(body), self.conn.format);
        self.sink.feed(frame).map_err(socket_error)
    }

    /// A live event's frame. In protobuf, the event part is encoded once
    /// for every recipient of its fan-out and only the seq is written here.
    fn send_live(&mut self, live: &LiveEvent) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let frame = match self.conn.format {
            Format::Proto => {
                let body = live.event.encoded(|event| natter_proto::event_body(event).into());
                Message::Binary(natter_proto::event_frame_bytes(live.seq, body).into())
            }
            Format::Json => {
                codec::encode(&wrap(Out::Event(natter_proto::event_frame(live.seq, &live.event))), Format::Json)
            }
        };
        self.sink.feed(frame).map_err(socket_error)
    }

    /// Says why, then closes. Errors here are moot: the socket is going.
    async fn close(&mut self, end: End) {
        use v1::GoodbyeReason as R;
        let (reason, code, text) = match end {
            End::ClientGone => {
                // Flushes the close reply tungstenite queued for the client's close.
                let _ = self.sink.close().await;
                return;
            }
            End::Kicked => (R::KickedByOtherDevice, 4001, "signed in on another device".to_owned()),
            End::LoggedOut => (R::LoggedOut, 1000, "logged out".to_owned()),
            End::Shutdown => (R::ServerShutdown, 1001, "server shutting down, reconnect".to_owned()),
            End::TokenExpired => (R::TokenExpired, 4003, "token expired".to_owned()),
            End::Idle => (R::ProtocolError, 1001, "no frame or pong within the idle timeout".to_owned()),
            End::Failed(e) => {
                tracing::warn!(user = %self.conn.user, error = %e, "session failed");
                (R::ServerShutdown, 1011, format!("server error: {}", e.message))
            }
        };
        let goodbye = v1::Goodbye { reason: reason as i32, message: text.clone() };
        let _ = self.send(Out::Goodbye(goodbye)).await;
        let close = CloseFrame { code, reason: text.into() };
        let _ = self.sink.send(Message::Close(Some(close))).await;
    }
}

/// Answers a session's requests in order, one at a time, while the session
/// goes on reading and delivering.
struct Worker {
    requests: mpsc::Sender<Request>,
    responses: mpsc::Receiver<Box<Out>>,
    _task: AbortOnDropHandle<()>,
}

impl Worker {
    fn start(shared: &Arc<Shared>, user: &UserId) -> Self {
        // Queued values are boxed: tokio allocates a channel's first block
        // of 32 slots up front, and unboxed frames made that ~13 KiB.
        let (requests, requests_rx) = mpsc::channel(MAX_QUEUED_REQUESTS);
        let (responses_tx, responses) = mpsc::channel(MAX_QUEUED_REQUESTS);
        let task = tokio::spawn(answer_requests(shared.clone(), user.clone(), requests_rx, responses_tx));
        Self { requests, responses, _task: AbortOnDropHandle::new(task) }
    }
}

/// The worker's next response; never, while there is no worker.
async fn next_response(worker: &mut Option<Worker>) -> Option<Box<Out>> {
    match worker {
        Some(worker) => worker.responses.recv().await,
        None => std::future::pending().await,
    }
}

async fn answer_requests(
    shared: Arc<Shared>,
    user: UserId,
    mut requests: mpsc::Receiver<Request>,
    responses: mpsc::Sender<Box<Out>>,
) {
    while let Some(request) = requests.recv().await {
        let (req_id, body) = *request;
        let result = match dispatch::handle(&shared, &user, body).await {
            Ok(result) => result,
            Err(error) => {
                if error.code == ErrorCode::Internal {
                    tracing::error!(user = %user, error = %error, "request failed");
                }
                v1::response::Result::Error((&error).into())
            }
        };
        let response = Out::Response(v1::Response { req_id, result: Some(result) });
        if responses.send(Box::new(response)).await.is_err() {
            return;
        }
    }
}

/// Fires at the deadline; never without one.
async fn gap_timer(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn wrap(body: Out) -> v1::ServerFrame {
    v1::ServerFrame { body: Some(body) }
}

fn error_response(req_id: u64, error: &Error) -> Out {
    Out::Response(v1::Response { req_id, result: Some(v1::response::Result::Error(error.into())) })
}

fn socket_error(e: axum::Error) -> Error {
    Error::unavailable(format!("socket: {e}"))
}

/// The group read counts of a replayed page that a later count for the same
/// message in the page makes stale: each carries the whole count, so a
/// device resuming after many receipts gets one per message, not one per
/// write (R6). Skipping one is safe: a device that stops before the later
/// one has not passed its seq and gets it on the next resume.
fn superseded_counts(events: &[(u64, LogEvent)]) -> std::collections::HashSet<usize> {
    let mut newest = std::collections::HashSet::new();
    let mut superseded = std::collections::HashSet::new();
    for (i, (_, event)) in events.iter().enumerate().rev() {
        if let LogEvent::Receipt(r) = event
            && r.is_group_count()
            && !newest.insert((r.to.as_str(), r.message_id))
        {
            superseded.insert(i);
        }
    }
    superseded
}

#[cfg(test)]
mod tests {
    use natter_types::{ChatType, MessageId, Receipt, ReceiptKind, UserId};

    use super::{LogEvent, heartbeat_phase, superseded_counts};

    fn count(message: u64, read_count: u64) -> (u64, LogEvent) {
        let receipt = Receipt {
            kind: ReceiptKind::Read,
            message_id: MessageId(message),
            chat_type: if read_count > 0 { ChatType::Group } else { ChatType::Single },
            from: UserId::system(),
            to: "42".into(),
            time: 0,
            read_count,
        };
        (0, LogEvent::Receipt(receipt))
    }

    /// R6 on resume: the newest count of each message stays, 1:1 receipts
    /// all stay.
    #[test]
    fn a_replayed_page_keeps_the_newest_count_per_message() {
        let page = [count(1, 1), count(2, 1), count(1, 2), count(7, 0), count(7, 0), count(1, 3)];
        let mut superseded: Vec<usize> = superseded_counts(&page).into_iter().collect();
        superseded.sort_unstable();
        assert_eq!(superseded, [0, 2]);
    }

    /// However many sessions connect at once, their pings spread over the
    /// whole interval: no tenth of it takes much more than its share.
    #[test]
    fn heartbeat_phases_fill_the_interval_evenly() {
        for (first, count) in [(0, 1000), (7, 20), (1_000_000_000, 500)] {
            let mut tenths = [0usize; 10];
            for number in first..first + count {
                let phase = heartbeat_phase(number);
                assert!((0.0..1.0).contains(&phase), "{phase}");
                tenths[(phase * 10.0) as usize] += 1;
            }
            let share = count as usize / 10;
            assert!(tenths.iter().all(|&n| n.abs_diff(share) <= 2), "{first}..+{count}: {tenths:?}");
        }
    }
}
