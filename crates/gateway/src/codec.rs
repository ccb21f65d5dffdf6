//! Frame codec: binary frames are protobuf, text frames canonical proto3 JSON
//! of the same messages. What the server sends follows the connection's
//! `format`; what it accepts is either.

use axum::extract::ws::Message;
use natter_proto::v1::{ClientFrame, ServerFrame};
use natter_types::{Error, ErrorCode};
use prost::Message as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Proto,
}

impl Format {
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        match raw.unwrap_or("json").to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "proto" | "protobuf" => Ok(Self::Proto),
            other => Err(Error::bad_request("format", format!("{other:?} is not one of json, proto, protobuf"))),
        }
    }
}

pub fn encode(frame: &ServerFrame, format: Format) -> Message {
    match format {
        Format::Proto => Message::Binary(frame.encode_to_vec().into()),
        Format::Json => match serde_json::to_string(frame) {
            Ok(text) => Message::Text(text.into()),
            // Generated serializers only fail on non-string map keys, which
            // our schema has none of; fall back to protobuf rather than lose it.
            Err(_) => Message::Binary(frame.encode_to_vec().into()),
        },
    }
}

/// A client frame, or why it could not be read (with its `req_id` when that
/// much could be recovered, so the client can match the error).
#[derive(Debug)]
pub enum Decoded {
    Frame(ClientFrame),
    Invalid { req_id: u64, error: Error },
}

/// `None` for control frames (ping, pong, close), which the caller handles.
pub fn decode(message: &Message, max_frame_bytes: usize) -> Option<Decoded> {
    let len = match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => return None,
    };
    if len > max_frame_bytes {
        let error =
            Error::field(ErrorCode::LimitExceeded, "frame", format!("is {len} bytes, the limit is {max_frame_bytes}"));
        return Some(Decoded::Invalid { req_id: 0, error });
    }
    Some(match message {
        Message::Binary(bytes) => match ClientFrame::decode(bytes.as_ref()) {
            Ok(frame) => Decoded::Frame(frame),
            Err(e) => Decoded::Invalid {
                req_id: 0,
                error: Error::bad_request("frame", format!("not a protobuf ClientFrame: {e}")),
            },
        },
        Message::Text(text) => match serde_json::from_str::<ClientFrame>(text.as_str()) {
            Ok(frame) => Decoded::Frame(frame),
            Err(e) => Decoded::Invalid {
                req_id: recover_req_id(text.as_str()),
                error: Error::bad_request("frame", format!("not a JSON ClientFrame: {e}")),
            },
        },
        _ => return None,
    })
}

/// Best effort: the `reqId` of a JSON frame that failed to decode as a whole.
fn recover_req_id(text: &str) -> u64 {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return 0;
    };
    match value.get("reqId").or_else(|| value.get("req_id")) {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bad_json_keeps_the_req_id_and_names_the_problem() {
        let msg = Message::Text(r#"{"reqId":"42","send":{"chatType":"SOMETIMES"}}"#.into());
        match decode(&msg, 1024) {
            Some(Decoded::Invalid { req_id, error }) => {
                assert_eq!(req_id, 42);
                assert_eq!(error.code, ErrorCode::BadRequest);
                assert_eq!(error.field.as_deref(), Some("frame"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_frames_are_limit_exceeded() {
        let msg = Message::Binary(vec![0u8; 11].into());
        match decode(&msg, 10) {
            Some(Decoded::Invalid { error, .. }) => {
                assert_eq!(error.code, ErrorCode::LimitExceeded);
                assert!(error.message.contains("11 bytes, the limit is 10"));
            }
            other => panic!("{other:?}"),
        }
    }
}
