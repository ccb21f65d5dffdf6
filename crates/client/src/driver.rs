//! The background task that owns the socket.
//!
//! One task per client does all the I/O, so the delivery state (the seq mark,
//! the echo filter, requests in flight) has a single owner and needs no locks.
//! It runs until the application closes the client, until nobody can observe
//! it any more (every [`crate::Client`] and the [`crate::Events`] dropped), or
//! until the server ends the session for good.
//!
//! Two positions are kept apart: `delivered`, the highest seq queued for the
//! application, decides what is a repeat and where a reconnect resumes (the
//! queue survives reconnects); `Shared::consumed`, the highest seq the
//! application has taken out of the queue, is what gets acknowledged.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use natter_proto::v1;
use natter_proto::v1::client_frame::Body as Req;
use natter_proto::v1::event::Kind;
use natter_proto::v1::server_frame::Body as Push;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, error, info, trace, warn};

use crate::backoff::Backoff;
use crate::conn::{self, Incoming, Socket};
use crate::delivery::{EchoFilter, SeqMark};
use crate::events::{Item, Shared};
use crate::{ClientError, ClientEvent, ClientOptions};

/// Frames taken off the socket in one go before acking and giving other work
/// a turn. When nobody reads [`crate::Events`], acks follow arrival and this
/// bounds how many events one ack covers.
const READ_BATCH: usize = 256;
/// Requests written before one flush.
const WRITE_BATCH: usize = 128;
/// How long a clean close waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Who waits for a request's answer.
pub(crate) enum Reply {
    Caller(oneshot::Sender<Result<v1::response::Result, ClientError>>),
    /// A delivery receipt the SDK sends by itself
    /// ([`ClientOptions::delivery_receipts`]): nobody waits for it.
    Automatic,
}

impl Reply {
    /// The caller stopped waiting (timed out).
    fn is_closed(&self) -> bool {
        match self {
            Self::Caller(sender) => sender.is_closed(),
            Self::Automatic => false,
        }
    }

    fn send(self, result: Result<v1::response::Result, ClientError>) {
        match self {
            Self::Caller(sender) => {
                // The caller may have timed out and gone; nothing to do then.
                let _ = sender.send(result);
            }
            Self::Automatic => {
                if let Err(e) = result {
                    debug!(error = %e, "automatic delivery receipt not taken");
                }
            }
        }
    }
}

pub(crate) enum Command {
    Request { body: Req, reply: Reply },
    Close,
}

/// A request waiting for a connection.
struct Queued {
    body: Req,
    reply: Reply,
}

/// A request written to the current connection.
struct InFlight {
    /// Kept for sends only: they are idempotent by client_msg_id and so are
    /// written again after a reconnect. Anything else fails instead, since
    /// whether the server applied it is unknown.
    resend: Option<Req>,
    reply: Reply,
}

/// Why a connection ended.
enum End {
    /// Closed by the application, or nobody is left to observe the client.
    Stop,
    /// The server ended the session for good.
    Kicked(v1::Goodbye),
    /// Lost: reconnect (if enabled).
    Dropped(String),
}

pub(crate) struct Driver {
    opts: ClientOptions,
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedReceiver<Command>,
    /// False once every `Client` handle is gone.
    cmds_open: bool,
    events: mpsc::UnboundedSender<Item>,
    delivered: SeqMark,
    /// Whether `delivered` is a position we asked for (an explicit cursor or
    /// an earlier hello), as opposed to "let the server choose".
    cursor_known: bool,
    acked: u64,
    /// Events received since the last ack; used while nobody reads `Events`.
    unacked: u32,
    echo: EchoFilter,
    next_req_id: u64,
    in_flight: HashMap<u64, InFlight>,
    outbox: VecDeque<Queued>,
    backoff: Backoff,
    connected_at: Instant,
}

impl Driver {
    pub(crate) fn new(
        opts: ClientOptions,
        shared: Arc<Shared>,
        cmds: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Item>,
    ) -> Self {
        let backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
        Self {
            delivered: SeqMark::new(opts.cursor.unwrap_or(0)),
            cursor_known: opts.cursor.is_some(),
            opts,
            shared,
            cmds,
            cmds_open: true,
            events,
            acked: 0,
            unacked: 0,
            echo: EchoFilter::new(),
            next_req_id: 0,
            in_flight: HashMap::new(),
            outbox: VecDeque::new(),
            backoff,
            connected_at: Instant::now(),
        }
    }

    /// Serve the connection `connect` opened, then reconnect as long as that
    /// is wanted and possible.
    pub(crate) async fn run(mut self, socket: Socket, hello: v1::Hello) {
        let mut conn = Some((socket, hello));
        loop {
            let (socket, hello) = match conn.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => break,
                },
            };
            self.on_hello(hello);
            match self.serve(socket).await {
                End::Stop => break,
                End::Kicked(goodbye) => {
                    self.kicked(goodbye);
                    break;
                }
                End::Dropped(reason) => {
                    warn!(%reason, delivered = self.delivered.get(), "connection lost");
                    // Only a connection that held for a while earns a fast
                    // retry; one dropped right after hello (a crash-looping
                    // server, a proxy) keeps the delays growing.
                    if self.connected_at.elapsed() >= self.opts.backoff_max {
                        self.backoff.reset();
                    }
                    self.after_drop();
                    self.push(Some(ClientEvent::Disconnected { reason }));
                    if !self.opts.reconnect {
                        break;
                    }
                }
            }
        }
        self.fail_all(|| ClientError::Closed);
        debug!(delivered = self.delivered.get(), "client stopped");
    }

    fn on_hello(&mut self, hello: v1::Hello) {
        let requested = self.delivered.get();
        if self.delivered.advance_to(hello.cursor) && self.cursor_known {
            // Only the server can tell us why (a resync_required should
            // follow); the events in between are not coming either way.
            warn!(requested, starts_after = hello.cursor, "server resumes after the requested cursor");
        }
        self.cursor_known = true;
        // The server knows where it starts; no need to acknowledge that again.
        self.acked = self.acked.max(hello.cursor);
        self.echo.set_user(&hello.user_id);
        self.connected_at = Instant::now();
        info!(
            session_id = %hello.session_id,
            head = hello.head,
            cursor = hello.cursor,
            "connected"
        );
        self.shared.set_hello(hello.clone());
        self.push(Some(ClientEvent::Connected(hello)));
    }

    async fn serve(&mut self, mut ws: Socket) -> End {
        let write_limit = self.opts.request_timeout;
        match tokio::time::timeout(write_limit, self.flush_outbox(&mut ws)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Dropped(format!("write failed: {e}")),
            Err(_) => return End::Dropped("write stalled".to_owned()),
        }
        let heartbeat = self.opts.heartbeat.filter(|d| !d.is_zero());
        let period = heartbeat.unwrap_or(Duration::from_secs(3600));
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut goodbye: Option<v1::Goodbye> = None;

        loop {
            tokio::select! {
                cmd = self.cmds.recv(), if self.cmds_open => {
                    let Some(cmd) = cmd else {
                        self.cmds_open = false;
                        if self.events.is_closed() {
                            return self.shutdown(&mut ws).await;
                        }
                        continue;
                    };
                    match tokio::time::timeout(write_limit, self.on_commands(cmd, &mut ws)).await {
                        Ok(None) => {}
                        Ok(Some(end)) => return end,
                        Err(_) => return End::Dropped("write stalled".to_owned()),
                    }
                }
                msg = ws.next() => {
                    last_heard = Instant::now();
                    if let Some(end) = self.on_incoming(msg, &mut goodbye) {
                        return end;
                    }
                    // Take what has already arrived before acking, so a replay
                    // is acknowledged once rather than frame by frame.
                    for _ in 0..READ_BATCH {
                        let Some(msg) = ws.next().now_or_never() else { break };
                        if let Some(end) = self.on_incoming(msg, &mut goodbye) {
                            return end;
                        }
                    }
                    if self.events.is_closed() && self.unacked > 0 {
                        let seq = self.delivered.get();
                        if let Err(end) = write_within(write_limit, self.ack(&mut ws, seq)).await {
                            return end;
                        }
                    }
                    // Responses may have opened the window for queued requests.
                    if let Err(end) = write_within(write_limit, self.flush_outbox(&mut ws)).await {
                        return end;
                    }
                }
                () = self.shared.ack_wanted.notified() => {
                    let seq = self.shared.consumed.load(Ordering::Acquire);
                    if let Err(end) = write_within(write_limit, self.ack(&mut ws, seq)).await {
                        return end;
                    }
                }
                () = self.events.closed(), if !self.cmds_open => {
                    return self.shutdown(&mut ws).await;
                }
                _ = ticks.tick(), if heartbeat.is_some() => {
                    let silent = last_heard.elapsed();
                    if silent >= period * 3 {
                        return End::Dropped(format!("no traffic from the server for {} ms", silent.as_millis()));
                    }
                    if let Err(end) = write_within(write_limit, ws.send(Message::Ping(Default::default()))).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Write `first` and whatever else is already queued, then flush once.
    async fn on_commands(&mut self, first: Command, ws: &mut Socket) -> Option<End> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Close => return Some(self.shutdown(ws).await),
                Command::Request { body, reply } => {
                    if !self.outbox.is_empty() || !self.window_open() {
                        // Behind the window: written as responses free it.
                        self.outbox.push_back(Queued { body, reply });
                    } else if let Err(e) = self.feed(ws, body, reply).await {
                        return Some(End::Dropped(format!("write failed: {e}")));
                    }
                    written += 1;
                }
            }
            if written < WRITE_BATCH {
                next = self.cmds.try_recv().ok();
            }
        }
        match ws.flush().await {
            Ok(()) => None,
            Err(e) => Some(End::Dropped(format!("write failed: {e}"))),
        }
    }

    /// Write queued requests as far as the window allows.
    async fn flush_outbox(&mut self, ws: &mut Socket) -> Result<(), tungstenite::Error> {
        if self.outbox.is_empty() || !self.window_open() {
            return Ok(());
        }
        trace!(queued = self.outbox.len(), in_flight = self.in_flight.len(), "writing queued requests");
        // One at a time off the front: if a write fails, the rest stay queued.
        while self.window_open() {
            let Some(q) = self.outbox.pop_front() else {
                break;
            };
            self.feed(ws, q.body, q.reply).await?;
        }
        ws.flush().await
    }

    /// Whether another request may be written now. The gateway refuses
    /// requests past a small per-connection queue with RATE_LIMITED, so the
    /// SDK holds extra ones back instead of letting them fail.
    fn window_open(&self) -> bool {
        self.in_flight.len() < self.opts.max_in_flight.max(1)
    }

    /// Assign a req_id, register the request and buffer its frame (unflushed).
    async fn feed(&mut self, ws: &mut Socket, body: Req, reply: Reply) -> Result<(), tungstenite::Error> {
        if reply.is_closed() {
            // The caller stopped waiting (timed out) before it was written.
            return Ok(());
        }
        let is_send = if let Req::Send(s) = &body {
            self.echo.note_sending(&s.client_msg_id);
            true
        } else {
            false
        };
        self.next_req_id += 1;
        let req_id = self.next_req_id;
        let frame = v1::ClientFrame { req_id, body: Some(body) };
        let msg = conn::encode(&frame);
        let resend = if is_send { frame.body } else { None };
        // Registered before the write: should the write fail, the drop
        // handling must still see it to retry or fail it.
        self.in_flight.insert(req_id, InFlight { resend, reply });
        trace!(req_id, "request written");
        ws.feed(msg).await
    }

    fn on_incoming(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
        goodbye: &mut Option<v1::Goodbye>,
    ) -> Option<End> {
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                return Some(End::Dropped(closed_reason(goodbye, &format!("websocket: {e}"))));
            }
            None => return Some(End::Dropped(closed_reason(goodbye, "connection closed"))),
        };
        match conn::decode(msg) {
            Incoming::Frame(frame) => self.on_frame(frame, goodbye),
            Incoming::Control => None,
            Incoming::Closed(why) => {
                Some(End::Dropped(closed_reason(goodbye, &format!("server closed the connection ({why})"))))
            }
            Incoming::Invalid(why) => {
                // Skipping the frame could skip an event; reconnecting makes
                // the server replay it, and the log says loudly why.
                error!(%why, "dropping the connection over a frame this sdk cannot decode");
                Some(End::Dropped(why))
            }
        }
    }

    fn on_frame(&mut self, frame: v1::ServerFrame, goodbye: &mut Option<v1::Goodbye>) -> Option<End> {
        match frame.body {
            Some(Push::Event(ev)) => self.on_event(ev),
            Some(Push::Response(r)) => self.on_response(r),
            Some(Push::CaughtUp(c)) => {
                debug!(seq = c.seq, delivered = self.delivered.get(), "caught up");
                self.push(Some(ClientEvent::CaughtUp(c.seq)));
            }
            Some(Push::ResyncRequired(r)) => {
                warn!(
                    requested = r.requested,
                    oldest = r.oldest,
                    head = r.head,
                    "events were dropped by the server: resync required"
                );
                // Delivery continues after head; resuming from an older
                // cursor would only ask for the same resync again.
                self.delivered.advance_to(r.head);
                self.push(Some(ClientEvent::ResyncRequired(r)));
            }
            Some(Push::Goodbye(g)) => {
                let reason = v1::GoodbyeReason::try_from(g.reason).unwrap_or(v1::GoodbyeReason::Unspecified);
                match reason {
                    // Reconnecting would only displace the newer device again,
                    // or be refused for the same token.
                    v1::GoodbyeReason::KickedByOtherDevice
                    | v1::GoodbyeReason::TokenExpired
                    | v1::GoodbyeReason::LoggedOut => {
                        return Some(End::Kicked(g));
                    }
                    // The close follows; read on until then and reconnect.
                    // PROTOCOL_ERROR is among these because the gateway also
                    // uses it for an idle timeout (a stalled client), which a
                    // fresh connection cures; a persistent one still backs off,
                    // as short-lived connections do not reset the backoff.
                    v1::GoodbyeReason::ServerShutdown
                    | v1::GoodbyeReason::ProtocolError
                    | v1::GoodbyeReason::Unspecified => {
                        info!(reason = reason.as_str_name(), message = %g.message, "server says goodbye");
                        *goodbye = Some(g);
                    }
                }
            }
            Some(Push::OnPresenceStatusChange(p)) => self.push(Some(ClientEvent::OnPresenceStatusChange(p))),
            Some(Push::Hello(h)) => {
                debug!(session_id = %h.session_id, "hello in the middle of a connection");
                self.echo.set_user(&h.user_id);
                self.shared.set_hello(h);
            }
            Some(Push::Pong(_)) | None => {}
        }
        None
    }

    fn on_event(&mut self, ev: v1::Event) {
        let seq = ev.seq;
        if !self.delivered.accept(seq) {
            // Normal around reconnects: the server replays from our cursor
            // while live events may already have been queued.
            debug!(seq, delivered = self.delivered.get(), "dropping repeated event");
            return;
        }
        self.unacked = self.unacked.saturating_add(1);
        let event = match ev.kind {
            Some(Kind::OnTextMessage(m)) => self.unless_echo(seq, m).map(ClientEvent::OnTextMessage),
            Some(Kind::OnCustomMessage(m)) => self.unless_echo(seq, m).map(ClientEvent::OnCustomMessage),
            Some(Kind::OnGroupChange(g)) => Some(ClientEvent::OnGroupChange(g)),
            Some(Kind::OnMultiDeviceEvent(e)) => Some(ClientEvent::OnMultiDeviceEvent(e)),
            Some(Kind::OnChannelMessage(a)) => Some(ClientEvent::OnChannelMessage(a)),
            Some(Kind::OnDeliveredMessage(r)) => Some(ClientEvent::OnDeliveredMessage(r)),
            Some(Kind::OnReadMessage(r)) => Some(ClientEvent::OnReadMessage(r)),
            Some(Kind::OnStatisticMessage(r)) => Some(ClientEvent::OnStatisticMessage(r)),
            Some(Kind::OnRecallMessage(r)) => Some(ClientEvent::OnRecallMessage(r)),
            None => {
                debug!(seq, "skipping an event of a kind this sdk does not know");
                None
            }
        };
        if self.opts.delivery_receipts
            && let Some(m) = event.as_ref().and_then(ClientEvent::message)
        {
            self.deliver_receipt(m);
        }
        // Queued even when suppressed, so the cursor moves past it once the
        // application reaches this point of the stream.
        self.push(event);
    }

    /// R2: tells the sender of a 1:1 message from someone else that it
    /// arrived (the seed SDK's `delivery: true`). Queued like any request;
    /// written once the window allows.
    fn deliver_receipt(&mut self, m: &v1::Message) {
        if m.chat_type != v1::ChatType::Single as i32 || m.from_system || m.to != self.echo.user() {
            return;
        }
        let body = Req::Receipt(v1::SendReceipt {
            r#type: v1::ReceiptType::Delivery as i32,
            to: m.from.clone(),
            chat_type: v1::ChatType::Single as i32,
            id: m.id,
        });
        self.outbox.push_back(Queued { body, reply: Reply::Automatic });
    }

    fn unless_echo(&self, seq: u64, m: v1::Message) -> Option<v1::Message> {
        if self.echo.is_echo(&m) {
            trace!(seq, id = m.id, client_msg_id = %m.client_msg_id, "suppressing the echo of our own send");
            return None;
        }
        Some(m)
    }

    fn on_response(&mut self, r: v1::Response) {
        let Some(pending) = self.in_flight.remove(&r.req_id) else {
            debug!(req_id = r.req_id, "response to no request in flight");
            return;
        };
        let result = match r.result {
            Some(v1::response::Result::Error(e)) => Err(ClientError::from_wire(e)),
            Some(result) => Ok(result),
            None => Err(ClientError::Protocol(format!("response {} has no result", r.req_id))),
        };
        if let Ok(v1::response::Result::Sent(sent)) = &result {
            self.echo.note_sent(sent.server_msg_id);
        }
        pending.reply.send(result);
    }

    async fn ack(&mut self, ws: &mut Socket, seq: u64) -> Result<(), tungstenite::Error> {
        if seq <= self.acked {
            return Ok(());
        }
        let frame = v1::ClientFrame { req_id: 0, body: Some(Req::Ack(v1::AckEvents { seq })) };
        ws.send(conn::encode(&frame)).await?;
        trace!(seq, "acked");
        self.acked = seq;
        self.unacked = 0;
        Ok(())
    }

    /// Close cleanly: acknowledge how far we got (so a later connect without
    /// a cursor resumes there) and do the close handshake.
    async fn shutdown(&mut self, ws: &mut Socket) -> End {
        let seq =
            if self.events.is_closed() { self.delivered.get() } else { self.shared.consumed.load(Ordering::Acquire) };
        let goodbye = async {
            self.ack(ws, seq).await?;
            ws.close(None).await?;
            // Wait for the server's close frame so it sees a clean close.
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<_, tungstenite::Error>(())
        };
        match tokio::time::timeout(CLOSE_GRACE, goodbye).await {
            Ok(Ok(())) => debug!("closed"),
            Ok(Err(e)) => debug!(error = %e, "close was not clean"),
            Err(_) => debug!("server did not finish the close handshake in time"),
        }
        End::Stop
    }

    /// Retry sends on the next connection; fail everything else in flight.
    fn after_drop(&mut self) {
        let mut in_flight: Vec<_> = self.in_flight.drain().collect();
        in_flight.sort_by_key(|(req_id, _)| *req_id);
        let mut retry = VecDeque::new();
        let mut failed = 0usize;
        for (_, f) in in_flight {
            match f.resend {
                Some(body) => {
                    if !f.reply.is_closed() {
                        retry.push_back(Queued { body, reply: f.reply });
                    }
                }
                None => {
                    failed += 1;
                    f.reply.send(Err(ClientError::Disconnected));
                }
            }
        }
        if !retry.is_empty() || failed > 0 {
            debug!(retried_sends = retry.len(), failed_requests = failed, "requests in flight at the drop");
        }
        // Retried sends keep their original order, ahead of anything queued since.
        retry.append(&mut self.outbox);
        self.outbox = retry;
    }

    /// Wait out the backoff and try again until connected; `None` means stop.
    async fn reconnect(&mut self) -> Option<(Socket, v1::Hello)> {
        loop {
            let delay = self.backoff.next_delay();
            let attempt = self.backoff.attempt();
            debug!(attempt, delay_ms = delay.as_millis() as u64, "reconnecting");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    stop = self.offline_step() => if stop { return None },
                }
            }

            let opts = self.opts.clone();
            let cursor = self.delivered.get();
            let open = async move { conn::open(&opts, Some(cursor)).await };
            tokio::pin!(open);
            let result = loop {
                tokio::select! {
                    r = &mut open => break r,
                    stop = self.offline_step() => if stop { return None },
                }
            };
            match result {
                Ok(conn) => return Some(conn),
                Err(ClientError::Kicked(goodbye)) => {
                    self.kicked(goodbye);
                    return None;
                }
                Err(e) if e.is_permanent() => {
                    error!(error = %e, attempt, "reconnect rejected; giving up");
                    self.push(Some(ClientEvent::Disconnected { reason: format!("reconnect rejected: {e}") }));
                    return None;
                }
                Err(e) => {
                    warn!(error = %e, attempt, url = %conn::redacted(&self.opts), "reconnect failed")
                }
            }
        }
    }

    /// Handle one command (or the end of all handles) while disconnected.
    /// True means stop.
    async fn offline_step(&mut self) -> bool {
        tokio::select! {
            cmd = self.cmds.recv(), if self.cmds_open => match cmd {
                None => {
                    self.cmds_open = false;
                    self.events.is_closed()
                }
                Some(Command::Close) => true,
                Some(Command::Request { body, reply }) => {
                    if !reply.is_closed() {
                        self.outbox.push_back(Queued { body, reply });
                    }
                    false
                }
            },
            () = self.events.closed(), if !self.cmds_open => true,
        }
    }

    fn kicked(&mut self, goodbye: v1::Goodbye) {
        let reason = v1::GoodbyeReason::try_from(goodbye.reason).unwrap_or(v1::GoodbyeReason::Unspecified);
        warn!(reason = reason.as_str_name(), message = %goodbye.message, "session ended by the server; not reconnecting");
        self.fail_all(|| ClientError::Kicked(goodbye.clone()));
        self.push(Some(ClientEvent::Kicked(goodbye)));
    }

    fn fail_all(&mut self, err: impl Fn() -> ClientError) {
        for (_, f) in self.in_flight.drain() {
            f.reply.send(Err(err()));
        }
        for q in self.outbox.drain(..) {
            q.reply.send(Err(err()));
        }
    }

    fn push(&self, event: Option<ClientEvent>) {
        // A closed queue means the application dropped `Events`: nothing to do.
        let _ = self.events.send(Item { seq: self.delivered.get(), event });
    }
}

/// The reason for a drop, naming the server's goodbye when one preceded it.
fn closed_reason(goodbye: &Option<v1::Goodbye>, what: &str) -> String {
    match goodbye {
        Some(g) => {
            let reason = v1::GoodbyeReason::try_from(g.reason).unwrap_or(v1::GoodbyeReason::Unspecified);
            format!("server going away ({} {}): {what}", reason.as_str_name(), g.message)
        }
        None => what.to_owned(),
    }
}

/// Run a socket write with a deadline: a server that stops reading must not
/// wedge the driver (which would also stop reading).
async fn write_within<T>(
    limit: Duration,
    write: impl Future<Output = Result<T, tungstenite::Error>>,
) -> Result<T, End> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(End::Dropped(format!("write failed: {e}"))),
        Err(_) => Err(End::Dropped("write stalled".to_owned())),
    }
}
