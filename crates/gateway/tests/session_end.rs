//! How the server ends a session (PROTOCOL.md 2.7 and 2.8): a client that
//! stays silent past the idle timeout, and a token whose `exp` passes while
//! it is connected. Real WebSockets; paused tokio time instead of waiting.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Harness;
use futures::StreamExt;
use natter_gateway::GatewayOptions;
use natter_proto::v1::{self, server_frame::Body};
use natter_types::UserId;
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::FrameSocket;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn options(ping_interval: Duration, idle_timeout: Duration) -> GatewayOptions {
    GatewayOptions { ping_interval, idle_timeout, ..GatewayOptions::default() }
}

fn body(message: &Message) -> Option<Body> {
    match message {
        Message::Binary(bytes) => v1::ServerFrame::decode(bytes.clone()).unwrap().body,
        _ => None,
    }
}

/// A raw client (no SDK: it would answer pings and reconnect), live once
/// `caught_up` has arrived.
async fn connect(harness: &Harness, user: &str, token_ttl_secs: u64) -> Ws {
    let user = UserId::parse(user, "user").unwrap();
    let token = harness.tokens.mint(&user, token_ttl_secs).unwrap().0;
    let url = format!("{}/ws?token={token}&format=proto&platform=PC", harness.url);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    while !matches!(body(&ws.next().await.unwrap().unwrap()), Some(Body::CaughtUp(_))) {}
    ws
}

/// What the server wrote until it closed: the pings, the goodbye, and the
/// close frame's code and reason.
struct Ending {
    pings: usize,
    goodbye: v1::Goodbye,
    close_code: u16,
    close_reason: String,
}

/// Everything the server wrote until it closed the connection, read as raw
/// frames: a WebSocket client would answer the pings (signs of life), and
/// its pongs to a closed connection would cost the frames after them.
async fn raw_frames_to_close(ws: Ws) -> Ending {
    let MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else { panic!("plain ws://") };
    let mut bytes = Vec::new();
    tcp.read_to_end(&mut bytes).await.unwrap();
    let mut frames = FrameSocket::new(std::io::Cursor::new(bytes));
    let (mut pings, mut goodbye) = (0, None);
    while let Some(frame) = frames.read(None).unwrap() {
        match frame.header().opcode {
            OpCode::Control(Control::Ping) => pings += 1,
            OpCode::Data(Data::Binary) => match body(&Message::Binary(frame.into_payload())) {
                Some(Body::Goodbye(g)) => goodbye = Some(g),
                other => panic!("unexpected {other:?}"),
            },
            OpCode::Control(Control::Close) => {
                let payload = frame.payload();
                return Ending {
                    pings,
                    goodbye: goodbye.expect("a goodbye before the close"),
                    close_code: u16::from_be_bytes([payload[0], payload[1]]),
                    close_reason: String::from_utf8(payload[2..].to_vec()).unwrap(),
                };
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    panic!("the connection ended without a close frame");
}

#[tokio::test(start_paused = true)]
async fn a_client_silent_past_the_idle_timeout_is_closed_at_a_heartbeat() {
    let (ping, idle) = (Duration::from_secs(10), Duration::from_secs(30));
    let harness = Harness::start_with(options(ping, idle)).await;
    let ws = connect(&harness, "quiet", 3600).await;
    let started = tokio::time::Instant::now();
    let ending = raw_frames_to_close(ws).await;
    let lasted = started.elapsed();
    assert_eq!(ending.goodbye.reason, v1::GoodbyeReason::ProtocolError as i32);
    assert_eq!(ending.goodbye.message, "no frame or pong within the idle timeout");
    assert_eq!((ending.close_code, ending.close_reason.as_str()), (1001, "no frame or pong within the idle timeout"));
    // The check runs on the heartbeat's ticks, the first within one interval
    // of connecting: the close comes at the first tick past the timeout, and
    // each tick before it pinged.
    assert!(lasted >= idle && lasted < idle + ping, "closed after {lasted:?}");
    assert_eq!(ending.pings, 3, "pings at p, p + 10 and p + 20 s (0 <= p < 10), the close at p + 30 s");
}

/// Sessions that connect together (a gateway restart) must not ping
/// together for as long as they live: each one's heartbeat has its own
/// phase within the interval.
#[tokio::test(start_paused = true)]
async fn sessions_that_connect_together_ping_at_different_times() {
    let ping = Duration::from_secs(10);
    let harness = Harness::start_with(options(ping, Duration::from_secs(60))).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(connect(&harness, &format!("herd{i}"), 3600).await);
    }
    let started = tokio::time::Instant::now();
    let first_pings = futures::future::join_all(clients.into_iter().map(|mut ws| async move {
        match ws.next().await.unwrap().unwrap() {
            Message::Ping(_) => started.elapsed(),
            other => panic!("unexpected {other:?}"),
        }
    }))
    .await;
    assert!(first_pings.iter().all(|&at| at <= ping), "{first_pings:?}");
    let mut tenths = [0usize; 10];
    for at in &first_pings {
        tenths[((at.as_secs_f64() / ping.as_secs_f64() * 10.0) as usize).min(9)] += 1;
    }
    // Evenly spread would be 2 per tenth; all at once would be 20 in one.
    assert!(tenths.iter().all(|&n| n <= 5) && tenths.iter().filter(|&&n| n > 0).count() >= 6, "{tenths:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_is_not_idle() {
    let (ping, idle) = (Duration::from_secs(10), Duration::from_secs(30));
    let harness = Harness::start_with(options(ping, idle)).await;
    let mut ws = connect(&harness, "chatty", 3600).await;
    // Reading answers each ping with a pong.
    let pings = tokio::time::timeout(idle * 3, async {
        let mut pings = 0;
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        pings
    })
    .await;
    assert!(pings.is_err(), "the session lasted three idle timeouts; it ended after {pings:?} pings");
}

#[tokio::test(start_paused = true)]
async fn a_session_ends_when_its_token_expires() {
    let harness = Harness::start_with(options(Duration::from_secs(25), Duration::from_secs(600))).await;
    let ws = connect(&harness, "expiring", 60).await;
    let started = tokio::time::Instant::now();
    let ending = raw_frames_to_close(ws).await;
    assert_eq!(ending.goodbye.reason, v1::GoodbyeReason::TokenExpired as i32);
    assert_eq!((ending.close_code, ending.close_reason.as_str()), (4003, "token expired"));
    // At `exp`, 60 s after minting (whole seconds: within one of it).
    let lasted = started.elapsed();
    assert!(lasted > Duration::from_secs(58) && lasted <= Duration::from_secs(60), "{lasted:?}");
}
