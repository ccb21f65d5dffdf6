//! Conversions between the wire types and the domain types of `natter-types`.
//! Decoding from the wire validates (ids, enums); encoding is infallible.

use std::collections::BTreeMap;

use natter_types as t;

use crate::v1;

/// Stored or received bytes that do not decode to a valid domain value.
#[derive(Debug)]
pub struct DecodeError(pub String);

impl std::error::Error for DecodeError {}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decode: {}", self.0)
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        Self(e.to_string())
    }
}

impl From<t::Error> for DecodeError {
    fn from(e: t::Error) -> Self {
        Self(e.message)
    }
}

impl From<DecodeError> for t::Error {
    fn from(e: DecodeError) -> Self {
        t::Error::internal(e.to_string())
    }
}

// ---- error codes ----

impl From<t::ErrorCode> for v1::ErrorCode {
    fn from(c: t::ErrorCode) -> Self {
        use t::ErrorCode as C;
        match c {
            C::BadRequest => Self::BadRequest,
            C::Unauthenticated => Self::Unauthenticated,
            C::Forbidden => Self::Forbidden,
            C::NotFound => Self::NotFound,
            C::Conflict => Self::Conflict,
            C::LimitExceeded => Self::LimitExceeded,
            C::RateLimited => Self::RateLimited,
            C::Unavailable => Self::Unavailable,
            C::Internal => Self::Internal,
            C::ResyncRequired => Self::ResyncRequired,
        }
    }
}

impl From<&t::Error> for v1::Error {
    fn from(e: &t::Error) -> Self {
        Self {
            code: v1::ErrorCode::from(e.code) as i32,
            message: e.message.clone(),
            field: e.field.clone().unwrap_or_default(),
        }
    }
}

/// The gRPC status for an error of the closed set; the code name travels in
/// the `natter-error-code` metadata and the field in `natter-error-field`.
pub fn status_from_error(e: &t::Error) -> tonic::Status {
    use t::ErrorCode as C;
    let code = match e.code {
        C::BadRequest => tonic::Code::InvalidArgument,
        C::Unauthenticated => tonic::Code::Unauthenticated,
        C::Forbidden => tonic::Code::PermissionDenied,
        C::NotFound => tonic::Code::NotFound,
        C::Conflict => tonic::Code::AlreadyExists,
        C::LimitExceeded => tonic::Code::ResourceExhausted,
        C::RateLimited => tonic::Code::ResourceExhausted,
        C::Unavailable => tonic::Code::Unavailable,
        C::Internal => tonic::Code::Internal,
        C::ResyncRequired => tonic::Code::OutOfRange,
    };
    let mut status = tonic::Status::new(code, e.message.clone());
    if let Ok(v) = e.code.as_str().parse() {
        status.metadata_mut().insert("natter-error-code", v);
    }
    if let Some(Ok(v)) = e.field.as_deref().map(str::parse) {
        status.metadata_mut().insert("natter-error-field", v);
    }
    status
}

/// The inverse of [`status_from_error`]: the error a role answered with, as
/// the caller of the remote client sees it. A status without the
/// `natter-error-code` metadata did not come from a Natter service (it came
/// from the transport, a proxy or the gRPC layer): a failure to reach the
/// peer, a connection lost mid-call (tonic reports it as UNKNOWN: the peer
/// may or may not have applied the call) or a deadline becomes UNAVAILABLE
/// (the caller may retry; sends are idempotent), anything else INTERNAL.
pub fn error_from_status(status: &tonic::Status) -> t::Error {
    let code = status
        .metadata()
        .get("natter-error-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| t::ErrorCode::ALL.into_iter().find(|c| c.as_str() == v));
    match code {
        Some(code) => t::Error {
            code,
            field: status.metadata().get("natter-error-field").and_then(|v| v.to_str().ok()).map(str::to_owned),
            message: status.message().to_owned(),
        },
        None => {
            let code = match status.code() {
                tonic::Code::Unknown
                | tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::ResourceExhausted => t::ErrorCode::Unavailable,
                _ => t::ErrorCode::Internal,
            };
            t::Error::new(code, format!("remote call failed: {:?}: {}", status.code(), status.message()))
        }
    }
}

// ---- actors ----

impl From<&t::Actor> for v1::Actor {
    fn from(a: &t::Actor) -> Self {
        let kind = match a {
            t::Actor::User(u) => v1::actor::Kind::UserId(u.to_string()),
            t::Actor::System => v1::actor::Kind::System(v1::Empty {}),
        };
        Self { kind: Some(kind) }
    }
}

/// Decodes a request's actor; `field` names it in the error.
pub fn actor(a: Option<v1::Actor>, field: &str) -> t::Result<t::Actor> {
    match a.and_then(|a| a.kind) {
        Some(v1::actor::Kind::UserId(u)) => Ok(t::Actor::User(t::UserId::parse(&u, field)?)),
        Some(v1::actor::Kind::System(_)) => Ok(t::Actor::System),
        None => Err(t::Error::bad_request(field, "a user id or system is required")),
    }
}

// ---- chat types ----

impl From<t::ChatType> for v1::ChatType {
    fn from(c: t::ChatType) -> Self {
        match c {
            t::ChatType::Single => Self::Single,
            t::ChatType::Group => Self::Group,
            t::ChatType::Thread => Self::Thread,
        }
    }
}

/// `None` for UNSPECIFIED or an unknown number.
pub fn chat_type(raw: i32) -> Option<t::ChatType> {
    match v1::ChatType::try_from(raw).ok()? {
        v1::ChatType::Single => Some(t::ChatType::Single),
        v1::ChatType::Group => Some(t::ChatType::Group),
        v1::ChatType::Thread => Some(t::ChatType::Thread),
        v1::ChatType::Unspecified => None,
    }
}

// ---- messages ----

fn body_to_wire(body: &t::MessageBody) -> v1::message::Body {
    match body {
        t::MessageBody::Text(text) => v1::message::Body::Text(v1::TextBody { text: text.clone() }),
        t::MessageBody::Custom { event, params } => v1::message::Body::Custom(v1::CustomBody {
            event: event.clone(),
            params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
    }
}

pub fn send_body(body: Option<v1::send_message::Body>) -> Option<t::MessageBody> {
    Some(match body? {
        v1::send_message::Body::Text(t) => t::MessageBody::Text(t.text),
        v1::send_message::Body::Custom(c) => {
            t::MessageBody::Custom { event: c.event, params: c.params.into_iter().collect() }
        }
    })
}

impl From<&t::Message> for v1::Message {
    fn from(m: &t::Message) -> Self {
        Self {
            id: m.id.0,
            client_msg_id: m.client_msg_id.clone(),
            from: m.from.to_string(),
            to: m.to.clone(),
            chat_type: v1::ChatType::from(m.chat_type) as i32,
            timestamp: m.timestamp,
            body: Some(body_to_wire(&m.body)),
            ext: m.ext.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            from_system: m.from_system,
            allow_group_ack: m.allow_group_ack,
            position: m.pos,
        }
    }
}

impl TryFrom<v1::Message> for t::Message {
    type Error = DecodeError;

    fn try_from(m: v1::Message) -> Result<Self, DecodeError> {
        let body = match m.body.ok_or_else(|| DecodeError("message without body".into()))? {
            v1::message::Body::Text(x) => t::MessageBody::Text(x.text),
            v1::message::Body::Custom(c) => {
                t::MessageBody::Custom { event: c.event, params: c.params.into_iter().collect() }
            }
        };
        Ok(Self {
            id: t::MessageId(m.id),
            client_msg_id: m.client_msg_id,
            from: t::UserId::parse(&m.from, "from")?,
            to: m.to,
            chat_type: chat_type(m.chat_type).ok_or_else(|| DecodeError("message chat type".into()))?,
            timestamp: m.timestamp,
            body,
            ext: m.ext.into_iter().collect::<BTreeMap<_, _>>(),
            from_system: m.from_system,
            allow_group_ack: m.allow_group_ack,
            pos: m.position,
        })
    }
}

impl From<&t::NewMessage> for v1::SendMessage {
    fn from(m: &t::NewMessage) -> Self {
        let body = match &m.body {
            t::MessageBody::Text(text) => v1::send_message::Body::Text(v1::TextBody { text: text.clone() }),
            t::MessageBody::Custom { event, params } => v1::send_message::Body::Custom(v1::CustomBody {
                event: event.clone(),
                params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }),
        };
        Self {
            client_msg_id: m.client_msg_id.clone(),
            to: m.to.clone(),
            chat_type: v1::ChatType::from(m.chat_type) as i32,
            body: Some(body),
            ext: m.ext.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            msg_config: m.allow_group_ack.then_some(v1::MsgConfig { allow_group_ack: true }),
        }
    }
}

/// Decodes and validates a message to send against `limits` (errors name
/// the field and the limit, as [`t::NewMessage::validate`] does).
pub fn new_message(m: v1::SendMessage, limits: &t::Limits) -> t::Result<t::NewMessage> {
    let allow_group_ack = m.msg_config.is_some_and(|c| c.allow_group_ack);
    let mut message = t::NewMessage::validate(
        m.client_msg_id,
        chat_type(m.chat_type),
        &m.to,
        send_body(m.body),
        m.ext.into_iter().collect::<BTreeMap<_, _>>(),
        limits,
    )?;
    if allow_group_ack && message.chat_type != t::ChatType::Group {
        return Err(t::Error::bad_request("msg_config.allow_group_ack", "only group messages ask for read receipts"));
    }
    message.allow_group_ack = allow_group_ack;
    Ok(message)
}

// ---- groups ----

impl From<t::GroupRole> for v1::GroupRole {
    fn from(r: t::GroupRole) -> Self {
        match r {
            t::GroupRole::Member => Self::Member,
            t::GroupRole::Admin => Self::Admin,
            t::GroupRole::Owner => Self::Owner,
        }
    }
}

pub fn group_role(raw: i32) -> Result<t::GroupRole, DecodeError> {
    match v1::GroupRole::try_from(raw) {
        Ok(v1::GroupRole::Member) => Ok(t::GroupRole::Member),
        Ok(v1::GroupRole::Admin) => Ok(t::GroupRole::Admin),
        Ok(v1::GroupRole::Owner) => Ok(t::GroupRole::Owner),
        _ => Err(DecodeError(format!("group role {raw}"))),
    }
}

impl From<&t::Group> for v1::Group {
    fn from(g: &t::Group) -> Self {
        Self {
            id: g.id.to_string(),
            name: g.name.clone(),
            description: g.description.clone(),
            owner: g.owner.to_string(),
            created_at: g.created_at,
            member_count: g.member_count,
            max_members: g.max_members,
        }
    }
}

impl TryFrom<v1::Group> for t::Group {
    type Error = DecodeError;

    fn try_from(g: v1::Group) -> Result<Self, DecodeError> {
        Ok(Self {
            id: t::GroupId::parse(&g.id, "group.id")?,
            name: g.name,
            description: g.description,
            owner: t::UserId::parse(&g.owner, "group.owner")?,
            created_at: g.created_at,
            member_count: g.member_count,
            max_members: g.max_members,
        })
    }
}

impl From<&t::GroupMember> for v1::GroupMember {
    fn from(m: &t::GroupMember) -> Self {
        Self { user_id: m.user_id.to_string(), role: v1::GroupRole::from(m.role) as i32, joined_at: m.joined_at }
    }
}

impl TryFrom<v1::GroupMember> for t::GroupMember {
    type Error = DecodeError;

    fn try_from(m: v1::GroupMember) -> Result<Self, DecodeError> {
        Ok(Self {
            user_id: t::UserId::parse(&m.user_id, "member.user_id")?,
            role: group_role(m.role)?,
            joined_at: m.joined_at,
        })
    }
}

impl From<t::GroupChangeKind> for v1::GroupChangeKind {
    fn from(k: t::GroupChangeKind) -> Self {
        use t::GroupChangeKind as K;
        match k {
            K::Created => Self::Created,
            K::MembersAdded => Self::MembersAdded,
            K::MembersRemoved => Self::MembersRemoved,
            K::MemberLeft => Self::MemberLeft,
            K::AdminAdded => Self::AdminAdded,
            K::AdminRemoved => Self::AdminRemoved,
            K::Destroyed => Self::Destroyed,
        }
    }
}

impl From<&t::GroupChange> for v1::GroupChange {
    fn from(c: &t::GroupChange) -> Self {
        Self {
            kind: v1::GroupChangeKind::from(c.kind) as i32,
            group_id: c.group_id.to_string(),
            operator: c.operator.to_string(),
            members: c.members.iter().map(ToString::to_string).collect(),
            time: c.time,
            group_name: c.group_name.clone(),
        }
    }
}

impl TryFrom<v1::GroupChange> for t::GroupChange {
    type Error = DecodeError;

    fn try_from(c: v1::GroupChange) -> Result<Self, DecodeError> {
        use t::GroupChangeKind as K;
        let kind = match v1::GroupChangeKind::try_from(c.kind) {
            Ok(v1::GroupChangeKind::Created) => K::Created,
            Ok(v1::GroupChangeKind::MembersAdded) => K::MembersAdded,
            Ok(v1::GroupChangeKind::MembersRemoved) => K::MembersRemoved,
            Ok(v1::GroupChangeKind::MemberLeft) => K::MemberLeft,
            Ok(v1::GroupChangeKind::AdminAdded) => K::AdminAdded,
            Ok(v1::GroupChangeKind::AdminRemoved) => K::AdminRemoved,
            Ok(v1::GroupChangeKind::Destroyed) => K::Destroyed,
            _ => return Err(DecodeError(format!("group change kind {}", c.kind))),
        };
        Ok(Self {
            kind,
            group_id: t::GroupId::parse(&c.group_id, "group_id")?,
            group_name: c.group_name,
            operator: t::UserId::parse(&c.operator, "operator")?,
            members: c.members.iter().map(|m| t::UserId::parse(m, "members")).collect::<Result<_, _>>()?,
            time: c.time,
        })
    }
}

// ---- conversation events ----

impl From<t::MultiDeviceOperation> for v1::MultiDeviceOperation {
    fn from(o: t::MultiDeviceOperation) -> Self {
        match o {
            t::MultiDeviceOperation::PinnedConversation => Self::PinnedConversation,
            t::MultiDeviceOperation::UnpinnedConversation => Self::UnpinnedConversation,
            t::MultiDeviceOperation::DeleteRoaming => Self::DeleteRoaming,
            t::MultiDeviceOperation::DeleteConversation => Self::DeleteConversation,
        }
    }
}

impl From<&t::ConversationEvent> for v1::MultiDeviceEvent {
    fn from(e: &t::ConversationEvent) -> Self {
        Self {
            operation: v1::MultiDeviceOperation::from(e.operation) as i32,
            conversation_id: e.conversation.target.clone(),
            conversation_type: v1::ChatType::from(e.conversation.chat_type) as i32,
            time: e.time,
            message_ids: e.message_ids.iter().map(|id| id.0).collect(),
            before_timestamp: e.before,
            delete_roam: e.delete_roam,
        }
    }
}

impl TryFrom<v1::MultiDeviceEvent> for t::ConversationEvent {
    type Error = DecodeError;

    fn try_from(e: v1::MultiDeviceEvent) -> Result<Self, DecodeError> {
        use v1::MultiDeviceOperation as W;
        let operation = match W::try_from(e.operation) {
            Ok(W::PinnedConversation) => t::MultiDeviceOperation::PinnedConversation,
            Ok(W::UnpinnedConversation) => t::MultiDeviceOperation::UnpinnedConversation,
            Ok(W::DeleteRoaming) => t::MultiDeviceOperation::DeleteRoaming,
            Ok(W::DeleteConversation) => t::MultiDeviceOperation::DeleteConversation,
            Ok(W::Unspecified) | Err(_) => return Err(DecodeError("multi-device operation".into())),
        };
        Ok(Self {
            operation,
            conversation: t::ConversationId::parse(
                chat_type(e.conversation_type),
                &e.conversation_id,
                "conversation_id",
                "conversation_type",
            )?,
            time: e.time,
            message_ids: e.message_ids.into_iter().map(t::MessageId).collect(),
            before: e.before_timestamp,
            delete_roam: e.delete_roam,
        })
    }
}

impl From<&t::ChannelAck> for v1::ChannelAck {
    fn from(a: &t::ChannelAck) -> Self {
        Self {
            from: a.from.to_string(),
            to: a.to.clone(),
            chat_type: v1::ChatType::from(a.chat_type) as i32,
            time: a.time,
        }
    }
}

impl TryFrom<v1::ChannelAck> for t::ChannelAck {
    type Error = DecodeError;

    fn try_from(a: v1::ChannelAck) -> Result<Self, DecodeError> {
        Ok(Self {
            from: t::UserId::parse(&a.from, "from")?,
            to: a.to,
            chat_type: chat_type(a.chat_type).ok_or_else(|| DecodeError("channel ack chat type".into()))?,
            time: a.time,
        })
    }
}

// ---- receipts and recall ----

impl From<t::ReceiptKind> for v1::ReceiptType {
    fn from(k: t::ReceiptKind) -> Self {
        match k {
            t::ReceiptKind::Delivered => Self::Delivery,
            t::ReceiptKind::Read => Self::Read,
        }
    }
}

pub fn receipt_kind(raw: i32) -> Option<t::ReceiptKind> {
    match v1::ReceiptType::try_from(raw) {
        Ok(v1::ReceiptType::Delivery) => Some(t::ReceiptKind::Delivered),
        Ok(v1::ReceiptType::Read) => Some(t::ReceiptKind::Read),
        Ok(v1::ReceiptType::Unspecified) | Err(_) => None,
    }
}

impl From<&t::Receipt> for v1::Receipt {
    fn from(r: &t::Receipt) -> Self {
        Self {
            r#type: v1::ReceiptType::from(r.kind) as i32,
            mid: r.message_id.0,
            from: r.from.to_string(),
            to: r.to.clone(),
            chat_type: v1::ChatType::from(r.chat_type) as i32,
            time: r.time,
            group_read_count: r.read_count,
        }
    }
}

impl TryFrom<v1::Receipt> for t::Receipt {
    type Error = DecodeError;

    fn try_from(r: v1::Receipt) -> Result<Self, DecodeError> {
        Ok(Self {
            kind: receipt_kind(r.r#type).ok_or_else(|| DecodeError("receipt type".into()))?,
            message_id: t::MessageId(r.mid),
            chat_type: chat_type(r.chat_type).ok_or_else(|| DecodeError("receipt chat type".into()))?,
            from: t::UserId::parse(&r.from, "from")?,
            to: r.to,
            time: r.time,
            read_count: r.group_read_count,
        })
    }
}

impl From<&t::Recall> for v1::Recall {
    fn from(r: &t::Recall) -> Self {
        Self {
            mid: r.message_id.0,
            from: r.from.to_string(),
            to: r.to.clone(),
            chat_type: v1::ChatType::from(r.chat_type) as i32,
            by: r.by.to_string(),
            time: r.time,
        }
    }
}

impl TryFrom<v1::Recall> for t::Recall {
    type Error = DecodeError;

    fn try_from(r: v1::Recall) -> Result<Self, DecodeError> {
        Ok(Self {
            message_id: t::MessageId(r.mid),
            chat_type: chat_type(r.chat_type).ok_or_else(|| DecodeError("recall chat type".into()))?,
            from: t::UserId::parse(&r.from, "from")?,
            to: r.to,
            by: t::UserId::parse(&r.by, "by")?,
            time: r.time,
        })
    }
}

impl From<&t::ReaderPage> for v1::GroupReadUsers {
    fn from(p: &t::ReaderPage) -> Self {
        Self {
            users: p.readers.iter().map(|r| v1::GroupReadUser { user_id: r.user.to_string(), time: r.time }).collect(),
            cursor: p.cursor.as_ref().map(ToString::to_string).unwrap_or_default(),
            read_count: p.read_count,
        }
    }
}

impl TryFrom<v1::GroupReadUsers> for t::ReaderPage {
    type Error = DecodeError;

    fn try_from(p: v1::GroupReadUsers) -> Result<Self, DecodeError> {
        let readers = p
            .users
            .into_iter()
            .map(|r| Ok(t::Reader { user: t::UserId::parse(&r.user_id, "user_id")?, time: r.time }))
            .collect::<Result<_, DecodeError>>()?;
        let cursor = if p.cursor.is_empty() { None } else { Some(t::UserId::parse(&p.cursor, "cursor")?) };
        Ok(Self { readers, cursor, read_count: p.read_count })
    }
}

// ---- log events ----

impl From<&t::LogEvent> for v1::LogEvent {
    fn from(e: &t::LogEvent) -> Self {
        let kind = match e {
            t::LogEvent::Message(m) => v1::log_event::Kind::Message(m.into()),
            t::LogEvent::GroupChange(c) => v1::log_event::Kind::GroupChange(c.into()),
            t::LogEvent::Conversation(c) => v1::log_event::Kind::MultiDevice(c.into()),
            t::LogEvent::ChannelAck(a) => v1::log_event::Kind::ChannelAck(a.into()),
            t::LogEvent::Receipt(r) => v1::log_event::Kind::Receipt(r.into()),
            t::LogEvent::Recall(r) => v1::log_event::Kind::Recall(r.into()),
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<v1::LogEvent> for t::LogEvent {
    type Error = DecodeError;

    fn try_from(e: v1::LogEvent) -> Result<Self, DecodeError> {
        match e.kind.ok_or_else(|| DecodeError("empty log event".into()))? {
            v1::log_event::Kind::Message(m) => Ok(Self::Message(m.try_into()?)),
            v1::log_event::Kind::GroupChange(c) => Ok(Self::GroupChange(c.try_into()?)),
            v1::log_event::Kind::MultiDevice(c) => Ok(Self::Conversation(c.try_into()?)),
            v1::log_event::Kind::ChannelAck(a) => Ok(Self::ChannelAck(a.try_into()?)),
            v1::log_event::Kind::Receipt(r) => Ok(Self::Receipt(r.try_into()?)),
            v1::log_event::Kind::Recall(r) => Ok(Self::Recall(r.try_into()?)),
        }
    }
}

/// The client-facing event for a log entry; the callback name follows the
/// message type (`onTextMessage`, `onCustomMessage`, `onGroupChange`).
pub fn event_frame(seq: u64, event: &t::LogEvent) -> v1::Event {
    use v1::event::Kind;
    let kind = match event {
        t::LogEvent::Message(m) => match m.body {
            t::MessageBody::Text(_) => Kind::OnTextMessage(m.into()),
            t::MessageBody::Custom { .. } => Kind::OnCustomMessage(m.into()),
        },
        t::LogEvent::GroupChange(c) => Kind::OnGroupChange(c.into()),
        t::LogEvent::Conversation(c) => Kind::OnMultiDeviceEvent(c.into()),
        t::LogEvent::ChannelAck(a) => Kind::OnChannelMessage(a.into()),
        t::LogEvent::Receipt(r) => match r.kind {
            t::ReceiptKind::Delivered => Kind::OnDeliveredMessage(r.into()),
            t::ReceiptKind::Read => Kind::OnReadMessage(r.into()),
        },
        t::LogEvent::Recall(r) => Kind::OnRecallMessage(r.into()),
    };
    v1::Event { seq, kind: Some(kind) }
}

/// The event for a log entry replayed on resume: as [`event_frame`], except
/// that a group message's read count arrives as `onStatisticMessage` (the
/// seed's callback for counts gathered while the sender was away).
pub fn replay_frame(seq: u64, event: &t::LogEvent) -> v1::Event {
    match event {
        t::LogEvent::Receipt(r) if r.is_group_count() => {
            v1::Event { seq, kind: Some(v1::event::Kind::OnStatisticMessage(r.into())) }
        }
        _ => event_frame(seq, event),
    }
}

/// A log entry's `Event` without its seq, encoded: what the frames of all
/// its recipients share (see [`event_frame_bytes`]).
pub fn event_body(event: &t::LogEvent) -> Vec<u8> {
    use prost::Message as _;
    event_frame(0, event).encode_to_vec()
}

/// The protobuf `ServerFrame { event: Event { seq, .. } }` around
/// [`event_body`]'s bytes: byte for byte what prost makes of the whole frame,
/// without converting and encoding the event again for each recipient of a
/// fan-out.
pub fn event_frame_bytes(seq: u64, body: &[u8]) -> Vec<u8> {
    // client.proto: ServerFrame.event = 4, Event.seq = 1.
    wrap_fields(4, &[(1, seq)], body)
}

/// A log event as the `event` field of a `LiveEventWire`, encoded: what the
/// bus messages of all the recipients of a fan-out share (see
/// [`live_bus_message_bytes`]).
pub fn live_event_body(event: &t::LogEvent) -> Vec<u8> {
    use prost::Message as _;
    v1::LiveEventWire { seq: 0, prev: 0, event: Some(event.into()) }.encode_to_vec()
}

/// The protobuf `BusMessage { live: LiveEventWire { seq, prev, .. } }`
/// around [`live_event_body`]'s bytes: byte for byte what prost makes of the
/// whole message.
pub fn live_bus_message_bytes(seq: u64, prev: u64, body: &[u8]) -> Vec<u8> {
    // events.proto: BusMessage.live = 1, LiveEventWire.seq = 1, .prev = 2.
    wrap_fields(1, &[(1, seq), (2, prev)], body)
}

/// Field `outer` (a message) holding the `varints` (field, value) and then
/// `body`, the message's remaining fields already encoded. That is what
/// prost writes when the varint fields are the message's first: it writes
/// fields in field order, and proto3 leaves zeros out.
fn wrap_fields(outer: u32, varints: &[(u32, u64)], body: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let set = || varints.iter().filter(|(_, value)| *value != 0);
    let inner = set().map(|&(field, value)| key_len(field) + encoded_len_varint(value)).sum::<usize>() + body.len();
    let mut out = Vec::with_capacity(key_len(outer) + encoded_len_varint(inner as u64) + inner);
    encode_key(outer, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    for &(field, value) in set() {
        encode_key(field, WireType::Varint, &mut out);
        encode_varint(value, &mut out);
    }
    out.extend_from_slice(body);
    out
}

// ---- presence ----

impl From<&t::Presence> for v1::PresenceStatus {
    fn from(p: &t::Presence) -> Self {
        Self {
            user_id: p.user.to_string(),
            devices: p
                .devices
                .iter()
                .map(|d| v1::DeviceStatus { device: d.device.clone(), platform: d.platform.clone(), online: d.online })
                .collect(),
            description: p.description.clone(),
            time: p.time,
            online: p.online(),
        }
    }
}

impl TryFrom<v1::PresenceStatus> for t::Presence {
    type Error = DecodeError;

    /// `online` is derived from the devices, so the wire field is not read.
    fn try_from(p: v1::PresenceStatus) -> Result<Self, DecodeError> {
        Ok(Self {
            user: t::UserId::parse(&p.user_id, "presence.user_id")?,
            devices: p
                .devices
                .into_iter()
                .map(|d| t::DeviceStatus { device: d.device, platform: d.platform, online: d.online })
                .collect(),
            description: p.description,
            time: p.time,
        })
    }
}

impl From<&t::Subscription> for v1::PresenceSubscription {
    fn from(s: &t::Subscription) -> Self {
        Self { user_id: s.target.to_string(), expiry: s.expires_at }
    }
}

impl TryFrom<v1::PresenceSubscription> for t::Subscription {
    type Error = DecodeError;

    fn try_from(s: v1::PresenceSubscription) -> Result<Self, DecodeError> {
        Ok(Self { target: t::UserId::parse(&s.user_id, "subscription.user_id")?, expires_at: s.expiry })
    }
}

impl From<t::SessionStatus> for v1::SessionStatus {
    fn from(s: t::SessionStatus) -> Self {
        match s {
            t::SessionStatus::Online => Self::Online,
            t::SessionStatus::Offline => Self::Offline,
            t::SessionStatus::LoggedOut => Self::LoggedOut,
        }
    }
}

/// `None` for UNSPECIFIED or an unknown number.
pub fn session_status(raw: i32) -> Option<t::SessionStatus> {
    match v1::SessionStatus::try_from(raw).ok()? {
        v1::SessionStatus::Online => Some(t::SessionStatus::Online),
        v1::SessionStatus::Offline => Some(t::SessionStatus::Offline),
        v1::SessionStatus::LoggedOut => Some(t::SessionStatus::LoggedOut),
        v1::SessionStatus::Unspecified => None,
    }
}

impl From<&t::WebhookEvent> for v1::WebhookEvent {
    fn from(e: &t::WebhookEvent) -> Self {
        Self {
            userid: e.user.to_string(),
            status: e.status.code().to_owned(),
            os: e.os.clone(),
            time: e.time,
            client_ip: e.client_ip.clone(),
            session_id: e.session_id.clone(),
        }
    }
}

impl TryFrom<v1::WebhookEvent> for t::WebhookEvent {
    type Error = DecodeError;

    fn try_from(e: v1::WebhookEvent) -> Result<Self, DecodeError> {
        let status = match e.status.as_str() {
            "0" => t::SessionStatus::Online,
            "1" => t::SessionStatus::Offline,
            "2" => t::SessionStatus::LoggedOut,
            other => return Err(DecodeError(format!("webhook status {other:?}"))),
        };
        Ok(Self {
            user: t::UserId::parse(&e.userid, "userid")?,
            status,
            os: e.os,
            time: e.time,
            client_ip: e.client_ip,
            session_id: e.session_id,
        })
    }
}

impl From<&t::SessionInfo> for v1::SessionInfo {
    fn from(s: &t::SessionInfo) -> Self {
        Self {
            user_id: s.user.to_string(),
            session_id: s.session.0.clone(),
            device: s.device.clone(),
            gateway: s.gateway.clone(),
            platform: s.platform.clone(),
            client_addr: s.client_addr.clone(),
            connected_at: s.connected_at,
        }
    }
}

impl TryFrom<v1::SessionInfo> for t::SessionInfo {
    type Error = DecodeError;

    fn try_from(s: v1::SessionInfo) -> Result<Self, DecodeError> {
        Ok(crate::api::session_info(s, "session")?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The frame and the bus message written around a shared body are the
    /// ones prost writes, for every kind of event and seqs of every varint
    /// length.
    #[test]
    fn shared_bodies_wrapped_match_what_prost_encodes() {
        use prost::Message as _;
        let alice = t::UserId::parse("alice", "user").unwrap();
        let message = |body| t::Message {
            id: t::MessageId(42),
            client_msg_id: "c-1".into(),
            from: alice.clone(),
            to: "bob".into(),
            chat_type: t::ChatType::Single,
            timestamp: 1_700_000_000_000,
            body,
            ext: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            from_system: false,
            allow_group_ack: false,
            pos: 7,
        };
        let events = [
            t::LogEvent::Message(message(t::MessageBody::Text("hello, 世界".into()))),
            t::LogEvent::Message(message(t::MessageBody::Custom {
                event: "card".into(),
                params: BTreeMap::from([("p".to_owned(), "1".to_owned())]),
            })),
            t::LogEvent::GroupChange(t::GroupChange {
                kind: t::GroupChangeKind::MembersAdded,
                group_id: t::GroupId::from_id(7),
                group_name: "g".into(),
                operator: alice.clone(),
                members: vec![alice.clone()],
                time: 5,
            }),
        ];
        for event in &events {
            let body = event_body(event);
            for seq in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
                let whole = v1::ServerFrame { body: Some(v1::server_frame::Body::Event(event_frame(seq, event))) };
                assert_eq!(event_frame_bytes(seq, &body), whole.encode_to_vec(), "seq {seq}, {event:?}");
            }
            let body = live_event_body(event);
            for (seq, prev) in [(0, 0), (1, 0), (128, 127), (1 << 35, 300), (u64::MAX, u64::MAX - 1)] {
                let live = v1::LiveEventWire { seq, prev, event: Some(event.into()) };
                let whole = v1::BusMessage { body: Some(v1::bus_message::Body::Live(live)) };
                assert_eq!(live_bus_message_bytes(seq, prev, &body), whole.encode_to_vec(), "seq {seq}, {event:?}");
            }
        }
    }

    #[test]
    fn every_error_code_survives_a_status_round_trip() {
        for code in t::ErrorCode::ALL {
            let plain = t::Error::new(code, format!("{} happened — naïvely", code.as_str().to_lowercase()));
            assert_eq!(error_from_status(&status_from_error(&plain)), plain, "{code}");
            let with_field = t::Error::field(code, "send.to", "must not be empty");
            let status = status_from_error(&with_field);
            assert_eq!(status.metadata().get("natter-error-code").unwrap(), code.as_str());
            assert_eq!(error_from_status(&status), with_field, "{code}");
        }
    }

    #[test]
    fn every_status_from_an_error_decodes_to_that_error_after_header_encoding() {
        // What actually travels: the status as HTTP/2 trailers and back.
        for code in t::ErrorCode::ALL {
            let e = t::Error::field(code, "subscribe.expiry", "is 0 seconds, the range is 1-2592000 — ünïcode");
            let response = status_from_error(&e).into_http::<tonic::body::Body>();
            let back = tonic::Status::from_header_map(response.headers()).unwrap();
            assert_eq!(error_from_status(&back), e, "{code}");
        }
    }

    #[test]
    fn statuses_without_natter_metadata_become_unavailable_or_internal() {
        use tonic::Code;
        for code in [
            Code::Unknown,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Aborted,
            Code::ResourceExhausted,
        ] {
            let e = error_from_status(&tonic::Status::new(code, "connection refused"));
            assert_eq!(e.code, t::ErrorCode::Unavailable, "{code:?}");
            assert!(e.message.contains("connection refused"), "{}", e.message);
            assert_eq!(e.field, None);
        }
        for code in [Code::Internal, Code::InvalidArgument, Code::Unimplemented, Code::NotFound] {
            assert_eq!(error_from_status(&tonic::Status::new(code, "x")).code, t::ErrorCode::Internal, "{code:?}");
        }
        // An unknown code name (a newer peer) is not trusted either.
        let mut s = tonic::Status::new(Code::InvalidArgument, "x");
        s.metadata_mut().insert("natter-error-code", "NEW_CODE".parse().unwrap());
        assert_eq!(error_from_status(&s).code, t::ErrorCode::Internal);
    }

    #[test]
    fn actor_and_session_status_round_trip_and_reject_garbage() {
        for a in [t::Actor::System, t::Actor::User(t::UserId::parse("alice", "u").unwrap())] {
            assert_eq!(actor(Some(v1::Actor::from(&a)), "actor").unwrap(), a);
        }
        assert_eq!(actor(None, "actor").unwrap_err().field.as_deref(), Some("actor"));
        let bad = v1::Actor { kind: Some(v1::actor::Kind::UserId("no spaces".into())) };
        assert_eq!(actor(Some(bad), "actor").unwrap_err().code, t::ErrorCode::BadRequest);
        for s in [t::SessionStatus::Online, t::SessionStatus::Offline, t::SessionStatus::LoggedOut] {
            assert_eq!(session_status(v1::SessionStatus::from(s) as i32), Some(s));
        }
        assert_eq!(session_status(0), None);
        assert_eq!(session_status(99), None);
    }

    #[test]
    fn new_message_and_presence_round_trip() {
        let limits = t::Limits::default();
        let m = t::NewMessage::validate(
            "c1".into(),
            Some(t::ChatType::Single),
            "bob",
            Some(t::MessageBody::Custom { event: "gift".into(), params: BTreeMap::from([("k".into(), "v".into())]) }),
            BTreeMap::from([("e".into(), "x".into())]),
            &limits,
        )
        .unwrap();
        assert_eq!(new_message(v1::SendMessage::from(&m), &limits).unwrap(), m);
        let err = new_message(v1::SendMessage { chat_type: 42, ..v1::SendMessage::from(&m) }, &limits).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("chat_type"));

        let p = t::Presence {
            user: t::UserId::parse("bob", "u").unwrap(),
            devices: vec![t::DeviceStatus { device: "d".into(), platform: "iOS".into(), online: true }],
            description: "busy".into(),
            time: 7,
        };
        assert_eq!(t::Presence::try_from(v1::PresenceStatus::from(&p)).unwrap(), p);
        assert!(t::Presence::try_from(v1::PresenceStatus::default()).is_err());
        assert!(t::GroupMember::try_from(v1::GroupMember { user_id: "a".into(), role: 9, joined_at: 0 }).is_err());
    }
}
