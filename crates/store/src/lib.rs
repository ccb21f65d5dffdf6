//! Domain-level storage: one trait per aggregate (messages, groups, per-user
//! event logs), each with an embedded backend (fjall, single node) and — in
//! the distributed mode — a CQL backend. Services see only these traits.
//!
//! Contract shared by every backend (and checked by [`conformance`]):
//! - a method that returns `Ok` has made its writes durable (the embedded
//!   backend fsyncs with group commit before returning);
//! - a method that returns `Err` has written nothing that a later read can
//!   observe as half-done: multi-row writes are atomic or idempotent to retry.
//!   One exception by design: `UserLog::append` to several users is one
//!   append per user in the CQL backend, so after an `Err` some users may
//!   have the event and get it again on retry (never twice for one call);
//!   clients drop such repeats by message id.

pub mod embedded;
mod leases;

#[cfg(feature = "cql")]
pub mod cql;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_types::{
    ConversationKey, Group, GroupId, GroupMember, GroupRole, LogEvent, Message, MessageId, Reader, Result, SessionId,
    SessionInfo, Subscription, UserId, WebhookEvent,
};

pub use leases::{LocalLeases, NODE_ID_LEASE_PREFIX, claim_node_id};
pub use natter_types::Appended;

/// How long an idempotency record `(sender, client_msg_id)` holds by
/// default: a send with the same client message id within this time of the
/// stored message's timestamp is a duplicate; a later one is a new message.
/// Records are dropped after it, so they do not pile up forever (one per
/// message sent).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether an idempotency record for a message stamped `stored_ms` no longer
/// holds for a message stamped `now_ms` (both server times).
pub(crate) fn idempotency_expired(stored_ms: i64, now_ms: i64, window: Duration) -> bool {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    stored_ms < now_ms.saturating_sub(window_ms)
}

/// Result of inserting a message under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now.
    New,
    /// `(sender, client_msg_id)` was stored before; this is the stored message
    /// and whether its fan-out to the recipients' logs completed.
    Duplicate { message: Message, fanned_out: bool },
}

pub use natter_types::Direction;

/// What [`MessageStore::insert_and_append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The stored message: the one given, or for a duplicate the one stored first.
    pub message: Message,
    pub duplicate: bool,
    /// Where this call appended the message to each recipient's log, in the
    /// order of the recipients; empty when it appended nothing (a duplicate
    /// whose fan-out had completed).
    pub appended: Vec<Appended>,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `message` in its conversation's history together with the
    /// idempotency record `(message.from, message.client_msg_id)`, atomically.
    /// A record holds for the backend's idempotency window after its
    /// message's timestamp ([`DEFAULT_IDEMPOTENCY_WINDOW`]); a message stamped
    /// later than that replaces it and is `New`.
    async fn insert_message(&self, message: &Message) -> Result<Inserted>;

    /// Records that the message's events are in every recipient's log, so a
    /// retry of the same client message id does not fan out again.
    async fn mark_fanned_out(&self, sender: &UserId, client_msg_id: &str) -> Result<()>;

    /// What sending a message stores, durably when it returns `Ok`: the
    /// message with its idempotency record, its event in every recipient's
    /// log (`log`, the same backend's log), and the fanned-out mark.
    ///
    /// When `counted` (C2: every message from a device; from the backend only
    /// when the operator turns it on), the message takes the next position of
    /// its conversation (`Stored::message.pos`; 0 when not counted) and the
    /// conversation's head moves to it; a 1:1 message also gives both users
    /// (not the system) their state of the conversation if they had none, or
    /// brings it back to the list of a user who deleted it (C7); and the
    /// sender's read position moves to it, so one's own messages are never
    /// unread.
    ///
    /// A duplicate whose fan-out was interrupted (a crash or error between
    /// the steps) is appended now; one whose fan-out completed is not
    /// appended again; neither takes a second position.
    async fn insert_and_append(
        &self,
        message: &Message,
        recipients: &[UserId],
        counted: bool,
        log: &dyn UserLog,
    ) -> Result<Stored>;

    async fn get_message(&self, conversation: &ConversationKey, id: MessageId) -> Result<Option<Message>>;

    /// A page of a conversation's history, strictly after (`Down`) or before
    /// (`Up`) `cursor`; `None` starts at the oldest (`Down`) or newest (`Up`).
    async fn history(
        &self,
        conversation: &ConversationKey,
        cursor: Option<MessageId>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Message>>;
}

/// Where a conversation's timeline ends (C1, C2): written by every counted
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationHead {
    /// The newest counted message's position (positions are 1, 2, …).
    pub pos: u64,
    pub last_id: MessageId,
    /// The newest counted message's timestamp.
    pub last_time: i64,
}

/// A user's own state of one conversation. Positions are those of the
/// conversation's timeline ([`Message::pos`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConversation {
    pub conversation: ConversationKey,
    /// When the user's state began (ms): a 1:1 conversation's first message,
    /// or the first change to a group's state.
    pub created_at: i64,
    /// The user has read everything at or below.
    pub read_pos: u64,
    /// Messages at or below this position, and with ids at or below
    /// `cleared_id`, are gone for the user (C6 by time, C7 with deleteRoam).
    pub cleared_pos: u64,
    pub cleared_id: MessageId,
    /// Deleted from the list (C7) when the head was here: listed again once
    /// the head passes it. `None`: listed.
    pub hidden_pos: Option<u64>,
    /// When pinned (ms); 0 if not.
    pub pinned_at: i64,
}

impl UserConversation {
    /// The state of a user who never changed the conversation.
    pub fn new(conversation: ConversationKey, created_at: i64) -> Self {
        Self {
            conversation,
            created_at,
            read_pos: 0,
            cleared_pos: 0,
            cleared_id: MessageId(0),
            hidden_pos: None,
            pinned_at: 0,
        }
    }

    /// Applies a change (what every backend's [`ConversationStore::update`]
    /// does to the stored state).
    pub fn apply(&mut self, change: &ConversationChange) {
        match *change {
            ConversationChange::Read { pos } => self.read_pos = self.read_pos.max(pos),
            ConversationChange::Pin { at } => self.pinned_at = at,
            ConversationChange::Unpin => self.pinned_at = 0,
            ConversationChange::Clear { pos, id } => {
                self.cleared_pos = self.cleared_pos.max(pos);
                self.cleared_id = self.cleared_id.max(id);
            }
            ConversationChange::Hide { pos } => {
                self.hidden_pos = Some(pos);
                self.read_pos = self.read_pos.max(pos);
                self.pinned_at = 0;
            }
        }
    }

    /// Whether the conversation is on the user's list, its head being `head`.
    pub fn listed(&self, head: u64) -> bool {
        self.hidden_pos.is_none_or(|hidden| head > hidden)
    }
}

/// One change to a user's state of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationChange {
    /// Read up to `pos` (the read position never moves back).
    Read {
        pos: u64,
    },
    Pin {
        at: i64,
    },
    Unpin,
    /// Gone for the user at or below `pos` / `id` (never moves back).
    Clear {
        pos: u64,
        id: MessageId,
    },
    /// Off the list until the head passes `pos`; read up to it; unpinned.
    Hide {
        pos: u64,
    },
}

/// Conversation state (C1–C7): each conversation's head, each user's state
/// of each conversation, and the messages a user deleted one way. Heads are
/// moved by [`MessageStore::insert_and_append`]; the rest is written here.
/// A group member has no state of the group's conversation until they
/// change it, send to it or delete from it: a group message writes the
/// group's head and its sender's state, never a row per member.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// The heads of these conversations, in order; `None` for one without a
    /// counted message.
    async fn heads(&self, conversations: &[ConversationKey]) -> Result<Vec<Option<ConversationHead>>>;

    /// Every conversation the user has state of, in no particular order.
    async fn user_conversations(&self, user: &UserId) -> Result<Vec<UserConversation>>;

    async fn user_conversation(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
    ) -> Result<Option<UserConversation>>;

    /// Applies `change` to the user's state of the conversation (made with
    /// `created_at = now` if there is none) and returns the new state. One
    /// change never undoes a concurrent one to another field (a pin does
    /// not move the read position a concurrent send moved).
    async fn update(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        change: ConversationChange,
        now: i64,
    ) -> Result<UserConversation>;

    /// C6: these messages, with their positions, are gone for the user.
    async fn remove_messages(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        messages: &[(MessageId, u64)],
    ) -> Result<()>;

    /// The messages the user deleted in the conversation with ids above
    /// `after`, ascending by id, with their positions.
    async fn removed_messages(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        after: MessageId,
    ) -> Result<Vec<(MessageId, u64)>>;

    /// R8: the message, at its position, is recalled: gone for every user
    /// (history, previews, unread counts). Recalling it again changes
    /// nothing.
    async fn recall(&self, conversation: &ConversationKey, message: MessageId, pos: u64) -> Result<()>;

    /// The recalled messages of the conversation with ids above `after`,
    /// ascending by id, with their positions.
    async fn recalled(&self, conversation: &ConversationKey, after: MessageId) -> Result<Vec<(MessageId, u64)>>;
}

/// Group read receipts (R5–R7): which members read which group message, and
/// when. One receipt is one row whatever the group's size; the count is
/// kept with the rows, exact.
#[async_trait]
pub trait ReceiptStore: Send + Sync + 'static {
    /// `reader` read the message at `time`; a repeated receipt keeps the
    /// first time and is not counted again.
    async fn record_read(
        &self,
        conversation: &ConversationKey,
        message: MessageId,
        reader: &UserId,
        time: i64,
    ) -> Result<()>;

    /// How many members have read the message.
    async fn read_count(&self, conversation: &ConversationKey, message: MessageId) -> Result<u64>;

    /// The message's readers ordered by user id, strictly after `after`.
    async fn readers(
        &self,
        conversation: &ConversationKey,
        message: MessageId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<Reader>>;
}

/// Outcome of adding members under the group's size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersAdded {
    /// Those that were not members before (already-members are skipped).
    pub added: Vec<UserId>,
    pub member_count: u32,
}

#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Creates the group with its initial members (the owner among them).
    /// `CONFLICT` if the id exists.
    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<()>;

    /// The group with its current member count.
    async fn get_group(&self, id: &GroupId) -> Result<Option<Group>>;

    async fn get_member(&self, id: &GroupId, user: &UserId) -> Result<Option<GroupMember>>;

    /// Adds members that are not in yet, all or nothing: `LIMIT_EXCEEDED`
    /// (naming `max_members`) if the group would grow past its maximum.
    async fn add_members(&self, id: &GroupId, members: &[GroupMember]) -> Result<MembersAdded>;

    /// Removes those that are members; returns who was removed.
    async fn remove_members(&self, id: &GroupId, users: &[UserId]) -> Result<Vec<UserId>>;

    /// Changes a current member's role; `NOT_FOUND` if not a member.
    async fn set_role(&self, id: &GroupId, user: &UserId, role: GroupRole) -> Result<()>;

    /// Deletes the group, its members and their membership index entries.
    async fn delete_group(&self, id: &GroupId) -> Result<()>;

    /// Members ordered by user id, strictly after `after`.
    async fn list_members(&self, id: &GroupId, after: Option<&UserId>, limit: usize) -> Result<Vec<GroupMember>>;

    /// Every member's id (the fan-out list).
    async fn member_ids(&self, id: &GroupId) -> Result<Vec<UserId>>;

    /// Groups the user is a member of.
    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>>;
}

/// What a read of a user's log returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// `(seq, event)` in increasing seq order.
    pub events: Vec<(u64, LogEvent)>,
    /// Seq of the newest durable event (0 if none ever).
    pub head: u64,
}

/// Asked for events the log no longer retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorExpired {
    pub requested: u64,
    /// The oldest retained seq.
    pub oldest: u64,
    pub head: u64,
}

/// A user's durable, ordered event log: everything addressed to the user.
/// Seqs are per user, start at 1 and grow by one per event; a read never
/// returns an event that is not durable.
#[async_trait]
pub trait UserLog: Send + Sync + 'static {
    /// Appends one event to each user's log, durably; returns where it
    /// landed per user, in the order of `users`.
    async fn append(&self, users: &[UserId], event: &LogEvent) -> Result<Vec<Appended>>;

    /// Up to `limit` events with seq > `after`. `Err(Ok(CursorExpired))` when
    /// events after `after` were dropped by retention.
    async fn read(&self, user: &UserId, after: u64, limit: usize) -> Result<Result<LogPage, CursorExpired>>;

    /// Seq of the newest durable event, and of the oldest retained (0 if none).
    async fn bounds(&self, user: &UserId) -> Result<(u64, u64)>;

    /// Remembers the highest seq any device of the user has processed: a new
    /// device without a cursor starts there.
    async fn ack(&self, user: &UserId, seq: u64) -> Result<()>;

    async fn acked(&self, user: &UserId) -> Result<u64>;
}

/// Presence subscriptions (kept by subscriber and by target) and each
/// user's stored presence fields. Times are ms since the epoch; `now` is the
/// caller's server clock, so expiry never depends on a client.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Subscribes `subscriber` to each target until `expires_at` (replacing an
    /// earlier expiry). Expired entries are dropped; if more than `cap` remain,
    /// the other subscriptions with the earliest expiry are removed (P2) and
    /// returned.
    async fn subscribe(
        &self,
        subscriber: &UserId,
        targets: &[UserId],
        expires_at: i64,
        cap: usize,
        now: i64,
    ) -> Result<Vec<Subscription>>;

    async fn unsubscribe(&self, subscriber: &UserId, targets: &[UserId]) -> Result<()>;

    /// Live subscriptions ordered by target: `(page, total live)`.
    async fn subscriptions(
        &self,
        subscriber: &UserId,
        now: i64,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Subscription>, usize)>;

    /// Users with a live subscription to `target`.
    async fn subscribers(&self, target: &UserId, now: i64) -> Result<Vec<UserId>>;

    /// Removes the subscription if it still expires at `expires_at` (a
    /// re-subscribe moves it); true if removed.
    async fn remove_expired(&self, subscriber: &UserId, target: &UserId, expires_at: i64) -> Result<bool>;

    /// Every stored subscription as `(subscriber, subscription)`, expired or
    /// not: the expiry sweeper's schedule is rebuilt from it at start.
    async fn all_subscriptions(&self) -> Result<Vec<(UserId, Subscription)>>;

    /// Stores the user's custom description (when `Some`) and change time.
    async fn set_presence(&self, user: &UserId, description: Option<&str>, time: i64) -> Result<()>;

    /// `(description, time of last change)`; empty and 0 if never set.
    async fn get_presence(&self, user: &UserId) -> Result<(String, i64)>;
}

/// The presence webhook's durable outbox: one ordered queue per receiver, so
/// queued calls survive a restart and one slow receiver does not hold up
/// another.
#[async_trait]
pub trait WebhookOutbox: Send + Sync + 'static {
    /// Appends in order, durably.
    async fn push(&self, receiver: &str, events: &[WebhookEvent]) -> Result<()>;

    /// The oldest `limit` queued events with their queue ids.
    async fn peek(&self, receiver: &str, limit: usize) -> Result<Vec<(u64, WebhookEvent)>>;

    /// Drops queued events up to and including `up_to`.
    async fn remove(&self, receiver: &str, up_to: u64) -> Result<()>;
}

/// The live sessions of every user, with the per-user device limit, and the
/// gateways' leases. In memory in the single-node mode (the process holds
/// every socket); in the database in the distributed mode, where several
/// presence processes share it, so every rule below holds across processes.
#[async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    /// Records a new session. If the user then has more than `max_sessions`
    /// (at least 1), the oldest ones are removed and returned: the caller
    /// kicks them. Concurrent calls for one user are serialised, so the
    /// limit holds and each displaced session is returned by one call only.
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>>;

    /// Removes a session; `None` if it was not registered (already kicked,
    /// expired with its gateway, or removed by a concurrent call).
    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<Option<SessionInfo>>;

    /// The user's sessions, oldest first.
    async fn sessions(&self, user: &UserId) -> Result<Vec<SessionInfo>>;

    /// Extends the gateway's lease to `until` (ms since the epoch).
    async fn renew_lease(&self, gateway: &str, until: i64) -> Result<()>;

    /// Removes every gateway whose lease ended before `now`, with its
    /// sessions, and returns those sessions. When several callers run it at
    /// once, each session is returned by exactly one of them.
    async fn expire_leases(&self, now: i64) -> Result<Vec<SessionInfo>>;
}

/// Single node: the sessions open right now, kept on disk so that a start
/// after a crash can announce them offline. (The registry itself is in
/// memory there; in the distributed mode it is in the database and a dead
/// gateway's lease ends its sessions.)
#[async_trait]
pub trait SessionJournal: Send + Sync + 'static {
    /// Records a session as open; durable when it returns.
    async fn opened(&self, session: &SessionInfo) -> Result<()>;

    /// Records sessions as closed. Not necessarily durable: losing this only
    /// announces the session offline once more after a crash.
    async fn closed(&self, sessions: &[SessionInfo]) -> Result<()>;

    /// Every session recorded as open and not closed. Read at start, these
    /// are the previous run's, which ended without closing them; they are
    /// announced offline, then recorded as closed (so at least once).
    async fn open_sessions(&self) -> Result<Vec<SessionInfo>>;
}

/// Named, time-limited, exclusive leases (leadership, node ids): at most one
/// owner holds a name at a time, until it releases it or its ttl runs out
/// without a renewal.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Takes `name` for `owner` for `ttl` if it is free (never taken,
    /// released or expired), or renews it if `owner` already holds it.
    /// `false` if another owner holds it. After `Ok(true)` the lease is held
    /// for at least `ttl` from the moment the call was made; after an error
    /// it may or may not be held.
    async fn acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool>;

    /// Gives `name` up if `owner` holds it (otherwise does nothing).
    async fn release(&self, name: &str, owner: &str) -> Result<()>;
}

/// The storage a Natter node uses, whichever backend.
#[derive(Clone)]
pub struct Stores {
    pub messages: Arc<dyn MessageStore>,
    pub groups: Arc<dyn GroupStore>,
    pub log: Arc<dyn UserLog>,
    pub presence: Arc<dyn PresenceStore>,
    pub outbox: Arc<dyn WebhookOutbox>,
    pub conversations: Arc<dyn ConversationStore>,
    pub receipts: Arc<dyn ReceiptStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}
