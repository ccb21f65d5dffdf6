use std::collections::BTreeMap;

use crate::{
    ChannelAck, ConversationEvent, ConversationKey, Error, GroupChange, GroupId, Limits, MessageId, Recall, Receipt,
    Result, UserId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatType {
    Single,
    Group,
    Thread,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    Text(String),
    Custom { event: String, params: BTreeMap<String, String> },
}

impl MessageBody {
    fn size(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Custom { event, params } => {
                event.len() + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            }
        }
    }
}

/// Who acts: a user (from a device or on their behalf from the backend), or
/// the app backend as the system, which may do anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(UserId),
    System,
}

impl Actor {
    pub fn user_id(&self) -> UserId {
        match self {
            Self::User(u) => u.clone(),
            Self::System => UserId::system(),
        }
    }
}

/// A message as submitted, validated against the limits but not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub client_msg_id: String,
    pub chat_type: ChatType,
    /// Normalised: a user id for single chats, a group id for groups.
    pub to: String,
    pub body: MessageBody,
    pub ext: BTreeMap<String, String>,
    /// Whether it creates and updates the conversation on both sides (C2):
    /// always from a device; from the backend API only when the operator
    /// turns it on.
    pub updates_conversations: bool,
    /// R5: the group's members are asked for read receipts (the seed's
    /// `msgConfig.allowGroupAck`); only the group's owner and admins may ask.
    pub allow_group_ack: bool,
}

impl NewMessage {
    /// Checks every field against `limits`; errors name the field and limit.
    pub fn validate(
        client_msg_id: String,
        chat_type: Option<ChatType>,
        to: &str,
        body: Option<MessageBody>,
        ext: BTreeMap<String, String>,
        limits: &Limits,
    ) -> Result<Self> {
        if client_msg_id.is_empty() {
            return Err(Error::bad_request("client_msg_id", "must not be empty (it makes retries idempotent)"));
        }
        if client_msg_id.len() > limits.max_client_msg_id_len {
            return Err(Error::limit(
                "client_msg_id",
                format!("is {} bytes, the limit is {}", client_msg_id.len(), limits.max_client_msg_id_len),
            ));
        }
        let chat_type = chat_type.ok_or_else(|| Error::bad_request("chat_type", "must be SINGLE, GROUP or THREAD"))?;
        let to = match chat_type {
            ChatType::Single => UserId::parse(to, "to")?.as_str().to_owned(),
            ChatType::Group => GroupId::parse(to, "to")?.as_str().to_owned(),
            ChatType::Thread => {
                return Err(Error::bad_request("chat_type", "thread messages are not supported yet"));
            }
        };
        let body = body.ok_or_else(|| Error::bad_request("body", "a text or custom body is required"))?;
        if let MessageBody::Custom { event, .. } = &body
            && event.is_empty()
        {
            return Err(Error::bad_request("custom.event", "must not be empty"));
        }
        if ext.len() > limits.max_ext_entries {
            return Err(Error::limit(
                "ext",
                format!("has {} entries, the limit is {}", ext.len(), limits.max_ext_entries),
            ));
        }
        if let Some(key) = ext.keys().find(|k| k.is_empty() || k.len() > limits.max_ext_key_len) {
            return Err(Error::bad_request("ext", format!("key {key:?} must be 1-{} bytes", limits.max_ext_key_len)));
        }
        let size = body.size() + ext.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size > limits.max_body_bytes {
            return Err(Error::limit(
                "body",
                format!("body and ext are {size} bytes, the limit is {}", limits.max_body_bytes),
            ));
        }
        Ok(Self { client_msg_id, chat_type, to, body, ext, updates_conversations: true, allow_group_ack: false })
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub client_msg_id: String,
    pub from: UserId,
    pub to: String,
    pub chat_type: ChatType,
    /// Server time of storing, ms since the Unix epoch.
    pub timestamp: i64,
    pub body: MessageBody,
    pub ext: BTreeMap<String, String>,
    pub from_system: bool,
    /// Its position in its conversation's timeline (1, 2, … in the order
    /// stored), given by the store; 0 for a message that does not count
    /// for conversations (a backend message, unless the operator turned
    /// that on): it is in the history but not in unread counts or previews.
    pub pos: u64,
    /// R5: a group message whose readers send read receipts.
    pub allow_group_ack: bool,
}

impl Message {
    /// The conversation this message belongs to (shared by both sides of a
    /// 1:1 chat).
    pub fn conversation(&self) -> ConversationKey {
        match self.chat_type {
            // A message's ids were validated when it was sent.
            ChatType::Single => ConversationKey::single_of(self.from.as_str(), &self.to),
            ChatType::Group | ChatType::Thread => ConversationKey::from_stored(format!("g:{}", self.to)),
        }
    }
}

/// One entry of a user's durable event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Message(Message),
    GroupChange(GroupChange),
    Conversation(ConversationEvent),
    ChannelAck(ChannelAck),
    Receipt(Receipt),
    Recall(Recall),
}

/// Where an appended event landed in one user's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Seq of the user's previous event (what a live receiver must have
    /// delivered already to deliver this one without a gap).
    pub prev: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ErrorCode;

    fn text(n: usize) -> Option<MessageBody> {
        Some(MessageBody::Text("x".repeat(n)))
    }

    #[test]
    fn body_limit_counts_text_and_ext() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let ok = NewMessage::validate("c".into(), Some(ChatType::Single), "Bob", text(10), BTreeMap::new(), &limits)
            .unwrap();
        assert_eq!(ok.to, "bob");
        let ext = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let err = NewMessage::validate("c".into(), Some(ChatType::Single), "bob", text(9), ext, &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert_eq!(err.field.as_deref(), Some("body"));
        assert!(err.message.contains("11 bytes, the limit is 10"), "{}", err.message);
    }

    #[test]
    fn missing_fields_are_named() {
        let limits = Limits::default();
        let e = NewMessage::validate(String::new(), Some(ChatType::Single), "bob", text(1), BTreeMap::new(), &limits)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("client_msg_id"));
        let e = NewMessage::validate("c".into(), None, "bob", text(1), BTreeMap::new(), &limits).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("chat_type"));
        let e = NewMessage::validate("c".into(), Some(ChatType::Group), "abc", text(1), BTreeMap::new(), &limits)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("to"));
        let e = NewMessage::validate("c".into(), Some(ChatType::Single), "bob", None, BTreeMap::new(), &limits)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
    }
}

/// The R1 server ack: the message is durably stored under `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub client_msg_id: String,
    pub id: MessageId,
    pub timestamp: i64,
    /// True when this was a retry of a message stored before.
    pub duplicate: bool,
}
