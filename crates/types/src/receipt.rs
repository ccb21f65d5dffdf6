//! Receipts and recall (R2–R8): what a reader tells a message's sender, and
//! what every recipient learns when a message is taken back.

use std::time::Duration;

use crate::{ChatType, Error, GroupId, MessageId, Result, UserId};

/// The recall window when the operator sets none (R8).
pub const DEFAULT_RECALL_WINDOW: Duration = Duration::from_secs(120);
/// The longest recall window an operator may set.
pub const MAX_RECALL_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Readers in one page of a group message's reader list (R7): 1 to this.
pub const MAX_READER_PAGE: usize = 100;
/// The reader page size when a request gives none.
pub const DEFAULT_READER_PAGE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// R2: the message reached one of the reader's devices.
    Delivered,
    /// R4, R5: the reader read the message.
    Read,
}

/// A receipt as a reader sends it: for message `message_id` of the
/// conversation with `to` (the peer who sent it, or the group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRequest {
    pub kind: ReceiptKind,
    pub chat_type: ChatType,
    pub to: String,
    pub message_id: MessageId,
}

/// A receipt as the message's sender learns it (`onDeliveredMessage`,
/// `onReadMessage`, and for group messages `onStatisticMessage` on resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub kind: ReceiptKind,
    pub message_id: MessageId,
    pub chat_type: ChatType,
    /// Who sent the receipt (for a group count, the newest reader counted).
    pub from: UserId,
    /// The message's sender for a 1:1 receipt; the group for a group one.
    pub to: String,
    /// When the server took the receipt (ms).
    pub time: i64,
    /// A group message's read count when this was written; 0 for 1:1.
    pub read_count: u64,
}

impl Receipt {
    /// A group message's read count (R6): the newest one of a message
    /// stands for every earlier one.
    pub fn is_group_count(&self) -> bool {
        self.kind == ReceiptKind::Read && self.chat_type == ChatType::Group
    }
}

/// R8: a message taken back. Every recipient's devices get it
/// (`onRecallMessage`), and the message leaves history and previews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recall {
    pub message_id: MessageId,
    pub chat_type: ChatType,
    /// The message's sender and recipient, as the message has them.
    pub from: UserId,
    pub to: String,
    /// Who recalled it: the sender, a group's owner or admin, or the
    /// system.
    pub by: UserId,
    pub time: i64,
}

/// A recall as asked for: message `message_id` of the conversation with
/// `to` (the peer or the group). From the backend API, `from` names the
/// sender of a 1:1 message (a client is always its own side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallRequest {
    pub chat_type: ChatType,
    pub to: String,
    pub message_id: MessageId,
    pub from: Option<UserId>,
}

/// R7: a page of the readers of group message `message_id`, ordered by
/// user id, strictly after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderQuery {
    pub group: GroupId,
    pub message_id: MessageId,
    pub after: Option<UserId>,
    pub limit: usize,
}

/// One member who read a group message, and when (R7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub user: UserId,
    pub time: i64,
}

/// A page of a group message's readers, ordered by user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderPage {
    pub readers: Vec<Reader>,
    /// Where the next page starts (exclusive); `None` on the last page.
    pub cursor: Option<UserId>,
    /// How many members have read the message in all.
    pub read_count: u64,
}

/// A requested reader page size: 0 is the default, 1–100 as given.
pub fn reader_page_size(raw: u32, field: &str) -> Result<usize> {
    match raw as usize {
        0 => Ok(DEFAULT_READER_PAGE),
        n if n <= MAX_READER_PAGE => Ok(n),
        n => Err(Error::bad_request(field, format!("is {n}, page sizes are 1-{MAX_READER_PAGE}"))),
    }
}
