//! A scriptable stand-in for the gateway: it accepts WebSocket connections on
//! 127.0.0.1 and hands each to the test, which then plays the server's side of
//! the protocol frame by frame.

#![allow(dead_code, clippy::unwrap_used, clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use natter_client::v1;
use natter_client::v1::client_frame::Body as Req;
use natter_client::v1::server_frame::Body as Push;
use natter_proto::ProstMessage;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct MockServer {
    pub url: String,
    conns: mpsc::UnboundedReceiver<MockConn>,
    reject: Arc<Mutex<Option<(u16, String)>>>,
    task: JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let (tx, conns) = mpsc::unbounded_channel();
        let reject = Arc::new(Mutex::new(None));
        let task = tokio::spawn(accept_loop(listener, tx, reject.clone()));
        Self { url, conns, reject, task }
    }

    /// Answer the next upgrade with this HTTP status and body instead.
    pub fn reject_next(&self, status: u16, body: &str) {
        *self.reject.lock().unwrap() = Some((status, body.to_owned()));
    }

    pub async fn accept(&mut self) -> MockConn {
        tokio::time::timeout(WAIT, self.conns.recv()).await.expect("no connection in time").expect("listener gone")
    }

    /// True if no connection arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.conns.recv()).await.is_err()
    }

    pub fn options(&self) -> natter_client::ClientOptions {
        natter_client::ClientOptions {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            heartbeat: None,
            ..natter_client::ClientOptions::new(self.url.clone(), "tok")
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::UnboundedSender<MockConn>,
    reject: Arc<Mutex<Option<(u16, String)>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let rejection = reject.lock().unwrap().take();
        let mut path = String::new();
        let mut query = HashMap::new();
        let callback = |req: &Request, resp: Response| {
            path = req.uri().path().to_owned();
            query = req
                .uri()
                .query()
                .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            match rejection {
                Some((status, body)) => {
                    let mut err = ErrorResponse::new(Some(body));
                    *err.status_mut() = StatusCode::from_u16(status).unwrap();
                    Err(err)
                }
                None => Ok(resp),
            }
        };
        if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
            let _ = tx.send(MockConn { path, query, ws });
        }
    }
}

pub struct MockConn {
    pub path: String,
    pub query: HashMap<String, String>,
    ws: WebSocketStream<TcpStream>,
}

impl MockConn {
    pub fn cursor(&self) -> Option<u64> {
        self.query.get("cursor").map(|c| c.parse().expect("numeric cursor"))
    }

    pub async fn push(&mut self, body: Push) {
        let frame = v1::ServerFrame { body: Some(body) };
        self.ws.send(Message::Binary(frame.encode_to_vec().into())).await.expect("write");
    }

    pub async fn hello(&mut self, user: &str, head: u64, cursor: u64) {
        self.push(Push::Hello(v1::Hello {
            user_id: user.into(),
            session_id: format!("s-{user}"),
            head,
            cursor,
            server_time: 1,
            max_body_bytes: 65536,
            max_frame_bytes: 81920,
        }))
        .await;
    }

    pub async fn text(&mut self, seq: u64, from: &str, id: u64, client_msg_id: &str) {
        self.push(Push::Event(v1::Event {
            seq,
            kind: Some(v1::event::Kind::OnTextMessage(message(from, id, client_msg_id))),
        }))
        .await;
    }

    pub async fn caught_up(&mut self, seq: u64) {
        self.push(Push::CaughtUp(v1::CaughtUp { seq })).await;
    }

    pub async fn goodbye(&mut self, reason: v1::GoodbyeReason) {
        self.push(Push::Goodbye(v1::Goodbye { reason: reason as i32, message: "bye".into() })).await;
    }

    pub async fn respond(&mut self, req_id: u64, result: v1::response::Result) {
        self.push(Push::Response(v1::Response { req_id, result: Some(result) })).await;
    }

    /// The next client frame of any kind.
    pub async fn recv(&mut self) -> v1::ClientFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame from the client in time")
                .expect("client closed")
                .expect("read");
            match msg {
                Message::Binary(b) => return v1::ClientFrame::decode(b).expect("client frame"),
                Message::Close(_) => panic!("client closed"),
                _ => continue,
            }
        }
    }

    /// The next request, skipping acks.
    pub async fn request(&mut self) -> (u64, Req) {
        loop {
            let frame = self.recv().await;
            match frame.body {
                Some(Req::Ack(_)) => continue,
                Some(body) => return (frame.req_id, body),
                None => panic!("empty client frame"),
            }
        }
    }

    /// Wait for an ack of at least `seq`; other frames are an error.
    pub async fn ack(&mut self, seq: u64) -> u64 {
        loop {
            match self.recv().await.body {
                Some(Req::Ack(a)) if a.seq >= seq => return a.seq,
                Some(Req::Ack(_)) => continue,
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }

    /// Every ack the client sends within `d` (the connection must stay quiet
    /// otherwise).
    pub async fn acks_within(&mut self, d: Duration) -> Vec<u64> {
        let mut acks = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Binary(b) = msg {
                match v1::ClientFrame::decode(b).expect("client frame").body {
                    Some(Req::Ack(a)) => acks.push(a.seq),
                    other => panic!("expected only acks, got {other:?}"),
                }
            }
        }
        acks
    }

    /// Wait until the client closes its side; returns whether it sent a close
    /// frame (a clean close) before the stream ended.
    pub async fn closed_by_client(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("client did not close in time") {
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return false,
            }
        }
    }

    /// The next client frame, or `None` once the client sent its close frame
    /// (or the connection ended).
    pub async fn recv_any(&mut self) -> Option<v1::ClientFrame> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    return Some(v1::ClientFrame::decode(b).expect("client frame"));
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Drop the TCP connection without a close handshake.
    pub fn drop_abruptly(self) {
        drop(self);
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub fn message(from: &str, id: u64, client_msg_id: &str) -> v1::Message {
    v1::Message {
        id,
        client_msg_id: client_msg_id.into(),
        from: from.into(),
        to: "alice".into(),
        chat_type: v1::ChatType::Single as i32,
        timestamp: 1,
        body: Some(v1::message::Body::Text(v1::TextBody { text: format!("m{id}") })),
        ..Default::default()
    }
}

pub fn sent(client_msg_id: &str, server_msg_id: u64, duplicate: bool) -> v1::response::Result {
    v1::response::Result::Sent(v1::SendResult {
        client_msg_id: client_msg_id.into(),
        server_msg_id,
        timestamp: 1,
        duplicate,
    })
}
