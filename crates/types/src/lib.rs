//! Natter's domain vocabulary: ids, chat types, messages, groups, limits and
//! the closed error-code set. No I/O and no protobuf: every other crate speaks
//! these types, and only the edges convert to and from the wire.

mod conversation;
mod error;
mod group;
mod ids;
mod limits;
mod message;
mod presence;
mod receipt;

pub use conversation::{
    ChannelAck, ConversationEvent, ConversationId, ConversationItem, ConversationPage, DEFAULT_PAGE_SIZE, Direction,
    HistoryPage, HistoryQuery, ListQuery, MAX_PAGE_SIZE, MAX_REMOVED_IDS, MultiDeviceOperation, Removal, page_size,
};
pub use error::{Error, ErrorCode, Result};
pub use group::{Group, GroupChange, GroupChangeKind, GroupMember, GroupRole, MemberPage, NewGroup};
pub use ids::{ConversationKey, GroupId, IdGenerator, KeyParts, MessageId, SessionId, UserId};
pub use limits::Limits;
pub use message::{Actor, Appended, ChatType, LogEvent, Message, MessageBody, NewMessage, SendOutcome};
pub use presence::{DeviceStatus, Presence, SessionInfo, SessionStatus, Subscription, SubscriptionPage, WebhookEvent};
pub use receipt::{
    DEFAULT_READER_PAGE, DEFAULT_RECALL_WINDOW, MAX_READER_PAGE, MAX_RECALL_WINDOW, Reader, ReaderPage, ReaderQuery,
    Recall, RecallRequest, Receipt, ReceiptKind, ReceiptRequest, reader_page_size,
};

/// Milliseconds since the Unix epoch by the server's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
