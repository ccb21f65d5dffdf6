//! The requests and answers of the service APIs (`MessageApi`,
//! `PresenceApi`) on the wire, converted once for every front end: the
//! client WebSocket, the backend gRPC API and the roles' internal gRPC.
//!
//! Request fields are decoded by functions that return the domain error a
//! client should see (BAD_REQUEST or LIMIT_EXCEEDED naming the field); the
//! front end adds the request's name (`Error::within`). Answers decode with
//! `TryFrom` into [`DecodeError`]: a malformed answer is the peer's fault,
//! an INTERNAL error for the caller ([`decode`]).

use natter_types as t;

use crate::{DecodeError, v1};

// ---- request fields ----

pub fn user(raw: &str, field: &str) -> t::Result<t::UserId> {
    t::UserId::parse(raw, field)
}

pub fn users(raw: &[String], field: &str) -> t::Result<Vec<t::UserId>> {
    raw.iter().map(|u| t::UserId::parse(u, field)).collect()
}

/// An optional user id: empty means none.
pub fn optional_user(raw: &str, field: &str) -> t::Result<Option<t::UserId>> {
    if raw.is_empty() { Ok(None) } else { t::UserId::parse(raw, field).map(Some) }
}

pub fn group_id(raw: &str, field: &str) -> t::Result<t::GroupId> {
    t::GroupId::parse(raw, field)
}

/// A group and the members a request names (add and remove members).
pub fn group_and_members(group: &str, members: &[String]) -> t::Result<(t::GroupId, Vec<t::UserId>)> {
    Ok((group_id(group, "group_id")?, users(members, "members")?))
}

/// The group a client asks to create; the message service checks the limits.
pub fn new_group(g: v1::CreateGroup) -> t::Result<t::NewGroup> {
    Ok(t::NewGroup {
        members: users(&g.members, "members")?,
        name: g.name,
        description: g.description,
        max_members: g.max_members,
    })
}

/// Largest member page a client or the backend may ask for.
pub const MAX_MEMBER_PAGE: u32 = 1000;
/// The member page size when a request leaves it at 0.
pub const DEFAULT_MEMBER_PAGE: u32 = 100;

/// A member-page request of a client or the backend: the cursor is a user
/// id (exclusive), the page size 1–1000 with 0 meaning 100.
pub fn member_page(cursor: &str, page_size: u32) -> t::Result<(Option<t::UserId>, usize)> {
    let after = optional_user(cursor, "cursor")?;
    let limit = match page_size {
        0 => DEFAULT_MEMBER_PAGE,
        n @ 1..=MAX_MEMBER_PAGE => n,
        n => return Err(t::Error::limit("page_size", format!("is {n}, the limit is {MAX_MEMBER_PAGE}"))),
    };
    Ok((after, limit as usize))
}

/// An operator of the backend API: empty is the system, which may do anything.
pub fn operator(raw: &str) -> t::Result<t::Actor> {
    Ok(optional_user(raw, "operator")?.map_or(t::Actor::System, t::Actor::User))
}

/// A session a gateway reports.
pub fn session_info(s: v1::SessionInfo, field: &str) -> t::Result<t::SessionInfo> {
    if s.session_id.is_empty() {
        return Err(t::Error::bad_request(&format!("{field}.session_id"), "must not be empty"));
    }
    Ok(t::SessionInfo {
        user: t::UserId::parse(&s.user_id, &format!("{field}.user_id"))?,
        session: t::SessionId(s.session_id),
        device: s.device,
        gateway: s.gateway,
        platform: s.platform,
        client_addr: s.client_addr,
        connected_at: s.connected_at,
    })
}

/// The status a gateway reports for a session that ended.
pub fn closed_status(raw: i32) -> t::Result<t::SessionStatus> {
    crate::session_status(raw).ok_or_else(|| t::Error::bad_request("status", "must be ONLINE, OFFLINE or LOGGED_OUT"))
}

/// A conversation a request names by its id and type; errors name both
/// fields as the request spells them.
pub fn conversation(id: &str, chat_type: i32, id_field: &str, type_field: &str) -> t::Result<t::ConversationId> {
    t::ConversationId::parse(crate::chat_type(chat_type), id, id_field, type_field)
}

/// A conversation-list request (C1; C3 with `pinned`).
pub fn list_query(page_size: u32, cursor: String, pinned: bool) -> t::Result<t::ListQuery> {
    Ok(t::ListQuery { pinned, page_size: t::page_size(page_size, "page_size")?, cursor })
}

pub fn pin(p: &v1::PinConversation) -> t::Result<(t::ConversationId, bool)> {
    Ok((conversation(&p.conversation_id, p.conversation_type, "conversation_id", "conversation_type")?, p.is_pinned))
}

/// A history request (C5): the cursor is a message id, empty or -1 for none.
pub fn history_query(q: &v1::GetHistoryMessages) -> t::Result<(t::ConversationId, t::HistoryQuery)> {
    let conversation = conversation(&q.target_id, q.chat_type, "target_id", "chat_type")?;
    let cursor = match q.cursor.trim() {
        "" | "-1" => None,
        raw => Some(t::MessageId(raw.parse().map_err(|_| {
            t::Error::bad_request("cursor", format!("{raw:?} is not a message id (digits; empty or -1 for the newest)"))
        })?)),
    };
    let direction = match v1::SearchDirection::try_from(q.search_direction) {
        Ok(v1::SearchDirection::Unspecified | v1::SearchDirection::Up) => t::Direction::Up,
        Ok(v1::SearchDirection::Down) => t::Direction::Down,
        Err(_) => return Err(t::Error::bad_request("search_direction", "must be UP or DOWN")),
    };
    Ok((conversation, t::HistoryQuery { cursor, page_size: t::page_size(q.page_size, "page_size")?, direction }))
}

/// A one-way delete (C6): by time or by at most 50 ids, not both.
pub fn removal(r: &v1::RemoveHistoryMessages) -> t::Result<(t::ConversationId, t::Removal)> {
    let conversation = conversation(&r.target_id, r.chat_type, "target_id", "chat_type")?;
    let removal = match (r.before_timestamp, r.message_ids.as_slice()) {
        (0, []) => {
            return Err(t::Error::bad_request("before_timestamp", "give before_timestamp or message_ids"));
        }
        (before, []) if before < 0 => {
            return Err(t::Error::bad_request("before_timestamp", "must be a time in ms since the Unix epoch"));
        }
        (before, []) => t::Removal::Before(before),
        (0, ids) if ids.len() > t::MAX_REMOVED_IDS => {
            return Err(t::Error::limit(
                "message_ids",
                format!("has {} ids, the limit is {}", ids.len(), t::MAX_REMOVED_IDS),
            ));
        }
        (0, ids) => t::Removal::Ids(ids.iter().copied().map(t::MessageId).collect()),
        _ => return Err(t::Error::bad_request("message_ids", "give before_timestamp or message_ids, not both")),
    };
    Ok((conversation, removal))
}

/// A conversation delete (C7) and whether its history goes too.
pub fn deletion(d: &v1::DeleteConversation) -> t::Result<(t::ConversationId, bool)> {
    Ok((conversation(&d.channel, d.chat_type, "channel", "chat_type")?, d.delete_roam))
}

/// The conversation a read receipt marks read.
pub fn channel_ack(a: &v1::SendChannelAck) -> t::Result<t::ConversationId> {
    conversation(&a.to, a.chat_type, "to", "chat_type")
}

/// A receipt as a reader sends it (R2, R4, R5).
pub fn receipt(r: &v1::SendReceipt) -> t::Result<t::ReceiptRequest> {
    let kind =
        crate::receipt_kind(r.r#type).ok_or_else(|| t::Error::bad_request("type", "must be DELIVERY or READ"))?;
    let conversation = conversation(&r.to, r.chat_type, "to", "chat_type")?;
    if r.id == 0 {
        return Err(t::Error::bad_request("id", "must be the id of the message the receipt is for"));
    }
    Ok(t::ReceiptRequest {
        kind,
        chat_type: conversation.chat_type,
        to: conversation.target,
        message_id: t::MessageId(r.id),
    })
}

/// A recall (R8); `from` is the 1:1 message's sender when the backend
/// recalls as the system.
pub fn recall(r: &v1::RecallMessage, from: &str) -> t::Result<t::RecallRequest> {
    let conversation = conversation(&r.to, r.chat_type, "to", "chat_type")?;
    if r.mid == 0 {
        return Err(t::Error::bad_request("mid", "must be the id of the message to recall"));
    }
    Ok(t::RecallRequest {
        chat_type: conversation.chat_type,
        to: conversation.target,
        message_id: t::MessageId(r.mid),
        from: optional_user(from, "from")?,
    })
}

/// A reader-list request (R7).
pub fn reader_query(q: &v1::GetGroupMsgReadUser) -> t::Result<t::ReaderQuery> {
    if q.msg_id == 0 {
        return Err(t::Error::bad_request("msg_id", "must be the id of a group message"));
    }
    Ok(t::ReaderQuery {
        group: group_id(&q.group_id, "group_id")?,
        message_id: t::MessageId(q.msg_id),
        after: optional_user(&q.cursor, "cursor")?,
        limit: t::reader_page_size(q.page_size, "page_size")?,
    })
}

impl From<&t::ReaderQuery> for v1::GetGroupMsgReadUser {
    fn from(q: &t::ReaderQuery) -> Self {
        Self {
            msg_id: q.message_id.0,
            group_id: q.group.to_string(),
            page_size: q.limit as u32,
            cursor: q.after.as_ref().map(ToString::to_string).unwrap_or_default(),
        }
    }
}

impl From<&t::ReceiptRequest> for v1::SendReceipt {
    fn from(r: &t::ReceiptRequest) -> Self {
        Self {
            r#type: v1::ReceiptType::from(r.kind) as i32,
            to: r.to.clone(),
            chat_type: v1::ChatType::from(r.chat_type) as i32,
            id: r.message_id.0,
        }
    }
}

impl From<&t::RecallRequest> for v1::RecallMessage {
    fn from(r: &t::RecallRequest) -> Self {
        Self { mid: r.message_id.0, to: r.to.clone(), chat_type: v1::ChatType::from(r.chat_type) as i32 }
    }
}

pub fn user_strings(users: &[t::UserId]) -> Vec<String> {
    users.iter().map(ToString::to_string).collect()
}

/// Decodes an answer into its domain type; a malformed one is INTERNAL.
pub fn decode<T, W>(wire: W) -> t::Result<T>
where
    T: TryFrom<W, Error = DecodeError>,
{
    T::try_from(wire).map_err(t::Error::from)
}

fn decode_all<T, W>(wire: Vec<W>) -> Result<Vec<T>, DecodeError>
where
    T: TryFrom<W, Error = DecodeError>,
{
    wire.into_iter().map(T::try_from).collect()
}

/// A request field that does not decode, as the gRPC status the caller gets.
pub fn field<T>(decoded: t::Result<T>) -> Result<T, tonic::Status> {
    decoded.map_err(|e| crate::status_from_error(&e))
}

/// A domain answer as a gRPC response; an error crosses as its status
/// (code, field and message, see `status_from_error`).
pub fn reply<D, W>(result: t::Result<D>) -> Result<tonic::Response<W>, tonic::Status>
where
    W: for<'a> From<&'a D>,
{
    result.map(|d| tonic::Response::new(W::from(&d))).map_err(|e| crate::status_from_error(&e))
}

// ---- answers ----

/// A request answered with nothing but success.
impl From<&()> for v1::Empty {
    fn from((): &()) -> Self {
        Self {}
    }
}

impl From<&t::SendOutcome> for v1::SendResult {
    fn from(s: &t::SendOutcome) -> Self {
        Self {
            client_msg_id: s.client_msg_id.clone(),
            server_msg_id: s.id.0,
            timestamp: s.timestamp,
            duplicate: s.duplicate,
        }
    }
}

impl TryFrom<v1::SendResult> for t::SendOutcome {
    type Error = DecodeError;

    fn try_from(s: v1::SendResult) -> Result<Self, DecodeError> {
        Ok(Self {
            client_msg_id: s.client_msg_id,
            id: t::MessageId(s.server_msg_id),
            timestamp: s.timestamp,
            duplicate: s.duplicate,
        })
    }
}

impl From<&t::NewGroup> for v1::CreateGroup {
    fn from(g: &t::NewGroup) -> Self {
        Self {
            name: g.name.clone(),
            description: g.description.clone(),
            members: user_strings(&g.members),
            max_members: g.max_members,
        }
    }
}

impl From<&t::MemberPage> for v1::MemberPage {
    fn from(page: &t::MemberPage) -> Self {
        Self {
            members: page.members.iter().map(Into::into).collect(),
            next_cursor: page.next.as_ref().map(ToString::to_string).unwrap_or_default(),
        }
    }
}

impl TryFrom<v1::MemberPage> for t::MemberPage {
    type Error = DecodeError;

    fn try_from(page: v1::MemberPage) -> Result<Self, DecodeError> {
        Ok(Self { members: decode_all(page.members)?, next: optional_user(&page.next_cursor, "next_cursor")? })
    }
}

impl From<&Vec<t::Group>> for v1::GroupList {
    fn from(groups: &Vec<t::Group>) -> Self {
        Self { groups: groups.iter().map(Into::into).collect() }
    }
}

impl TryFrom<v1::GroupList> for Vec<t::Group> {
    type Error = DecodeError;

    fn try_from(list: v1::GroupList) -> Result<Self, DecodeError> {
        decode_all(list.groups)
    }
}

impl From<&Vec<t::Presence>> for v1::PresenceList {
    fn from(presences: &Vec<t::Presence>) -> Self {
        Self { presences: presences.iter().map(Into::into).collect() }
    }
}

impl TryFrom<v1::PresenceList> for Vec<t::Presence> {
    type Error = DecodeError;

    fn try_from(list: v1::PresenceList) -> Result<Self, DecodeError> {
        decode_all(list.presences)
    }
}

impl From<&t::SubscriptionPage> for v1::SubscriptionPage {
    fn from(page: &t::SubscriptionPage) -> Self {
        Self {
            subscriptions: page.subscriptions.iter().map(Into::into).collect(),
            total: u32::try_from(page.total).unwrap_or(u32::MAX),
        }
    }
}

impl TryFrom<v1::SubscriptionPage> for t::SubscriptionPage {
    type Error = DecodeError;

    fn try_from(page: v1::SubscriptionPage) -> Result<Self, DecodeError> {
        Ok(Self { subscriptions: decode_all(page.subscriptions)?, total: page.total as usize })
    }
}

impl From<&t::ConversationItem> for v1::ConversationItem {
    fn from(c: &t::ConversationItem) -> Self {
        Self {
            conversation_id: c.id.target.clone(),
            conversation_type: v1::ChatType::from(c.id.chat_type) as i32,
            is_pinned: c.pinned_at > 0,
            pinned_time: c.pinned_at,
            last_message: c.last_message.as_ref().map(Into::into),
            un_read_count: c.unread,
        }
    }
}

impl From<&t::ConversationPage> for v1::ConversationPage {
    fn from(p: &t::ConversationPage) -> Self {
        Self { conversations: p.conversations.iter().map(Into::into).collect(), cursor: p.cursor.clone() }
    }
}

impl TryFrom<v1::ConversationPage> for t::ConversationPage {
    type Error = DecodeError;

    fn try_from(p: v1::ConversationPage) -> Result<Self, DecodeError> {
        let conversations = p
            .conversations
            .into_iter()
            .map(|c| {
                let last_message: Option<t::Message> = c.last_message.map(TryInto::try_into).transpose()?;
                Ok(t::ConversationItem {
                    id: conversation(&c.conversation_id, c.conversation_type, "conversation_id", "conversation_type")?,
                    pinned_at: c.pinned_time,
                    activity: last_message.as_ref().map_or(0, |m| m.timestamp),
                    last_message,
                    unread: c.un_read_count,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Self { conversations, cursor: p.cursor })
    }
}

impl From<&t::HistoryPage> for v1::HistoryPage {
    fn from(p: &t::HistoryPage) -> Self {
        Self {
            messages: p.messages.iter().map(Into::into).collect(),
            cursor: p.cursor.map(|c| c.0.to_string()).unwrap_or_default(),
        }
    }
}

impl TryFrom<v1::HistoryPage> for t::HistoryPage {
    type Error = DecodeError;

    fn try_from(p: v1::HistoryPage) -> Result<Self, DecodeError> {
        let cursor = match p.cursor.as_str() {
            "" => None,
            raw => Some(t::MessageId(raw.parse().map_err(|_| DecodeError(format!("history cursor {raw:?}")))?)),
        };
        Ok(Self { messages: decode_all(p.messages)?, cursor })
    }
}

impl From<&Vec<t::SessionInfo>> for v1::SessionList {
    fn from(sessions: &Vec<t::SessionInfo>) -> Self {
        Self { sessions: sessions.iter().map(Into::into).collect() }
    }
}

impl TryFrom<v1::SessionList> for Vec<t::SessionInfo> {
    type Error = DecodeError;

    fn try_from(list: v1::SessionList) -> Result<Self, DecodeError> {
        decode_all(list.sessions)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn alice() -> t::UserId {
        t::UserId::parse("alice", "user").unwrap()
    }

    #[test]
    fn answers_round_trip() {
        let sent = t::SendOutcome { client_msg_id: "c1".into(), id: t::MessageId(42), timestamp: 7, duplicate: true };
        assert_eq!(decode::<t::SendOutcome, _>(v1::SendResult::from(&sent)).unwrap(), sent);

        let member = t::GroupMember { user_id: alice(), role: t::GroupRole::Admin, joined_at: 5 };
        for next in [None, Some(alice())] {
            let page = t::MemberPage { members: vec![member.clone()], next };
            assert_eq!(decode::<t::MemberPage, _>(v1::MemberPage::from(&page)).unwrap(), page);
        }

        let subs =
            t::SubscriptionPage { subscriptions: vec![t::Subscription { target: alice(), expires_at: 9 }], total: 3 };
        assert_eq!(decode::<t::SubscriptionPage, _>(v1::SubscriptionPage::from(&subs)).unwrap(), subs);
    }

    #[test]
    fn request_fields_name_the_field_and_the_limit() {
        let err = member_page("", MAX_MEMBER_PAGE + 1).unwrap_err();
        assert_eq!((err.code, err.field.as_deref()), (t::ErrorCode::LimitExceeded, Some("page_size")));
        assert!(err.message.contains("1000"), "{}", err.message);
        assert_eq!(member_page("", 0).unwrap(), (None, DEFAULT_MEMBER_PAGE as usize));

        let err = group_and_members(&t::GroupId::from_id(42).to_string(), &["Bad Id".into()]).unwrap_err();
        assert_eq!((err.code, err.field.as_deref()), (t::ErrorCode::BadRequest, Some("members")));

        let err =
            session_info(v1::SessionInfo { user_id: "alice".into(), ..Default::default() }, "session").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("session.session_id"));

        assert_eq!(operator("").unwrap(), t::Actor::System);
        assert_eq!(operator("alice").unwrap(), t::Actor::User(alice()));
    }

    #[test]
    fn a_malformed_answer_is_internal() {
        let bad = v1::MemberPage { members: vec![], next_cursor: "Not A User".into() };
        assert_eq!(decode::<t::MemberPage, _>(bad).unwrap_err().code, t::ErrorCode::Internal);
    }
}
