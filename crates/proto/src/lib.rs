//! Protobuf types of the client protocol, the backend gRPC API and the bus
//! events, with canonical proto3 JSON (pbjson) for WebSocket text frames.
//!
//! Only the edges (gateway codec, gRPC handlers, storage encoding) touch these
//! types; services work on the domain types of `natter-types`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/natter.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/natter.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every Natter proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/natter_descriptor.bin"));

pub use prost::Message as ProstMessage;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::v1::*;

    #[test]
    fn client_frame_json_uses_canonical_proto3_names() {
        let frame = ClientFrame {
            req_id: 7,
            body: Some(client_frame::Body::Send(SendMessage {
                client_msg_id: "c1".into(),
                to: "bob".into(),
                chat_type: ChatType::Single as i32,
                body: Some(send_message::Body::Text(TextBody { text: "hi".into() })),
                ext: Default::default(),
                msg_config: Some(MsgConfig { allow_group_ack: true }),
            })),
        };
        let json = serde_json::to_value(&frame).expect("serialize");
        assert_eq!(json["reqId"], "7", "uint64 is a JSON string in proto3 JSON");
        assert_eq!(json["send"]["chatType"], "SINGLE");
        assert_eq!(json["send"]["text"]["text"], "hi");
        assert_eq!(json["send"]["msgConfig"]["allowGroupAck"], true, "the seed's msgConfig.allowGroupAck");
        let back: ClientFrame = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, frame);
    }

    #[test]
    fn json_accepts_numbers_for_uint64_and_rejects_unknown_enum() {
        let frame: ClientFrame = serde_json::from_str(r#"{"reqId":3,"ping":{}}"#).expect("numeric req id");
        assert_eq!(frame.req_id, 3);
        let bad = serde_json::from_str::<ClientFrame>(r#"{"reqId":1,"send":{"to":"bob","chatType":"NOPE"}}"#);
        assert!(bad.is_err());
    }
}

pub mod api;
mod convert;
pub use convert::{
    DecodeError, actor, chat_type, error_from_status, event_body, event_frame, event_frame_bytes, group_role,
    live_bus_message_bytes, live_event_body, new_message, receipt_kind, replay_frame, send_body, session_status,
    status_from_error,
};
