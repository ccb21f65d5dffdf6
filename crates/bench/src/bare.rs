//! The bare baseline: a minimal tokio + tungstenite broadcast server with no
//! persistence, no auth, no per-user log. It speaks just enough of the
//! Natter protocol (binary frames) for the same load clients: `hello` and
//! `caught_up` on connect, `send` answered with `sent`, and the message
//! broadcast to everyone in the sender's room as the same `Event` frame
//! Natter sends. A connection joins the room named by `?room=`.
//!
//! It is the ceiling for fan-out through a socket on this machine: what is
//! left when the server does nothing but encode once and write to sockets.
//! By default each connection writes one frame per write (`send`), as
//! Natter's sessions do; `--batch-writes` writes every frame already queued
//! for a socket in one flush, the socket-level ceiling.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use natter_proto::v1;
use natter_proto::v1::server_frame::Body as Out;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::wire;

#[derive(Debug, Clone, Copy)]
pub struct BareOptions {
    pub batch_writes: bool,
}

/// Frames queued per room before a slow member loses some (the benchmark's
/// per-group window keeps far fewer in flight).
const ROOM_CAPACITY: usize = 4096;

struct Room {
    tx: broadcast::Sender<Bytes>,
    seq: AtomicU64,
}

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    lost: AtomicU64,
}

impl Rooms {
    fn get(&self, name: &str) -> Arc<Room> {
        self.rooms
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Room { tx: broadcast::channel(ROOM_CAPACITY).0, seq: AtomicU64::new(0) }))
            .clone()
    }
}

/// Serves until `cancel` fires, then closes every connection.
pub async fn serve(listener: TcpListener, options: BareOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    let rooms = Arc::new(Rooms::default());
    let tasks = TaskTracker::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(connection(stream, rooms.clone(), options, cancel.clone()));
                }
                // Out of fds or similar: keep serving the ones we have.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
    tasks.close();
    tasks.wait().await;
    let lost = rooms.lost.load(Ordering::Relaxed);
    if lost > 0 {
        tracing::warn!(lost, "frames lost by lagging members");
    }
    Ok(())
}

fn config() -> WebSocketConfig {
    // The same buffers as Natter's gateway defaults (gateway.read_buffer_bytes
    // and write_buffer_bytes, 4 KiB each).
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn connection(stream: TcpStream, rooms: Arc<Rooms>, options: BareOptions, cancel: CancellationToken) {
    let mut query = String::new();
    // tungstenite fixes the callback's error type (an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        query = request.uri().query().unwrap_or_default().to_owned();
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config())).await else {
        return;
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_default()
            .to_owned()
    };
    let user = param("user");
    let room = param("room");
    // Joined before `caught_up`, as Natter subscribes before it replays: a
    // client that saw `caught_up` gets every later message.
    let mut live = (!room.is_empty()).then(|| rooms.get(&room).tx.subscribe());
    let hello =
        Out::Hello(v1::Hello { user_id: user.clone(), session_id: format!("bare-{user}"), ..Default::default() });
    for frame in [hello, Out::CaughtUp(v1::CaughtUp { seq: 0 })] {
        if ws.send(Message::Binary(wire::server_frame(frame).into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    let Some(reply) = answer(&bytes, &user, &rooms) else { continue };
                    if ws.send(Message::Binary(reply.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            event = recv(&mut live) => match event {
                Ok(frame) => {
                    let written = if options.batch_writes {
                        write_batch(&mut ws, frame, live.as_mut()).await
                    } else {
                        ws.send(Message::Binary(frame)).await
                    };
                    if written.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    rooms.lost.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => live = None,
            },
        }
    }
    let _ = ws.close(None).await;
}

async fn recv(live: &mut Option<broadcast::Receiver<Bytes>>) -> Result<Bytes, broadcast::error::RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Queues this frame and every one already waiting, then flushes once.
async fn write_batch(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    first: Bytes,
    live: Option<&mut broadcast::Receiver<Bytes>>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(Message::Binary(first)).await?;
    if let Some(rx) = live {
        while let Ok(more) = rx.try_recv() {
            ws.feed(Message::Binary(more)).await?;
        }
    }
    ws.flush().await
}

/// The reply to a client frame; broadcasts a `send` to its room.
fn answer(bytes: &[u8], user: &str, rooms: &Rooms) -> Option<Vec<u8>> {
    let frame = v1::ClientFrame::decode(bytes).ok()?;
    let result = match frame.body? {
        v1::client_frame::Body::Send(send) => {
            let room = rooms.get(&send.to);
            let seq = room.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let now = natter_now_ms();
            let text = match send.body {
                Some(v1::send_message::Body::Text(t)) => t,
                _ => v1::TextBody::default(),
            };
            let message = v1::Message {
                id: seq,
                client_msg_id: send.client_msg_id.clone(),
                from: user.to_owned(),
                to: send.to,
                chat_type: send.chat_type,
                timestamp: now,
                body: Some(v1::message::Body::Text(text)),
                ext: send.ext,
                from_system: false,
                allow_group_ack: false,
                position: 0,
            };
            // Encoded once for the whole room.
            let _ = room.tx.send(Bytes::from(wire::event_frame(seq, message)));
            v1::response::Result::Sent(v1::SendResult {
                client_msg_id: send.client_msg_id,
                server_msg_id: seq,
                timestamp: now,
                duplicate: false,
            })
        }
        v1::client_frame::Body::Ping(ping) => {
            v1::response::Result::Pong(v1::Pong { client_time: ping.client_time, server_time: natter_now_ms() })
        }
        v1::client_frame::Body::Ack(_) => return None,
        _ => v1::response::Result::Error(v1::Error {
            code: v1::ErrorCode::BadRequest as i32,
            message: "the bare baseline only knows send and ping".into(),
            field: "frame".into(),
        }),
    };
    Some(wire::server_frame(Out::Response(v1::Response { req_id: frame.req_id, result: Some(result) })))
}

fn natter_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
