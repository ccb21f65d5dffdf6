//! Conversations as one user sees them (C1–C7): how they are named, listed
//! and paged, and what a user's other devices learn when one changes.

use crate::{ChatType, ConversationKey, Error, GroupId, KeyParts, Message, MessageId, Result, UserId};

/// Page sizes of conversation lists and history (C1, C3, C5): 1 to this.
pub const MAX_PAGE_SIZE: usize = 50;
/// The page size when a request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Message ids in one one-way delete (C6).
pub const MAX_REMOVED_IDS: usize = 50;

/// A requested page size: 0 (unset) is the default, 1–50 as given, more is
/// refused naming `field` and the range.
pub fn page_size(raw: u32, field: &str) -> Result<usize> {
    match raw as usize {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(Error::bad_request(field, format!("is {n}, page sizes are 1-{MAX_PAGE_SIZE}"))),
    }
}

/// A conversation as its user names it (C1): the peer of a 1:1 chat, or the
/// group of a group chat.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversationId {
    pub chat_type: ChatType,
    /// The peer's user id, or the group id.
    pub target: String,
}

impl ConversationId {
    pub fn single(peer: &UserId) -> Self {
        Self { chat_type: ChatType::Single, target: peer.as_str().to_owned() }
    }

    pub fn group(group: &GroupId) -> Self {
        Self { chat_type: ChatType::Group, target: group.as_str().to_owned() }
    }

    /// Validates `target` as the id of a `chat_type` conversation; errors
    /// name `field` (the id's) or `type_field`.
    pub fn parse(chat_type: Option<ChatType>, target: &str, field: &str, type_field: &str) -> Result<Self> {
        match chat_type {
            Some(ChatType::Single) => Ok(Self::single(&UserId::parse(target, field)?)),
            Some(ChatType::Group) => Ok(Self::group(&GroupId::parse(target, field)?)),
            Some(ChatType::Thread) => Err(Error::bad_request(type_field, "thread conversations are not supported yet")),
            None => Err(Error::bad_request(type_field, "must be SINGLE or GROUP")),
        }
    }

    /// The key its history is stored under, for its user `me`.
    pub fn key(&self, me: &UserId) -> ConversationKey {
        match self.chat_type {
            ChatType::Single => match UserId::parse(&self.target, "target") {
                Ok(peer) => ConversationKey::single(me, &peer),
                Err(_) => ConversationKey::from_stored(format!("s:{me}:{}", self.target)),
            },
            ChatType::Group | ChatType::Thread => ConversationKey::from_stored(format!("g:{}", self.target)),
        }
    }

    /// How `me` names the conversation stored under `key`; `None` if `me` is
    /// not one of a 1:1 key's users or the key is not one this build makes.
    pub fn of(key: &ConversationKey, me: &UserId) -> Option<Self> {
        match key.parts()? {
            KeyParts::Single(a, b) if a == *me => Some(Self::single(&b)),
            KeyParts::Single(a, b) if b == *me => Some(Self::single(&a)),
            KeyParts::Single(..) => None,
            KeyParts::Group(group) => Some(Self::group(&group)),
        }
    }

    /// The group of a group conversation.
    pub fn group_id(&self) -> Option<GroupId> {
        match self.chat_type {
            ChatType::Group => GroupId::parse(&self.target, "target").ok(),
            _ => None,
        }
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.chat_type {
            ChatType::Single => "single",
            ChatType::Group => "group",
            ChatType::Thread => "thread",
        };
        write!(f, "{kind} conversation {}", self.target)
    }
}

/// One entry of a user's conversation list (C1, C3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationItem {
    pub id: ConversationId,
    /// When the user pinned it (ms); 0 if not pinned.
    pub pinned_at: i64,
    /// The newest message the user can still see in it.
    pub last_message: Option<Message>,
    /// Messages of other users the user has not read (and can still see).
    pub unread: u64,
    /// Its time in the list: the newest message's, or when the
    /// conversation began for the user if it has none.
    pub activity: i64,
}

/// A conversation-list request (C1, or C3 with `pinned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub pinned: bool,
    pub page_size: usize,
    /// Empty for the first page, then what the previous page returned.
    pub cursor: String,
}

/// A page of conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationItem>,
    /// Where the next page starts; empty on the last page.
    pub cursor: String,
}

/// Order of a history page (C5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Newest first.
    #[default]
    Up,
    /// Oldest first.
    Down,
}

/// A history request (C5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The page starts after this message (in `direction`); `None`: at the
    /// newest (`Up`) or the oldest (`Down`) message.
    pub cursor: Option<MessageId>,
    pub page_size: usize,
    pub direction: Direction,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// The cursor of the next page (the last message's id); `None` on the
    /// last page.
    pub cursor: Option<MessageId>,
}

/// A one-way delete (C6): what disappears for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Every message stamped before this time (ms).
    Before(i64),
    /// These messages (at most [`MAX_REMOVED_IDS`]).
    Ids(Vec<MessageId>),
}

/// What changed in one of a user's conversations, as the user's devices
/// learn it (the seed's `onMultiDeviceEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiDeviceOperation {
    PinnedConversation,
    UnpinnedConversation,
    /// Messages were deleted one way (C6).
    DeleteRoaming,
    /// The conversation was deleted from the list (C7).
    DeleteConversation,
}

/// A conversation read receipt (the seed's `channel` ack): `from` read
/// everything in the conversation with `to` up to `time`. The reader's other
/// devices get it (their unread count for it is 0), as `onChannelMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAck {
    pub from: UserId,
    /// The peer, or the group.
    pub to: String,
    pub chat_type: ChatType,
    pub time: i64,
}

/// A conversation change, written to the user's log so every device of the
/// user (offline ones on resume) learns it once, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationEvent {
    pub operation: MultiDeviceOperation,
    pub conversation: ConversationId,
    /// When it happened (server ms); for a pin, the pin time.
    pub time: i64,
    /// `DeleteRoaming` by ids: the ids.
    pub message_ids: Vec<MessageId>,
    /// `DeleteRoaming` by time: messages before this (ms); 0 otherwise.
    pub before: i64,
    /// `DeleteConversation`: whether the history went too.
    pub delete_roam: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_name_the_peer_on_each_side() {
        let (ann, ben) = (UserId::parse("ann", "u").unwrap(), UserId::parse("ben", "u").unwrap());
        let key = ConversationId::single(&ben).key(&ann);
        assert_eq!(key, ConversationKey::single(&ann, &ben));
        assert_eq!(ConversationId::of(&key, &ann), Some(ConversationId::single(&ben)));
        assert_eq!(ConversationId::of(&key, &ben), Some(ConversationId::single(&ann)));
        assert_eq!(ConversationId::of(&key, &UserId::parse("cy", "u").unwrap()), None);
        let group = ConversationId::group(&GroupId::from_id(7));
        assert_eq!(ConversationId::of(&group.key(&ann), &ben), Some(group));
    }

    #[test]
    fn page_sizes_and_types_are_checked() {
        assert_eq!(page_size(0, "page_size").unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(50, "page_size").unwrap(), 50);
        let e = page_size(51, "page_size").unwrap_err();
        assert_eq!((e.field.as_deref(), e.message.contains("1-50")), (Some("page_size"), true));
        let e = ConversationId::parse(Some(ChatType::Group), "ann", "target_id", "chat_type").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("target_id"));
        let e = ConversationId::parse(None, "ann", "target_id", "chat_type").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("chat_type"));
    }
}
