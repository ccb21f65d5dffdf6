//! One WebSocket connection: building the URL, the upgrade, waiting for
//! `hello`, and the frame codec (binary protobuf out, protobuf or proto3 JSON in).

use futures::StreamExt;
use natter_proto::ProstMessage;
use natter_proto::v1;
use natter_proto::v1::server_frame::Body;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::{ClientError, ClientOptions};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

// tungstenite allocates 128 KiB per connection by default; a benchmark holding
// thousands of clients in one process cannot afford that, and frames are small.
const READ_BUFFER: usize = 8 * 1024;
const WRITE_BUFFER: usize = 8 * 1024;

/// The `/ws` URL with `token`, `format=proto`, `platform` and `cursor`.
pub(crate) fn ws_url(opts: &ClientOptions, cursor: Option<u64>) -> Result<Url, ClientError> {
    let mut url = Url::parse(&opts.url).map_err(|e| ClientError::InvalidOptions(format!("url {:?}: {e}", opts.url)))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(ClientError::InvalidOptions(format!("url scheme {other:?} is not ws, wss, http or https")));
        }
    };
    if url.scheme() != scheme {
        url.set_scheme(scheme)
            .map_err(|()| ClientError::InvalidOptions(format!("url {:?}: cannot use scheme {scheme}", opts.url)))?;
    }
    if !url.path().ends_with("/ws") {
        let path = format!("{}/ws", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("token", &opts.token).append_pair("format", "proto").append_pair("platform", &opts.platform);
        if let Some(device) = &opts.device {
            query.append_pair("device", device);
        }
        if let Some(cursor) = cursor {
            query.append_pair("cursor", &cursor.to_string());
        }
    }
    Ok(url)
}

/// The URL without its query, for logs: the query holds the token.
pub(crate) fn redacted(opts: &ClientOptions) -> String {
    match Url::parse(&opts.url) {
        Ok(mut u) => {
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// Connect, upgrade and wait for the server's `hello`, all within
/// `connect_timeout`.
pub(crate) async fn open(opts: &ClientOptions, cursor: Option<u64>) -> Result<(Socket, v1::Hello), ClientError> {
    let url = ws_url(opts, cursor)?;
    match tokio::time::timeout(opts.connect_timeout, handshake(url)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout),
    }
}

async fn handshake(url: Url) -> Result<(Socket, v1::Hello), ClientError> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER).write_buffer_size(WRITE_BUFFER);
    // Nagle would hold small request frames back for an ack round trip.
    let (mut ws, _response) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await?;
    loop {
        let msg = match ws.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(ClientError::Protocol("connection closed before hello".to_owned()));
            }
        };
        match decode(msg) {
            Incoming::Frame(v1::ServerFrame { body: Some(Body::Hello(hello)) }) => return Ok((ws, hello)),
            Incoming::Frame(v1::ServerFrame { body: Some(Body::Goodbye(goodbye)) }) => {
                return Err(ClientError::Kicked(goodbye));
            }
            Incoming::Frame(other) => {
                return Err(ClientError::Protocol(format!("expected hello first, got {}", frame_name(&other))));
            }
            Incoming::Control => continue,
            Incoming::Closed(reason) => {
                return Err(ClientError::Protocol(format!("connection closed before hello ({reason})")));
            }
            Incoming::Invalid(why) => return Err(ClientError::Protocol(why)),
        }
    }
}

/// A WebSocket message, classified.
// Built per message and matched right away: boxing the frame would only add
// an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Incoming {
    Frame(v1::ServerFrame),
    /// Ping/pong: tungstenite answers pings itself.
    Control,
    /// The peer's close frame, as "code reason".
    Closed(String),
    Invalid(String),
}

pub(crate) fn decode(msg: Message) -> Incoming {
    match msg {
        Message::Binary(bytes) => match v1::ServerFrame::decode(bytes) {
            Ok(frame) => Incoming::Frame(frame),
            Err(e) => Incoming::Invalid(format!("undecodable binary frame: {e}")),
        },
        // We ask for protobuf, but the JSON form is the same message.
        Message::Text(text) => match serde_json::from_str::<v1::ServerFrame>(text.as_str()) {
            Ok(frame) => Incoming::Frame(frame),
            Err(e) => Incoming::Invalid(format!("undecodable text frame: {e}")),
        },
        Message::Close(Some(frame)) => Incoming::Closed(format!("{} {}", u16::from(frame.code), frame.reason)),
        Message::Close(None) => Incoming::Closed("without a close frame".to_owned()),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
    }
}

pub(crate) fn encode(frame: &v1::ClientFrame) -> Message {
    Message::Binary(frame.encode_to_vec().into())
}

/// The frame's kind, for logs and errors.
pub(crate) fn frame_name(frame: &v1::ServerFrame) -> &'static str {
    match &frame.body {
        Some(Body::Hello(_)) => "hello",
        Some(Body::Pong(_)) => "pong",
        Some(Body::Response(_)) => "response",
        Some(Body::Event(_)) => "event",
        Some(Body::Goodbye(_)) => "goodbye",
        Some(Body::ResyncRequired(_)) => "resync_required",
        Some(Body::CaughtUp(_)) => "caught_up",
        Some(Body::OnPresenceStatusChange(_)) => "on_presence_status_change",
        None => "empty frame",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &Url) -> Vec<(String, String)> {
        url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    #[test]
    fn url_gets_ws_path_and_query() {
        let opts =
            ClientOptions { device: Some("dev-1".into()), ..ClientOptions::new("ws://127.0.0.1:1234", "a.b+c/d=") };
        let url = ws_url(&opts, Some(42)).expect("url");
        assert_eq!(url.path(), "/ws");
        assert_eq!(
            query(&url),
            vec![
                ("token".into(), "a.b+c/d=".into()),
                ("format".into(), "proto".into()),
                ("platform".into(), "Websocket".into()),
                ("device".into(), "dev-1".into()),
                ("cursor".into(), "42".into()),
            ]
        );
        let url = ws_url(&opts, None).expect("url");
        assert!(!query(&url).iter().any(|(k, _)| k == "cursor"));
    }

    #[test]
    fn url_maps_http_schemes_and_keeps_prefix_paths() {
        let url = ws_url(&ClientOptions::new("http://h:1/natter/", "t"), None).expect("url");
        assert_eq!(url.scheme(), "ws");
        assert_eq!(url.path(), "/natter/ws");
        let url = ws_url(&ClientOptions::new("https://h/ws", "t"), None).expect("url");
        assert_eq!(url.scheme(), "wss");
        assert_eq!(url.path(), "/ws", "an explicit /ws is not doubled");
        assert!(matches!(ws_url(&ClientOptions::new("ftp://h", "t"), None), Err(ClientError::InvalidOptions(_))));
        assert!(matches!(ws_url(&ClientOptions::new("not a url", "t"), None), Err(ClientError::InvalidOptions(_))));
    }

    #[test]
    fn redacted_url_has_no_token() {
        let mut opts = ClientOptions::new("ws://h:1/?token=leak", "secret");
        assert!(!redacted(&opts).contains("leak"));
        opts.url = "::".into();
        assert_eq!(redacted(&opts), "<invalid url>");
    }

    #[test]
    fn decode_accepts_protobuf_and_json_and_rejects_garbage() {
        let frame = v1::ServerFrame { body: Some(Body::CaughtUp(v1::CaughtUp { seq: 7 })) };
        let bin = Message::Binary(frame.encode_to_vec().into());
        assert!(matches!(decode(bin), Incoming::Frame(f) if f == frame));
        let text = Message::text(serde_json::to_string(&frame).expect("json"));
        assert!(matches!(decode(text), Incoming::Frame(f) if f == frame));
        assert!(matches!(decode(Message::Binary(vec![0xff, 0xff, 0xff].into())), Incoming::Invalid(_)));
        assert!(matches!(decode(Message::text("{nope")), Incoming::Invalid(_)));
        assert!(matches!(decode(Message::Ping(Default::default())), Incoming::Control));
    }

    #[test]
    fn encode_round_trips() {
        let frame = v1::ClientFrame { req_id: 9, body: Some(v1::client_frame::Body::Ack(v1::AckEvents { seq: 3 })) };
        let Message::Binary(bytes) = encode(&frame) else { panic!("not binary") };
        assert_eq!(v1::ClientFrame::decode(bytes).expect("decode"), frame);
    }
}
