//! Frames on the wire: the protobuf client frames the load clients send, a
//! zero-allocation reader for the one server frame that is hot (`event`), and
//! the payload format that carries the send timestamp to the recipient.
//!
//! Why a hand-written reader: in the fan-out scenarios the generator reads
//! hundreds of thousands of events per second on the same two cores as the
//! server. A full prost decode allocates a `String` per field (id, from, to,
//! client id, text); walking the tags to the text field costs none. Every
//! other server frame is rare and goes through the generated decoder.

use bytes::Buf;
use natter_proto::v1;
use prost::Message as _;
use prost::encoding::{WireType, decode_key, decode_varint};

/// Prefix of every benchmark message text, so other events are ignored.
pub const MARKER: &str = "nb";

/// What the generator needs from a delivered benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Which measurement phase sent it (stale deliveries are not counted).
    pub phase: u32,
    /// Index of the sending connection.
    pub sender: u32,
    /// Message index within the phase (the fan-out tracker's slot).
    pub msg: u64,
    /// Intended send time in ns since the process epoch (`stats::now_ns`).
    pub sent_ns: u64,
}

/// The message text: `nb|phase|sender|msg|sent_ns|` padded with `x` to `size`
/// bytes, so that every run sends frames of the same size to both servers.
pub fn payload_text(p: &Payload, size: usize) -> String {
    let mut text = format!("{MARKER}|{}|{}|{}|{}|", p.phase, p.sender, p.msg, p.sent_ns);
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

pub fn parse_payload(text: &[u8]) -> Option<Payload> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.split('|');
    if parts.next()? != MARKER {
        return None;
    }
    Some(Payload {
        phase: parts.next()?.parse().ok()?,
        sender: parts.next()?.parse().ok()?,
        msg: parts.next()?.parse().ok()?,
        sent_ns: parts.next()?.parse().ok()?,
    })
}

/// A `send` request as a binary (protobuf) client frame.
pub fn send_frame(req_id: u64, client_msg_id: String, to: String, group: bool, text: String) -> Vec<u8> {
    let chat_type = if group { v1::ChatType::Group } else { v1::ChatType::Single };
    v1::ClientFrame {
        req_id,
        body: Some(v1::client_frame::Body::Send(v1::SendMessage {
            client_msg_id,
            to,
            chat_type: chat_type as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text })),
            ext: Default::default(),
            msg_config: None,
        })),
    }
    .encode_to_vec()
}

/// A group `send` that asks the members for read receipts
/// (`msg_config.allow_group_ack`, R5).
pub fn send_frame_asking_reads(req_id: u64, client_msg_id: String, group: String, text: String) -> Vec<u8> {
    v1::ClientFrame {
        req_id,
        body: Some(v1::client_frame::Body::Send(v1::SendMessage {
            client_msg_id,
            to: group,
            chat_type: v1::ChatType::Group as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text })),
            ext: Default::default(),
            msg_config: Some(v1::MsgConfig { allow_group_ack: true }),
        })),
    }
    .encode_to_vec()
}

/// A read receipt for message `id` of `group` (R5).
pub fn read_receipt_frame(req_id: u64, group: String, id: u64) -> Vec<u8> {
    let receipt =
        v1::SendReceipt { r#type: v1::ReceiptType::Read as i32, to: group, chat_type: v1::ChatType::Group as i32, id };
    request_frame(req_id, v1::client_frame::Body::Receipt(receipt))
}

pub fn request_frame(req_id: u64, body: v1::client_frame::Body) -> Vec<u8> {
    v1::ClientFrame { req_id, body: Some(body) }.encode_to_vec()
}

/// A group message's read count as its sender is told it: `onReadMessage`
/// live, `onStatisticMessage` on resume (R6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCount {
    /// The message's server id.
    pub mid: u64,
    /// Members who have read it.
    pub count: u64,
}

/// A server frame as the load clients see it.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// An event; `text` is the body of a text message, if it is one, and
    /// `id` that message's server id (0 for any other event); `read` is a
    /// read-count receipt, if it is one.
    Event { seq: u64, id: u64, text: Option<&'a [u8]>, read: Option<ReadCount> },
    /// Anything else, fully decoded.
    Other(Box<v1::ServerFrame>),
}

/// Reads a binary server frame; `None` if it is not valid protobuf (counted
/// as a protocol error by the caller, never a panic).
pub fn read_server_frame(bytes: &[u8]) -> Option<Incoming<'_>> {
    let mut buf = bytes;
    if !buf.has_remaining() {
        return Some(Incoming::Other(Box::default()));
    }
    let (tag, wire) = decode_key(&mut buf).ok()?;
    // ServerFrame.event = 4 and it is the only field of a oneof frame.
    if tag == 4 && wire == WireType::LengthDelimited {
        let event = length_delimited(&mut buf)?;
        return read_event(event);
    }
    v1::ServerFrame::decode(bytes).ok().map(|f| Incoming::Other(Box::new(f)))
}

fn read_event(mut buf: &[u8]) -> Option<Incoming<'_>> {
    let mut seq = 0;
    let mut id = 0;
    let mut text = None;
    let mut read = None;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (1, WireType::Varint) => seq = decode_varint(&mut buf).ok()?,
            // on_text_message = 10, on_custom_message = 11: a Message.
            (10, WireType::LengthDelimited) => (id, text) = message_fields(length_delimited(&mut buf)?)?,
            // on_read_message = 16, on_statistic_message = 17: a Receipt.
            (16 | 17, WireType::LengthDelimited) => read = Some(read_count(length_delimited(&mut buf)?)?),
            _ => skip(&mut buf, wire)?,
        }
    }
    Some(Incoming::Event { seq, id, text, read })
}

/// A `Receipt`'s message (`mid` = 2) and read count (`group_read_count` = 7).
fn read_count(mut buf: &[u8]) -> Option<ReadCount> {
    let mut read = ReadCount { mid: 0, count: 0 };
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (2, WireType::Varint) => read.mid = decode_varint(&mut buf).ok()?,
            (7, WireType::Varint) => read.count = decode_varint(&mut buf).ok()?,
            _ => skip(&mut buf, wire)?,
        }
    }
    Some(read)
}

/// The text of a `Message` (field 7, `TextBody.text` = 1), if it has one.
fn message_text(buf: &[u8]) -> Option<Option<&[u8]>> {
    message_fields(buf).map(|(_, text)| text)
}

/// The server id (field 1) and the text of a `Message`.
fn message_fields(mut buf: &[u8]) -> Option<(u64, Option<&[u8]>)> {
    let mut id = 0;
    let mut text = None;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if tag == 1 && wire == WireType::Varint {
            id = decode_varint(&mut buf).ok()?;
        } else if tag == 7 && wire == WireType::LengthDelimited {
            let mut body = length_delimited(&mut buf)?;
            while body.has_remaining() {
                let (tag, wire) = decode_key(&mut body).ok()?;
                if tag == 1 && wire == WireType::LengthDelimited {
                    text = Some(length_delimited(&mut body)?);
                } else {
                    skip(&mut body, wire)?;
                }
            }
        } else {
            skip(&mut buf, wire)?;
        }
    }
    Some((id, text))
}

fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Some(head)
}

fn skip(buf: &mut &[u8], wire: WireType) -> Option<()> {
    let len = match wire {
        WireType::Varint => {
            decode_varint(buf).ok()?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => usize::try_from(decode_varint(buf).ok()?).ok()?,
        // Groups are not used by any Natter proto.
        WireType::StartGroup | WireType::EndGroup => return None,
    };
    if len > buf.len() {
        return None;
    }
    buf.advance(len);
    Some(())
}

/// What Natter's message role publishes on NATS for one recipient: a
/// `BusMessage` carrying the live event (`seq`, `prev`, the message), so the
/// NATS baseline moves payloads of the same size as the distributed mode.
pub fn bus_live_message(seq: u64, prev: u64, message: v1::Message) -> Vec<u8> {
    v1::BusMessage {
        body: Some(v1::bus_message::Body::Live(v1::LiveEventWire {
            seq,
            prev,
            event: Some(v1::LogEvent { kind: Some(v1::log_event::Kind::Message(message)) }),
        })),
    }
    .encode_to_vec()
}

/// The message text of a `BusMessage` live event, if it carries a text
/// message; `None` if the bytes are not valid protobuf. Allocation-free, for
/// the same reason as [`read_server_frame`]: the NATS baseline's subscribers
/// read up to a million of them per second on the machine under test.
pub fn read_bus_text(bytes: &[u8]) -> Option<Option<&[u8]>> {
    // BusMessage.live = 1 → LiveEventWire.event = 3 → LogEvent.message = 1.
    let Some(live) = field(bytes, 1)? else { return Some(None) };
    let Some(event) = field(live, 3)? else { return Some(None) };
    let Some(message) = field(event, 1)? else { return Some(None) };
    message_text(message)
}

/// The first length-delimited field `tag` of a protobuf message.
fn field(mut buf: &[u8], tag: u32) -> Option<Option<&[u8]>> {
    while buf.has_remaining() {
        let (t, wire) = decode_key(&mut buf).ok()?;
        if t == tag && wire == WireType::LengthDelimited {
            return Some(Some(length_delimited(&mut buf)?));
        }
        skip(&mut buf, wire)?;
    }
    Some(None)
}

/// The server frame the bare baseline broadcasts: the same `Event` with the
/// same `Message` fields Natter sends, so frame sizes match.
pub fn event_frame(seq: u64, message: v1::Message) -> Vec<u8> {
    v1::ServerFrame {
        body: Some(v1::server_frame::Body::Event(v1::Event {
            seq,
            kind: Some(v1::event::Kind::OnTextMessage(message)),
        })),
    }
    .encode_to_vec()
}

pub fn server_frame(body: v1::server_frame::Body) -> Vec<u8> {
    v1::ServerFrame { body: Some(body) }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn payload_round_trips_at_the_requested_size() {
        let p = Payload { phase: 3, sender: 17, msg: 99, sent_ns: 123_456_789 };
        let text = payload_text(&p, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(parse_payload(text.as_bytes()), Some(p));
        assert_eq!(parse_payload(b"hello"), None);
    }

    #[test]
    fn the_bus_reader_finds_the_text_prost_encoded() {
        let text = payload_text(&Payload { phase: 1, sender: 2, msg: 3, sent_ns: 4 }, 100);
        let message = v1::Message {
            id: 382_754_410_561_798_144,
            client_msg_id: "m3".into(),
            from: "f1-g0-2".into(),
            to: "f1-g0".into(),
            chat_type: v1::ChatType::Group as i32,
            timestamp: 1_795_322_962_711,
            body: Some(v1::message::Body::Text(v1::TextBody { text: text.clone() })),
            ext: Default::default(),
            from_system: false,
            allow_group_ack: false,
            position: 0,
        };
        let bytes = bus_live_message(7, 6, message);
        let decoded = v1::BusMessage::decode(bytes.as_slice()).unwrap();
        assert!(matches!(decoded.body, Some(v1::bus_message::Body::Live(ref l)) if l.seq == 7 && l.prev == 6));
        assert_eq!(read_bus_text(&bytes), Some(Some(text.as_bytes())));
        let kick = v1::BusMessage { body: Some(v1::bus_message::Body::Kick(v1::KickSessions::default())) };
        assert_eq!(read_bus_text(&kick.encode_to_vec()), Some(None), "not a live event");
        assert_eq!(read_bus_text(&[0x0a, 0x09, 0x01]), None, "truncated");
    }

    #[test]
    fn the_event_reader_agrees_with_prost() {
        let text = payload_text(&Payload { phase: 1, sender: 2, msg: 3, sent_ns: 4 }, 64);
        let message = v1::Message {
            id: 382_754_410_561_798_144,
            client_msg_id: "c-1".into(),
            from: "alice".into(),
            to: "bob".into(),
            chat_type: v1::ChatType::Single as i32,
            timestamp: 1_795_322_962_711,
            body: Some(v1::message::Body::Text(v1::TextBody { text: text.clone() })),
            ext: [("k".to_owned(), "v".to_owned())].into(),
            from_system: false,
            allow_group_ack: false,
            position: 0,
        };
        let bytes = event_frame(42, message);
        match read_server_frame(&bytes).unwrap() {
            Incoming::Event { seq, id, text: Some(t), read: None } => {
                assert_eq!(seq, 42);
                assert_eq!(id, 382_754_410_561_798_144);
                assert_eq!(t, text.as_bytes());
            }
            other => panic!("{other:?}"),
        }
        for live in [true, false] {
            let receipt = v1::Receipt {
                r#type: v1::ReceiptType::Read as i32,
                mid: 382_754_410_561_798_144,
                from: "m7".into(),
                to: "1234".into(),
                chat_type: v1::ChatType::Group as i32,
                time: 1_795_322_962_711,
                group_read_count: 999,
            };
            let kind = if live {
                v1::event::Kind::OnReadMessage(receipt)
            } else {
                v1::event::Kind::OnStatisticMessage(receipt)
            };
            let bytes = server_frame(v1::server_frame::Body::Event(v1::Event { seq: 43, kind: Some(kind) }));
            match read_server_frame(&bytes).unwrap() {
                Incoming::Event { seq: 43, id: 0, text: None, read: Some(read) } => {
                    assert_eq!(read, ReadCount { mid: 382_754_410_561_798_144, count: 999 });
                }
                other => panic!("{other:?}"),
            }
        }
        let pong = server_frame(v1::server_frame::Body::Pong(v1::Pong::default()));
        assert!(matches!(read_server_frame(&pong), Some(Incoming::Other(_))));
        assert!(read_server_frame(&[0x22, 0x05, 0x01]).is_none(), "truncated");
    }
}
