//! The single-node backend: one fjall database in a data directory.
//!
//! Every write is a job for one writer ([`writer`]) that commits the
//! batches of everything queued, fsyncs once, then answers: the R1 rule (ack
//! only what is durable) costs one fsync per round of writers, not per
//! message, and async tasks never block on the journal or the disk. Reads run
//! inline on the caller's task (fjall reads are in-memory or page-cache hits).
//!
//! Sending a message is one job: the message, its idempotency record and its
//! event in every recipient's log are one atomic batch.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use natter_proto::v1;
use natter_types::{
    ConversationKey, Error, Group, GroupId, GroupMember, GroupRole, LogEvent, Message, MessageId, Result, SessionInfo,
    Subscription, UserId, WebhookEvent,
};
use parking_lot::Mutex;
use prost::Message as _;

use crate::{
    Appended, CursorExpired, Direction, GroupStore, Inserted, LogPage, MembersAdded, MessageStore, PresenceStore,
    SessionJournal, Stored, Stores, UserLog, WebhookOutbox,
};

mod dedup_expiry;
mod keeper;
mod member_cache;
mod writer;

use dedup_expiry::DedupExpiry;
use keeper::Keeper;
use member_cache::MemberCache;
use writer::{Round, RoundSend, Writer};

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Events kept per user log; older ones are dropped (a device resuming
    /// from before them is told to resync).
    pub log_retention_events: u64,
    /// Size at which a keyspace's memtable is sealed and flushed, and at
    /// which compactions cut their output tables. fjall records both when it
    /// creates a keyspace, so a change reaches only keyspaces created
    /// afterwards (a new data directory).
    pub memtable_bytes: u64,
    /// How long an idempotency record holds ([`crate::DEFAULT_IDEMPOTENCY_WINDOW`]);
    /// older ones are dropped when their table is compacted.
    pub idempotency_window: Duration,
    /// Users' log heads (and groups' timeline positions) kept in memory at
    /// most, ~150 bytes each. Past it, a quarter of them is dropped between
    /// two writer rounds and read back from disk when next needed, so memory
    /// does not grow with every user who ever got a message.
    pub heads_cached: usize,
}

/// The keyspace of the idempotency records.
const DEDUP: &str = "dedup";

/// Default [`EmbeddedOptions::memtable_bytes`]. fjall's own default is 64 MiB.
/// Writes stall while fjall retires a flushed memtable and while it installs
/// a compaction's result, and the tail grew with the memtable: 1:1 p99 at
/// 10,000 msg/s over 90 s was 240–261 ms at 64 MiB, 91 ms at 16 MiB, 50–70 ms
/// at 8 MiB and 35 ms at 4 MiB; with the memtables freed by the keeper,
/// 127 ms at 64 MiB and 58 ms at 32 MiB over 60 s, against 21–43 ms at 8 MiB
/// (docs/PERFORMANCE.md). Throughput and fan-out did not change measurably.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 8 << 20;

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            log_retention_events: 10_000,
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            idempotency_window: crate::DEFAULT_IDEMPOTENCY_WINDOW,
            heads_cached: 1 << 18,
        }
    }
}

/// Every keyspace of the embedded store; cheap to clone. Dropping the last
/// clone waits for a running write round to finish.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// Frees flushed memtables off fjall's lock; held for its thread, which
    /// stops with the last clone. First, so that it lets go of its keyspace
    /// handles before the database can close.
    #[cfg_attr(not(test), expect(dead_code, reason = "held for its thread"))]
    keeper: Arc<Keeper>,
    inner: Arc<Inner>,
    writer: Arc<Writer>,
}

struct Inner {
    db: Database,
    messages: Keyspace,
    dedup: Keyspace,
    groups: Keyspace,
    members: Keyspace,
    user_groups: Keyspace,
    log: Keyspace,
    log_meta: Keyspace,
    /// Each group conversation's timeline (`conversation \0 pos_be` → the
    /// entry): what members' open group runs read.
    timeline: Keyspace,
    subs: Keyspace,
    subs_by_target: Keyspace,
    presence: Keyspace,
    outbox: Keyspace,
    /// Sessions open now (`user \0 session` → SessionInfo), for [`SessionJournal`].
    sessions: Keyspace,
    options: EmbeddedOptions,
    /// Last queue id per webhook receiver, loaded lazily (writer only).
    outbox_heads: Mutex<HashMap<String, u64>>,
    /// Shared by the writer (which alone moves `assigned`, `oldest` and,
    /// after each fsync, `durable`) and readers (which stop at `durable`).
    log_heads: Mutex<UserMap<LogHead>>,
    /// Last position assigned per group timeline, loaded lazily (writer only).
    timeline_heads: Mutex<HashMap<Arc<str>, u64>>,
    /// Member ids of recently used groups; see [`EmbeddedStore::write_members`].
    member_cache: MemberCache,
}

impl Inner {
    fn keyspaces(&self) -> [&Keyspace; 13] {
        [
            &self.messages,
            &self.dedup,
            &self.groups,
            &self.members,
            &self.user_groups,
            &self.log,
            &self.log_meta,
            &self.timeline,
            &self.subs,
            &self.subs_by_target,
            &self.presence,
            &self.outbox,
            &self.sessions,
        ]
    }
}

/// Maps by user id on the delivery path, where a group send looks up every
/// member several times: foldhash, not SipHash (randomly seeded per process).
type UserMap<V> = foldhash::HashMap<UserId, V>;

#[derive(Debug, Clone)]
struct LogHead {
    /// Last seq assigned (possibly not yet durable).
    assigned: u64,
    /// Last seq known durable; reads stop here.
    durable: u64,
    /// Oldest retained seq (`assigned + 1` when the log is empty).
    oldest: u64,
    /// First and last seq of the oldest row still stored, once retention
    /// needed it (`None`: not looked up yet; last [`HOLDS_NEWEST`]: it holds
    /// the newest entry, and may be an open run still growing).
    first_row: Option<(u64, u64)>,
    /// The user's newest stored row is an open group run: the log grows with
    /// that group's timeline without a row per entry.
    open: Option<OpenRun>,
}

/// The end of a cached oldest row that also holds the log's newest entry.
const HOLDS_NEWEST: u64 = u64::MAX;

/// Where an open group run starts: at the user's `seq`, the timeline's `pos`.
#[derive(Debug, Clone)]
struct OpenRun {
    conversation: Arc<str>,
    seq: u64,
    pos: u64,
}

impl OpenRun {
    /// Whether the user's entry at `seq` being the timeline's `pos` is what
    /// this run already says it is.
    fn covers(&self, at: &TimelinePos, seq: u64) -> bool {
        *self.conversation == *at.conversation && seq.checked_sub(self.seq) == at.pos.checked_sub(self.pos)
    }
}

/// An entry's position in its group's timeline.
#[derive(Debug, Clone)]
pub(super) struct TimelinePos {
    conversation: Arc<str>,
    pos: u64,
}

/// One user's log entries of a writer round: consecutive seqs from `first`.
pub(super) struct Run {
    first: u64,
    entries: Vec<fjall::Slice>,
    /// Set while the entries are consecutive positions of one group's
    /// timeline, from this one: the row can be a group run.
    timeline: Option<TimelinePos>,
    /// The user's head before the round, to put back if its rows fail.
    before: LogHead,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn storage_err(e: impl std::fmt::Display) -> Error {
    tracing::error!(error = %e, "embedded store failure");
    Error::unavailable(format!("storage: {e}"))
}

fn key2(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    k
}

/// Smallest key greater than every key starting with `a` + 0.
fn prefix_end(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(1);
    k
}

fn seq_of(key: &[u8]) -> u64 {
    let tail = key.len().saturating_sub(8);
    key.get(tail..).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes).unwrap_or(0)
}

fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::internal(format!("corrupt stored record: {e}")))
}

impl EmbeddedStore {
    pub fn open(path: &Path, options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(storage_err)?;
        // One background worker for flushes and compactions. With more,
        // fjall 3.1's worker 0 hands every compaction request back to the
        // queue and takes it again, a busy loop for as long as another worker
        // compacts: ~11% of the server's CPU in the 1000-member fan-out
        // profile, and that run ~8% faster without it (docs/PERFORMANCE.md).
        let expiry = DedupExpiry::factory(options.idempotency_window);
        let db = Database::builder(path)
            .worker_threads(1)
            .with_compaction_filter_factories(Arc::new(move |keyspace| (keyspace == DEDUP).then(|| expiry.clone())))
            .open()
            .map_err(storage_err)?;
        let memtable = options.memtable_bytes;
        // Compactions write tables of a memtable's size, not fjall's 64 MiB:
        // a compaction syncs its last table while it holds the keyspace's
        // version lock, which every write waits for, and a 64 MiB sync held
        // writes back tens of ms (docs/PERFORMANCE.md). fjall records the
        // size with the keyspace, as it does the memtable's.
        let compaction = Arc::new(fjall::compaction::Leveled::default().with_table_target_size(memtable));
        let ks = |name: &str| {
            let create =
                || KeyspaceCreateOptions::default().max_memtable_size(memtable).compaction_strategy(compaction.clone());
            db.keyspace(name, create).map_err(storage_err)
        };
        let inner = Inner {
            messages: ks("messages")?,
            dedup: ks(DEDUP)?,
            groups: ks("groups")?,
            members: ks("members")?,
            user_groups: ks("user_groups")?,
            log: ks("user_log")?,
            log_meta: ks("user_log_meta")?,
            timeline: ks("group_log")?,
            subs: ks("presence_subs")?,
            subs_by_target: ks("presence_subs_by_target")?,
            presence: ks("presence")?,
            outbox: ks("webhook_outbox")?,
            sessions: ks("open_sessions")?,
            db,
            options,
            outbox_heads: Mutex::new(HashMap::new()),
            log_heads: Mutex::new(UserMap::default()),
            timeline_heads: Mutex::new(HashMap::new()),
            member_cache: MemberCache::new(),
        };
        let keeper = Arc::new(Keeper::start(inner.keyspaces().into_iter().cloned().collect()).map_err(storage_err)?);
        let inner = Arc::new(inner);
        let writer = Arc::new(Writer::new(inner.clone()));
        Ok(Self { keeper, inner, writer })
    }

    pub fn stores(&self) -> Stores {
        Stores {
            messages: Arc::new(self.clone()),
            groups: Arc::new(self.clone()),
            log: Arc::new(self.clone()),
            presence: Arc::new(self.clone()),
            outbox: Arc::new(self.clone()),
        }
    }

    /// Makes every write so far durable (used on shutdown).
    pub async fn sync_all(&self) -> Result<()> {
        self.writer
            .write(|round| {
                round.sync();
                Ok(())
            })
            .await
    }
}

// ---------------------------------------------------------------- messages

impl Inner {
    /// A message that another record (dedup, log entry) says is stored.
    fn referenced_message(&self, conversation: &str, id: u64, by: &str) -> Result<Message> {
        let stored = self
            .messages
            .get(key2(conversation, &id.to_be_bytes()))
            .map_err(storage_err)?
            .ok_or_else(|| Error::internal(format!("{by} without its message")))?;
        Ok(decode::<v1::Message>(&stored)?.try_into()?)
    }

    /// The message a dedup record points at.
    fn deduplicated(&self, record: &v1::DedupRecord) -> Result<Message> {
        self.referenced_message(&record.conversation, record.msg_id, "dedup record")
    }

    fn dedup_record(&self, key: &[u8]) -> Result<Option<v1::DedupRecord>> {
        self.dedup.get(key).map_err(storage_err)?.map(|bytes| decode(&bytes)).transpose()
    }

    /// Adds the message and its idempotency record to `batch`.
    fn stage_message(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        message: &Message,
        dedup_key: Vec<u8>,
        fanned_out: bool,
    ) {
        let (key, value) = message_row(message);
        batch.insert(&self.messages, key, value);
        batch.insert(&self.dedup, dedup_key, dedup_record_of(message, fanned_out).encode_to_vec());
    }
}

/// The message's key and value in `messages`.
fn message_row(message: &Message) -> (Vec<u8>, Vec<u8>) {
    let key = key2(message.conversation().as_str(), &message.id.0.to_be_bytes());
    (key, v1::Message::from(message).encode_to_vec())
}

fn dedup_record_of(message: &Message, fanned_out: bool) -> v1::DedupRecord {
    v1::DedupRecord {
        msg_id: message.id.0,
        conversation: message.conversation().as_str().to_owned(),
        timestamp: message.timestamp,
        fanned_out,
    }
}

impl Round<'_> {
    /// The send's idempotency record, as this round has it so far, if it
    /// still holds for a message stamped `at_ms` (the idempotency window;
    /// the compaction filter drops expired records only eventually).
    fn dedup_record(&self, key: &[u8], at_ms: i64) -> Result<Option<v1::DedupRecord>> {
        let record = match self.sends.get(key) {
            Some(send) => Some(send.record.clone()),
            None => self.inner.dedup_record(key)?,
        };
        let window = self.inner.options.idempotency_window;
        Ok(record.filter(|r| !crate::idempotency_expired(r.timestamp, at_ms, window)))
    }

    /// The message an idempotency record found by [`dedup_record`] points
    /// at, which may be a send of this round, not written yet.
    fn deduplicated(&self, key: &[u8], record: &v1::DedupRecord) -> Result<Message> {
        match self.sends.get(key).and_then(|send| send.message.as_ref()) {
            Some((_, value)) => Ok(decode::<v1::Message>(value)?.try_into()?),
            None => self.inner.deduplicated(record),
        }
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn insert_message(&self, message: &Message) -> Result<Inserted> {
        let message = message.clone();
        self.writer
            .write(move |round| {
                let inner = round.inner;
                let dedup_key = key2(message.from.as_str(), message.client_msg_id.as_bytes());
                if let Some(record) = round.dedup_record(&dedup_key, message.timestamp)? {
                    // Answered after this round's fsync, which covers the
                    // original if it is still in flight.
                    return Ok(Inserted::Duplicate {
                        message: round.deduplicated(&dedup_key, &record)?,
                        fanned_out: record.fanned_out,
                    });
                }
                let mut batch = inner.db.batch();
                inner.stage_message(&mut batch, &message, dedup_key, false);
                round.commit(batch)?;
                Ok(Inserted::New)
            })
            .await
    }

    async fn mark_fanned_out(&self, sender: &UserId, client_msg_id: &str) -> Result<()> {
        let key = key2(sender.as_str(), client_msg_id.as_bytes());
        // Not awaiting the fsync on purpose: losing the mark only repeats a
        // fan-out, which clients absorb by deduplicating on the message id.
        self.writer
            .write_unsynced(move |round| {
                let inner = round.inner;
                let Some(mut record) = round.dedup_record(&key, natter_types::now_ms())? else {
                    return Err(Error::not_found("no such client message id"));
                };
                record.fanned_out = true;
                let mut batch = inner.db.batch();
                batch.insert(&inner.dedup, key, record.encode_to_vec());
                round.commit(batch)
            })
            .await
    }

    /// One job and one fsync: the message, its idempotency record and the
    /// recipients' log entries are written by the round's rows batch, one
    /// atomic batch before the fsync.
    async fn insert_and_append(&self, message: &Message, recipients: &[UserId], _log: &dyn UserLog) -> Result<Stored> {
        let message = message.clone();
        let users = recipients.to_vec();
        self.writer
            .write(move |round| {
                let inner = round.inner;
                let dedup_key = key2(message.from.as_str(), message.client_msg_id.as_bytes());
                let unfinished = match round.dedup_record(&dedup_key, message.timestamp)? {
                    Some(record) if record.fanned_out => {
                        let message = round.deduplicated(&dedup_key, &record)?;
                        return Ok(Stored { message, duplicate: true, appended: Vec::new() });
                    }
                    // Stored, but its fan-out never written (`insert_message`
                    // alone, or a crash between an older version's two
                    // batches): finish it.
                    Some(record) => Some(record),
                    None => None,
                };
                round.load_heads(&users)?;
                let (message, duplicate, send) = match unfinished {
                    Some(mut record) => {
                        tracing::info!(id = record.msg_id, "completing interrupted fan-out on retry");
                        let stored = inner.deduplicated(&record)?;
                        record.fanned_out = true;
                        (stored, true, RoundSend { record, message: None })
                    }
                    None => {
                        let send =
                            RoundSend { record: dedup_record_of(&message, true), message: Some(message_row(&message)) };
                        (message, false, send)
                    }
                };
                let entry = v1::StoredLogEntry {
                    kind: Some(v1::stored_log_entry::Kind::MessageRef(v1::MessageRef {
                        conversation: message.conversation().as_str().to_owned(),
                        msg_id: message.id.0,
                    })),
                    ..Default::default()
                };
                let entry: fjall::Slice = entry.encode_to_vec().into();
                // A retry completing an interrupted fan-out stays out of the
                // timeline: only new messages go in, in the order they are sent.
                let at = match (&send.message, message.chat_type) {
                    (Some(_), natter_types::ChatType::Group) => round.timeline_slot(&message, &users, &entry)?,
                    _ => None,
                };
                let appended = round.stage_log(users, entry, at.as_ref());
                round.sends.insert(dedup_key, send);
                Ok(Stored { message, duplicate, appended })
            })
            .await
    }

    async fn get_message(&self, conversation: &ConversationKey, id: MessageId) -> Result<Option<Message>> {
        let raw = self.inner.messages.get(key2(conversation.as_str(), &id.0.to_be_bytes())).map_err(storage_err)?;
        raw.map(|bytes| Ok(decode::<v1::Message>(&bytes)?.try_into()?)).transpose()
    }

    async fn history(
        &self,
        conversation: &ConversationKey,
        cursor: Option<MessageId>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let conv = conversation.as_str();
        let start = key2(conv, &[]);
        let end = prefix_end(conv);
        let cursor_key = cursor.map(|c| key2(conv, &c.0.to_be_bytes()));
        let range = match (&cursor_key, direction) {
            (Some(c), Direction::Up) => (Bound::Included(start), Bound::Excluded(c.clone())),
            (Some(c), Direction::Down) => (Bound::Excluded(c.clone()), Bound::Excluded(end)),
            (None, _) => (Bound::Included(start), Bound::Excluded(end)),
        };
        let iter = self.inner.messages.range::<Vec<u8>, _>(range);
        let decode_item = |item: fjall::Guard| -> Result<Message> {
            let (_, value) = item.into_inner().map_err(storage_err)?;
            Ok(decode::<v1::Message>(&value)?.try_into()?)
        };
        match direction {
            Direction::Up => iter.rev().take(limit).map(decode_item).collect(),
            Direction::Down => iter.take(limit).map(decode_item).collect(),
        }
    }
}

// ------------------------------------------------------------------ groups

impl Inner {
    fn load_group(&self, id: &GroupId) -> Result<Option<v1::Group>> {
        let raw = self.groups.get(id.as_str()).map_err(storage_err)?;
        raw.map(|bytes| decode::<v1::GroupRecord>(&bytes).map(|r| r.group.unwrap_or_default())).transpose()
    }

    fn put_group(&self, batch: &mut fjall::OwnedWriteBatch, group: v1::Group) {
        let id = group.id.clone();
        batch.insert(&self.groups, id, v1::GroupRecord { group: Some(group) }.encode_to_vec());
    }

    fn put_member(&self, batch: &mut fjall::OwnedWriteBatch, id: &GroupId, member: &GroupMember) {
        batch.insert(
            &self.members,
            key2(id.as_str(), member.user_id.as_str().as_bytes()),
            v1::GroupMember::from(member).encode_to_vec(),
        );
        batch.insert(&self.user_groups, key2(member.user_id.as_str(), id.as_str().as_bytes()), Vec::new());
    }
}

fn decode_member(bytes: &[u8]) -> Result<GroupMember> {
    let m: v1::GroupMember = decode(bytes)?;
    Ok(GroupMember {
        user_id: UserId::parse(&m.user_id, "member")?,
        role: natter_proto::group_role(m.role)?,
        joined_at: m.joined_at,
    })
}

impl EmbeddedStore {
    /// One batch built and committed by the writer; durable on `Ok`.
    async fn write_batch<T: Send + 'static>(
        &self,
        build: impl FnOnce(&Inner, &mut fjall::OwnedWriteBatch) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer
            .write(move |round| {
                let mut batch = round.inner.db.batch();
                let value = build(round.inner, &mut batch)?;
                round.commit(batch).map(|()| value)
            })
            .await
    }

    /// [`write_batch`](Self::write_batch) for a batch that may change group
    /// `id`'s members. `build` also returns the members it removes: their
    /// open runs on the group's timeline are closed in the same batch, after
    /// the rows the round staged so far (which those runs may cover) are
    /// written. The cached member list is dropped once the batch is visible,
    /// whether or not the commit succeeded, in the writer's job: a caller
    /// that goes away once the job ran must not skip it.
    async fn write_members<T: Send + 'static>(
        &self,
        id: GroupId,
        build: impl FnOnce(&Inner, &mut fjall::OwnedWriteBatch) -> Result<(T, Vec<UserId>)> + Send + 'static,
    ) -> Result<T> {
        self.writer
            .write(move |round| {
                round.flush_rows()?;
                let inner = round.inner;
                let mut batch = inner.db.batch();
                let (value, leaving) = build(inner, &mut batch)?;
                let closed = inner.close_group_runs(&mut batch, &id, &leaving)?;
                let commit = round.commit(batch);
                inner.member_cache.invalidate(&id);
                commit?;
                inner.runs_closed(&closed);
                Ok(value)
            })
            .await
    }
}

fn group_not_found(id: &GroupId) -> Error {
    Error::not_found(format!("group {id} does not exist"))
}

#[async_trait]
impl GroupStore for EmbeddedStore {
    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<()> {
        let (group, members) = (group.clone(), members.to_vec());
        self.write_members(group.id.clone(), move |inner, batch| {
            if inner.load_group(&group.id)?.is_some() {
                return Err(Error::new(natter_types::ErrorCode::Conflict, format!("group {} exists", group.id)));
            }
            let mut record = v1::Group::from(&group);
            record.member_count = members.len() as u32;
            inner.put_group(batch, record);
            for m in &members {
                inner.put_member(batch, &group.id, m);
            }
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn get_group(&self, id: &GroupId) -> Result<Option<Group>> {
        self.inner.load_group(id)?.map(|g| Ok(g.try_into()?)).transpose()
    }

    async fn get_member(&self, id: &GroupId, user: &UserId) -> Result<Option<GroupMember>> {
        let raw = self.inner.members.get(key2(id.as_str(), user.as_str().as_bytes())).map_err(storage_err)?;
        raw.map(|b| decode_member(&b)).transpose()
    }

    async fn add_members(&self, id: &GroupId, members: &[GroupMember]) -> Result<MembersAdded> {
        let (id, members) = (id.clone(), members.to_vec());
        self.write_members(id.clone(), move |inner, batch| {
            let id = &id;
            let mut outcome = MembersAdded { added: Vec::new(), member_count: 0 };
            let mut group = inner.load_group(id)?.ok_or_else(|| group_not_found(id))?;
            let mut seen = std::collections::HashSet::new();
            for m in &members {
                let key = key2(id.as_str(), m.user_id.as_str().as_bytes());
                if seen.insert(&m.user_id) && !inner.members.contains_key(&key).map_err(storage_err)? {
                    outcome.added.push(m.user_id.clone());
                    inner.put_member(batch, id, m);
                }
            }
            let count = group.member_count as usize + outcome.added.len();
            if count > group.max_members as usize {
                return Err(Error::limit(
                    "max_members",
                    format!(
                        "group {id} has {} members, adding {} would pass its limit of {}",
                        group.member_count,
                        outcome.added.len(),
                        group.max_members
                    ),
                ));
            }
            group.member_count = count as u32;
            outcome.member_count = group.member_count;
            inner.put_group(batch, group);
            Ok((outcome, Vec::new()))
        })
        .await
    }

    async fn remove_members(&self, id: &GroupId, users: &[UserId]) -> Result<Vec<UserId>> {
        let (id, users) = (id.clone(), users.to_vec());
        self.write_members(id.clone(), move |inner, batch| {
            let mut removed = Vec::new();
            let mut group = inner.load_group(&id)?.ok_or_else(|| group_not_found(&id))?;
            for user in users {
                let key = key2(id.as_str(), user.as_str().as_bytes());
                if !removed.contains(&user) && inner.members.contains_key(&key).map_err(storage_err)? {
                    batch.remove(&inner.members, key);
                    batch.remove(&inner.user_groups, key2(user.as_str(), id.as_str().as_bytes()));
                    removed.push(user);
                }
            }
            group.member_count = group.member_count.saturating_sub(removed.len() as u32);
            inner.put_group(batch, group);
            Ok((removed.clone(), removed))
        })
        .await
    }

    async fn set_role(&self, id: &GroupId, user: &UserId, role: GroupRole) -> Result<()> {
        let (id, user) = (id.clone(), user.clone());
        self.write_batch(move |inner, batch| {
            let key = key2(id.as_str(), user.as_str().as_bytes());
            let raw = inner.members.get(&key).map_err(storage_err)?;
            let mut member = match raw {
                Some(bytes) => decode_member(&bytes)?,
                None => {
                    return Err(Error::not_found(format!("{user} is not a member of group {id}")));
                }
            };
            member.role = role;
            inner.put_member(batch, &id, &member);
            if role == GroupRole::Owner {
                let mut group = inner.load_group(&id)?.ok_or_else(|| group_not_found(&id))?;
                group.owner = user.to_string();
                inner.put_group(batch, group);
            }
            Ok(())
        })
        .await
    }

    async fn delete_group(&self, id: &GroupId) -> Result<()> {
        let id = id.clone();
        self.write_members(id.clone(), move |inner, batch| {
            if inner.load_group(&id)?.is_none() {
                return Err(group_not_found(&id));
            }
            let mut members = Vec::new();
            for item in inner.members.prefix(key2(id.as_str(), &[])) {
                let (key, _) = item.into_inner().map_err(storage_err)?;
                let raw = std::str::from_utf8(&key[id.as_str().len() + 1..]).map_err(storage_err)?;
                let user = UserId::parse(raw, "member")?;
                batch.remove(&inner.user_groups, key2(user.as_str(), id.as_str().as_bytes()));
                batch.remove(&inner.members, key);
                members.push(user);
            }
            batch.remove(&inner.groups, id.as_str());
            Ok(((), members))
        })
        .await
    }

    async fn list_members(&self, id: &GroupId, after: Option<&UserId>, limit: usize) -> Result<Vec<GroupMember>> {
        let lower = match after {
            Some(a) => Bound::Excluded(key2(id.as_str(), a.as_str().as_bytes())),
            None => Bound::Included(key2(id.as_str(), &[])),
        };
        self.inner
            .members
            .range::<Vec<u8>, _>((lower, Bound::Excluded(prefix_end(id.as_str()))))
            .take(limit)
            .map(|item| decode_member(&item.into_inner().map_err(storage_err)?.1))
            .collect()
    }

    async fn member_ids(&self, id: &GroupId) -> Result<Vec<UserId>> {
        let read = || suffix_ids(&self.inner.members, id.as_str(), |raw| UserId::parse(raw, "member"));
        Ok(self.inner.member_cache.load(id, read)?.to_vec())
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        suffix_ids(&self.inner.user_groups, user.as_str(), |raw| GroupId::parse(raw, "group"))
    }
}

/// The ids that follow `prefix \0` in the keys under it (an index keyspace).
fn suffix_ids<T>(keyspace: &Keyspace, prefix: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let skip = prefix.len() + 1;
    keyspace
        .prefix(key2(prefix, &[]))
        .map(|item| {
            let key = item.key().map_err(storage_err)?;
            let raw = std::str::from_utf8(key.get(skip..).unwrap_or_default()).map_err(storage_err)?;
            parse(raw)
        })
        .collect()
}

// ---------------------------------------------------------------- user log
//
// A row of `user_log` holds one entry or a run of consecutive ones (all that
// one writer round appended to that user), keyed by its first seq. Rows
// follow each other without gaps, so the row after one ending at `n` is the
// one keyed `n + 1`.
//
// A row can instead be a group run: a stretch of a group's timeline
// (`group_log`, one row per message sent to the group). While it is the
// user's newest row it is open and grows with the timeline, so a member
// receiving only that group's messages costs no row per message: the
// timeline's row is shared by every member. It ends where the user's next
// row starts, or, when the user leaves the group, is closed with its count.
//
// What keeps an open run true: the timeline only grows by messages whose
// recipients are the group's members at that moment (checked in the writer,
// where member changes are serialized), and a member's open run is closed in
// the batch that removes them. So everyone with an open run on a group gets
// every entry its timeline gains, and their log heads move with it.

/// A stored row, decoded.
enum Row {
    Entries(Vec<v1::StoredLogEntry>),
    Group(v1::GroupRun),
}

fn decode_row(value: &[u8]) -> Result<Row> {
    let row: v1::StoredLogEntry = decode(value)?;
    Ok(match row.group_run {
        Some(run) => Row::Group(run),
        None if row.run.is_empty() => Row::Entries(vec![row]),
        None => Row::Entries(row.run),
    })
}

/// A row's last seq when it does not depend on the rows after it: `None`
/// for an open group run.
fn row_fixed_last(first: u64, row: &Row) -> Option<u64> {
    match row {
        Row::Entries(entries) => Some(first + (entries.len() as u64).max(1) - 1),
        Row::Group(run) if run.count > 0 => Some(first + run.count - 1),
        Row::Group(_) => None,
    }
}

/// A run's row: a single entry as it is, several as a `run`.
fn encode_row(entries: &[fjall::Slice]) -> fjall::Slice {
    use prost::encoding::{WireType, encode_key, encode_varint};
    match entries {
        [one] => one.clone(),
        _ => {
            // `StoredLogEntry.run` (field 4) is a repeated message: each entry,
            // already encoded, behind its key and length.
            let mut row = Vec::with_capacity(entries.iter().map(|e| e.len() + 4).sum());
            for entry in entries {
                encode_key(4, WireType::LengthDelimited, &mut row);
                encode_varint(entry.len() as u64, &mut row);
                row.extend_from_slice(entry);
            }
            row.into()
        }
    }
}

fn encode_group_run(conversation: &str, first: u64, count: u64) -> Vec<u8> {
    let run = v1::GroupRun { conversation: conversation.to_owned(), first, count };
    v1::StoredLogEntry { group_run: Some(run), ..Default::default() }.encode_to_vec()
}

impl Inner {
    fn head_of(&self, heads: &mut UserMap<LogHead>, user: &UserId) -> Result<LogHead> {
        self.head_entry(heads, user).map(|head| head.clone())
    }

    /// The user's head in `heads`, loaded from the log the first time.
    fn head_entry<'h>(&self, heads: &'h mut UserMap<LogHead>, user: &UserId) -> Result<&'h mut LogHead> {
        // Two lookups on a miss (once per user), none of the key's clone on a hit.
        if heads.contains_key(user) {
            return heads.get_mut(user).ok_or_else(|| Error::internal("log head vanished"));
        }
        let log = &self.log;
        let prefix = key2(user.as_str(), &[]);
        let last = log.prefix(&prefix).next_back().map(|g| g.into_inner().map_err(storage_err)).transpose()?;
        let head = match last {
            Some((key, value)) => {
                let first_seq = seq_of(&key);
                let row = decode_row(&value)?;
                let (last, open) = match (row_fixed_last(first_seq, &row), row) {
                    (Some(last), _) => (last, None),
                    (None, Row::Group(run)) => {
                        // Open: as far as its timeline goes. A user whose open
                        // run the writer is extending right now is a recipient
                        // of that send, loaded by its job before the timeline
                        // grew, so what is stored here is what was assigned.
                        let stored = self.timeline_last(&run.conversation)?;
                        let open = OpenRun { conversation: run.conversation.into(), seq: first_seq, pos: run.first };
                        (first_seq + stored.saturating_sub(open.pos), Some(open))
                    }
                    (None, Row::Entries(_)) => return Err(Error::internal("log row without a length")),
                };
                let first = log.prefix(&prefix).next().map(|g| g.key().map_err(storage_err)).transpose()?;
                // What retention kept before a restart, not the start of a
                // row that straddled it (an open run can be long).
                let retention = self.options.log_retention_events.max(1);
                let oldest = first.map_or(last + 1, |k| seq_of(&k)).max((last + 1).saturating_sub(retention));
                LogHead { assigned: last, durable: last, oldest, first_row: None, open }
            }
            // Retention always keeps the newest event, so an empty log is a new one.
            None => LogHead { assigned: 0, durable: 0, oldest: 1, first_row: None, open: None },
        };
        Ok(heads.entry(user.clone()).or_insert(head))
    }

    fn head(&self, user: &UserId) -> Result<LogHead> {
        self.head_of(&mut self.log_heads.lock(), user)
    }

    /// The last position stored in a group's timeline (0: none).
    fn timeline_last(&self, conversation: &str) -> Result<u64> {
        let last = self.timeline.prefix(key2(conversation, &[])).next_back();
        Ok(last.map(|g| g.key().map_err(storage_err)).transpose()?.map_or(0, |k| seq_of(&k)))
    }

    /// First and last seq of a stored row of the user. An open group run
    /// ends before the next stored row, or else at `stored_end` (where the
    /// stored rows end: before the row a round is writing, or at the head).
    fn stored_span(&self, user: &UserId, key: &[u8], value: &[u8], stored_end: u64) -> Result<(u64, u64)> {
        let first = seq_of(key);
        let row = decode_row(value)?;
        if let Some(last) = row_fixed_last(first, &row) {
            return Ok((first, last));
        }
        let after = key2(user.as_str(), &(first + 1).to_be_bytes());
        let next = self.log.range(after..prefix_end(user.as_str())).next();
        let last = match next {
            Some(item) => seq_of(&item.key().map_err(storage_err)?) - 1,
            None => stored_end,
        };
        Ok((first, last))
    }

    /// First and last seq of the user's oldest row: stored, or `new_row`
    /// (the bounds of the row being written) if none is.
    fn first_row(&self, user: &UserId, new_row: Option<(u64, u64)>, stored_end: u64) -> Result<(u64, u64)> {
        match self.log.prefix(key2(user.as_str(), &[])).next() {
            Some(item) => {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                self.stored_span(user, &key, &value, stored_end)
            }
            None => new_row.ok_or_else(|| Error::internal("a log with entries but no rows")),
        }
    }

    /// The row after the one ending at `last`: stored, or `new_row`.
    fn row_after(
        &self,
        user: &UserId,
        last: u64,
        new_row: Option<(u64, u64)>,
        stored_end: u64,
    ) -> Result<Option<(u64, u64)>> {
        let first = last + 1;
        if let Some(row) = new_row
            && row.0 == first
        {
            return Ok(Some(row));
        }
        let key = key2(user.as_str(), &first.to_be_bytes());
        match self.log.get(&key).map_err(storage_err)? {
            Some(value) => Ok(Some(self.stored_span(user, &key, &value, stored_end)?)),
            None => Ok(None),
        }
    }

    /// Adds the user's run to `batch` as one row, an open group run if its
    /// entries are a stretch of one timeline, then applies retention
    /// ([`trim`](Self::trim)).
    fn stage_row(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        user: &UserId,
        run: &Run,
        head: &mut LogHead,
    ) -> Result<()> {
        let key = key2(user.as_str(), &run.first.to_be_bytes());
        head.open = match &run.timeline {
            Some(at) => {
                batch.insert(&self.log, key, encode_group_run(&at.conversation, at.pos, 0));
                Some(OpenRun { conversation: at.conversation.clone(), seq: run.first, pos: at.pos })
            }
            None => {
                batch.insert(&self.log, key, encode_row(&run.entries));
                None
            }
        };
        self.trim(batch, user, head, Some(run.bounds()))
    }

    /// Moves the user's oldest kept seq up to what retention keeps, and adds
    /// to `batch` the removal of the rows wholly before it (a row across it
    /// stays, and reads skip its expired entries). `new_row`: the bounds of
    /// the row this round writes after every stored row; without one, the
    /// newest stored row (an open run growing) ends at the head.
    fn trim(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        user: &UserId,
        head: &mut LogHead,
        new_row: Option<(u64, u64)>,
    ) -> Result<()> {
        let retention = self.options.log_retention_events.max(1);
        let oldest = head.oldest.max((head.assigned + 1).saturating_sub(retention));
        if oldest == head.oldest {
            return Ok(());
        }
        let stored_end = new_row.map_or(head.assigned, |(first, _)| first - 1);
        // A cached oldest row that held the newest entry (an open run may
        // have grown since) is looked up again once a row follows it; until
        // then nothing is behind it, and an open run costs no read here.
        let cached = head.first_row.filter(|&(_, last)| last != HOLDS_NEWEST || new_row.is_none());
        let mut row = match cached {
            Some(row) => Some(row),
            None => Some(self.first_row(user, new_row, stored_end)?),
        };
        while let Some((first, last)) = row
            && last < oldest
        {
            batch.remove(&self.log, key2(user.as_str(), &first.to_be_bytes()));
            row = self.row_after(user, last, new_row, stored_end)?;
        }
        head.first_row = row.map(|(first, last)| (first, if last >= head.assigned { HOLDS_NEWEST } else { last }));
        head.oldest = oldest;
        Ok(())
    }

    /// Closes the users' open runs on group `id`'s timeline in `batch`: they
    /// are leaving it. Returns whose, to mark once the batch is committed.
    fn close_group_runs<'u>(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        id: &GroupId,
        users: impl IntoIterator<Item = &'u UserId>,
    ) -> Result<Vec<UserId>> {
        let conversation = ConversationKey::group(id);
        let mut heads = self.log_heads.lock();
        let mut closed = Vec::new();
        for user in users {
            let head = self.head_entry(&mut heads, user)?;
            if let Some(open) = &head.open
                && *open.conversation == *conversation.as_str()
            {
                let row = encode_group_run(&open.conversation, open.pos, head.assigned - open.seq + 1);
                batch.insert(&self.log, key2(user.as_str(), &open.seq.to_be_bytes()), row);
                closed.push(user.clone());
            }
        }
        Ok(closed)
    }

    /// After the batch of [`close_group_runs`](Self::close_group_runs) committed.
    fn runs_closed(&self, users: &[UserId]) {
        let mut heads = self.log_heads.lock();
        for user in users {
            if let Some(head) = heads.get_mut(user) {
                head.open = None;
            }
        }
    }

    /// Keeps the head caches within [`EmbeddedOptions::heads_cached`]. The
    /// writer calls it between rounds, when all it wrote is durable and
    /// published: a dropped head is then read back from disk as it was, as
    /// after a restart. A head with a seq not yet durable (a failed round's)
    /// stays. Dropping walks the whole map, a few milliseconds at the
    /// default size, once per quarter of it that is new.
    pub(super) fn trim_heads(&self) {
        let cap = self.options.heads_cached.max(1);
        let keep = cap - cap / 4;
        let mut heads = self.log_heads.lock();
        if heads.len() > cap {
            let mut excess = heads.len() - keep;
            heads.retain(|_, head| {
                let gone = excess > 0 && head.assigned == head.durable;
                excess -= usize::from(gone);
                !gone
            });
        }
        drop(heads);
        let mut timelines = self.timeline_heads.lock();
        if timelines.len() > cap {
            let mut excess = timelines.len() - keep;
            timelines.retain(|_, _| {
                let gone = excess > 0;
                excess -= usize::from(gone);
                !gone
            });
        }
    }

    /// After a round's fsync: readers may now see those entries.
    fn publish_durable(&self, appended: &[(Vec<UserId>, Vec<Appended>)]) {
        if appended.is_empty() {
            return;
        }
        let mut heads = self.log_heads.lock();
        for (users, at) in appended {
            for (user, at) in users.iter().zip(at) {
                if let Some(h) = heads.get_mut(user) {
                    h.durable = h.durable.max(at.seq);
                }
            }
        }
    }

    /// A stored log entry as the event it stands for.
    fn log_event(&self, entry: v1::StoredLogEntry) -> Result<LogEvent> {
        use v1::stored_log_entry::Kind;
        let kind = match entry.kind {
            Some(Kind::MessageRef(at)) => {
                return Ok(LogEvent::Message(self.referenced_message(&at.conversation, at.msg_id, "log entry")?));
            }
            Some(Kind::Message(message)) => Some(v1::log_event::Kind::Message(message)),
            Some(Kind::GroupChange(change)) => Some(v1::log_event::Kind::GroupChange(change)),
            None => None,
        };
        Ok(v1::LogEvent { kind }.try_into()?)
    }

    /// The entries at positions `from..from + count` of a group's timeline.
    fn timeline_entries(&self, conversation: &str, from: u64, count: u64) -> Result<Vec<LogEvent>> {
        let start = key2(conversation, &from.to_be_bytes());
        let end = key2(conversation, &(from + count - 1).to_be_bytes());
        let entries = self
            .timeline
            .range(start..=end)
            .map(|item| self.log_event(decode(&item.into_inner().map_err(storage_err)?.1)?))
            .collect::<Result<Vec<_>>>()?;
        if entries.len() as u64 != count {
            return Err(Error::internal(format!("group run past the end of timeline {conversation}")));
        }
        Ok(entries)
    }

    fn meta_u64(&self, user: &UserId, name: &[u8]) -> Result<u64> {
        let raw = self.log_meta.get(key2(user.as_str(), name)).map_err(storage_err)?;
        Ok(raw.map_or(0, |v| seq_of(&v)))
    }
}

impl Run {
    fn bounds(&self) -> (u64, u64) {
        (self.first, self.first + (self.entries.len() as u64).max(1) - 1)
    }

    /// Adds the next entry; `at`: its place in its group's timeline, if any.
    fn push(&mut self, entry: fjall::Slice, at: Option<&TimelinePos>) {
        let next = self.entries.len() as u64;
        let continues = match (&self.timeline, at) {
            (Some(run), Some(at)) => at.conversation == run.conversation && at.pos == run.pos + next,
            _ => false,
        };
        if !continues {
            self.timeline = None;
        }
        self.entries.push(entry);
    }
}

impl Round<'_> {
    /// Loads the users' log heads: what can fail before [`stage_log`](Self::stage_log).
    fn load_heads(&self, users: &[UserId]) -> Result<()> {
        let mut heads = self.inner.log_heads.lock();
        for user in users {
            self.inner.head_entry(&mut heads, user)?;
        }
        Ok(())
    }

    /// The next position in the group's timeline for a message to
    /// `recipients`, with the timeline's row staged. `None` unless the
    /// recipients are the group's members right now, which every open run on
    /// the timeline relies on: not for a send that raced a member change, and
    /// not for a group whose member list is not cached (too large for the
    /// cache, or just changed), as reading it here would hold up every write.
    fn timeline_slot(
        &mut self,
        message: &Message,
        recipients: &[UserId],
        entry: &fjall::Slice,
    ) -> Result<Option<TimelinePos>> {
        let Ok(group) = GroupId::parse(&message.to, "to") else { return Ok(None) };
        let inner = self.inner;
        // Exact when present: the cache drops a list in the writer job that
        // changes it, and a list read before a change is never cached.
        match inner.member_cache.cached(&group) {
            Some(members) if *members == *recipients => {}
            _ => return Ok(None),
        }
        let key = message.conversation();
        let mut heads = inner.timeline_heads.lock();
        // One shared name per timeline, not one per message.
        let (conversation, last) = match heads.get_key_value(key.as_str()) {
            Some((conversation, &last)) => (conversation.clone(), last),
            None => (Arc::from(key.as_str()), inner.timeline_last(key.as_str())?),
        };
        self.timeline_before.entry(conversation.clone()).or_insert(last);
        heads.insert(conversation.clone(), last + 1);
        self.timeline_rows.push((key2(&conversation, &(last + 1).to_be_bytes()), entry.clone()));
        Ok(Some(TimelinePos { conversation, pos: last + 1 }))
    }

    /// Appends `entry` to each user's log (twice for a user listed twice):
    /// assigns the seqs now; the round writes the rows after its jobs. The
    /// heads must have been loaded with [`load_heads`](Self::load_heads).
    /// `at`: the entry's place in its group's timeline, if it has one.
    fn stage_log(&mut self, users: Vec<UserId>, entry: fjall::Slice, at: Option<&TimelinePos>) -> Vec<Appended> {
        let mut appended = Vec::with_capacity(users.len());
        {
            let mut heads = self.inner.log_heads.lock();
            for user in &users {
                // Present: loaded by `load_heads` in this job, and heads are never removed.
                let Some(head) = heads.get_mut(user) else { continue };
                head.assigned += 1;
                appended.push(Appended { seq: head.assigned, prev: head.assigned - 1 });
                match self.runs.get_mut(user) {
                    Some(run) => run.push(entry.clone(), at),
                    None => {
                        let mut before = head.clone();
                        before.assigned -= 1;
                        let run =
                            Run { first: head.assigned, entries: vec![entry.clone()], timeline: at.cloned(), before };
                        self.runs.insert(user.clone(), run);
                    }
                }
            }
        }
        self.appended(users, appended.clone());
        appended
    }

    /// Writes the round's log rows, timeline rows and sends so far in one
    /// batch. If that fails, the log heads and timelines go back to where
    /// the round found them (and every job of the round fails with it).
    pub(super) fn write_rows(&mut self) -> Result<()> {
        let timeline_before = std::mem::take(&mut self.timeline_before);
        let timeline_rows = std::mem::take(&mut self.timeline_rows);
        if self.runs.is_empty() && self.sends.is_empty() && timeline_rows.is_empty() {
            return Ok(());
        }
        self.dirty = true;
        let inner = self.inner;
        let runs = std::mem::take(&mut self.runs);
        let mut batch = inner.db.batch();
        for (key, send) in self.sends.drain() {
            if let Some((message_key, message)) = send.message {
                batch.insert(&inner.messages, message_key, message);
            }
            batch.insert(&inner.dedup, key, send.record.encode_to_vec());
        }
        for (key, entry) in timeline_rows {
            batch.insert(&inner.timeline, key, entry);
        }
        let mut heads = inner.log_heads.lock();
        let staged = runs.iter().try_for_each(|(user, run)| {
            let head = heads.get_mut(user).ok_or_else(|| Error::internal("log head of a staged run vanished"))?;
            match &run.timeline {
                // The user's open run already says so: nothing to write but
                // what retention drops.
                Some(at) if head.open.as_ref().is_some_and(|open| open.covers(at, run.first)) => {
                    inner.trim(&mut batch, user, head, None)
                }
                _ => inner.stage_row(&mut batch, user, run, head),
            }
        });
        drop(heads);
        let written = staged.and_then(|()| batch.commit().map_err(storage_err));
        if written.is_err() {
            let mut heads = inner.log_heads.lock();
            for (user, run) in runs {
                heads.insert(user, run.before);
            }
            let mut timelines = inner.timeline_heads.lock();
            for (conversation, last) in timeline_before {
                timelines.insert(conversation, last);
            }
        }
        written
    }
}

#[async_trait]
impl UserLog for EmbeddedStore {
    async fn append(&self, users: &[UserId], event: &LogEvent) -> Result<Vec<Appended>> {
        // Encoded as a LogEvent, which reads back as a StoredLogEntry.
        let entry: fjall::Slice = v1::LogEvent::from(event).encode_to_vec().into();
        let users = users.to_vec();
        self.writer
            .write(move |round| {
                round.load_heads(&users)?;
                Ok(round.stage_log(users, entry, None))
            })
            .await
    }

    async fn read(&self, user: &UserId, after: u64, limit: usize) -> Result<Result<LogPage, CursorExpired>> {
        let head = self.inner.head(user)?;
        if after > head.durable || (after + 1 < head.oldest && after < head.durable) {
            return Ok(Err(CursorExpired { requested: after, oldest: head.oldest, head: head.durable }));
        }
        let log = &self.inner.log;
        let from = key2(user.as_str(), &(after + 1).to_be_bytes());
        // The row holding `after + 1` is keyed at or before it.
        let start = match log.range(key2(user.as_str(), &[])..=from.clone()).next_back() {
            Some(item) => item.key().map_err(storage_err)?.to_vec(),
            None => from,
        };
        let end = key2(user.as_str(), &head.durable.to_be_bytes());
        let mut events = Vec::new();
        let mut rows = log.range(start..=end).map(|item| item.into_inner().map_err(storage_err)).peekable();
        while let Some(row) = rows.next() {
            if events.len() >= limit {
                break;
            }
            let (key, value) = row?;
            let first = seq_of(&key);
            match decode_row(&value)? {
                Row::Entries(entries) => {
                    for (seq, entry) in (first..).zip(entries) {
                        if events.len() >= limit || seq > head.durable {
                            break;
                        }
                        if seq > after {
                            events.push((seq, self.inner.log_event(entry)?));
                        }
                    }
                }
                Row::Group(run) => {
                    let last = match (run.count, rows.peek()) {
                        (0, Some(Ok((next, _)))) => seq_of(next) - 1,
                        (0, _) => head.durable,
                        (count, _) => first + count - 1,
                    };
                    let from = first.max(after + 1);
                    let to = last.min(head.durable).min(from + (limit - events.len()) as u64 - 1);
                    if from <= to {
                        let entries = self.inner.timeline_entries(
                            &run.conversation,
                            run.first + (from - first),
                            to - from + 1,
                        )?;
                        events.extend((from..).zip(entries));
                    }
                }
            }
        }
        Ok(Ok(LogPage { events, head: head.durable }))
    }

    async fn bounds(&self, user: &UserId) -> Result<(u64, u64)> {
        let head = self.inner.head(user)?;
        Ok((head.durable, if head.durable == 0 { 0 } else { head.oldest }))
    }

    async fn ack(&self, user: &UserId, seq: u64) -> Result<()> {
        let user = user.clone();
        // Not awaiting the fsync: a lost ack only means a new device replays a little more.
        self.writer
            .write_unsynced(move |round| {
                let inner = round.inner;
                if seq > inner.meta_u64(&user, b"acked")? {
                    let mut batch = inner.db.batch();
                    batch.insert(&inner.log_meta, key2(user.as_str(), b"acked"), seq.to_be_bytes().to_vec());
                    round.commit(batch)?;
                }
                Ok(())
            })
            .await
    }

    async fn acked(&self, user: &UserId) -> Result<u64> {
        self.inner.meta_u64(user, b"acked")
    }
}

// ---------------------------------------------------------------- presence

fn time_of(value: &[u8]) -> i64 {
    <[u8; 8]>::try_from(value).map(i64::from_be_bytes).unwrap_or(0)
}

fn user_after_prefix(key: &[u8], prefix_len: usize, field: &str) -> Result<UserId> {
    let raw = key.get(prefix_len..).ok_or_else(|| Error::internal("short presence key"))?;
    UserId::parse(std::str::from_utf8(raw).map_err(storage_err)?, field)
}

impl Inner {
    /// The subscriber's stored subscriptions, expired ones included.
    fn subs_of(&self, subscriber: &UserId) -> Result<Vec<Subscription>> {
        let skip = subscriber.as_str().len() + 1;
        self.subs
            .prefix(key2(subscriber.as_str(), &[]))
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                Ok(Subscription { target: user_after_prefix(&key, skip, "target")?, expires_at: time_of(&value) })
            })
            .collect()
    }

    fn put_sub(&self, batch: &mut fjall::OwnedWriteBatch, subscriber: &UserId, target: &UserId, expires_at: i64) {
        let at = expires_at.to_be_bytes().to_vec();
        batch.insert(&self.subs, key2(subscriber.as_str(), target.as_str().as_bytes()), at.clone());
        batch.insert(&self.subs_by_target, key2(target.as_str(), subscriber.as_str().as_bytes()), at);
    }

    fn delete_sub(&self, batch: &mut fjall::OwnedWriteBatch, subscriber: &UserId, target: &UserId) {
        batch.remove(&self.subs, key2(subscriber.as_str(), target.as_str().as_bytes()));
        batch.remove(&self.subs_by_target, key2(target.as_str(), subscriber.as_str().as_bytes()));
    }
}

#[async_trait]
impl PresenceStore for EmbeddedStore {
    async fn subscribe(
        &self,
        subscriber: &UserId,
        targets: &[UserId],
        expires_at: i64,
        cap: usize,
        now: i64,
    ) -> Result<Vec<Subscription>> {
        let (subscriber, targets) = (subscriber.clone(), targets.to_vec());
        self.write_batch(move |inner, batch| {
            let subscriber = &subscriber;
            let mut others = Vec::new();
            for sub in inner.subs_of(subscriber)? {
                if sub.expires_at <= now {
                    inner.delete_sub(batch, subscriber, &sub.target);
                } else if !targets.contains(&sub.target) {
                    others.push(sub);
                }
            }
            let mut fresh: Vec<&UserId> = targets.iter().collect();
            fresh.sort();
            fresh.dedup();
            for target in &fresh {
                inner.put_sub(batch, subscriber, target, expires_at);
            }
            let excess = (others.len() + fresh.len()).saturating_sub(cap);
            others.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then_with(|| a.target.cmp(&b.target)));
            let evicted: Vec<Subscription> = others.into_iter().take(excess).collect();
            for sub in &evicted {
                inner.delete_sub(batch, subscriber, &sub.target);
            }
            Ok(evicted)
        })
        .await
    }

    async fn unsubscribe(&self, subscriber: &UserId, targets: &[UserId]) -> Result<()> {
        let (subscriber, targets) = (subscriber.clone(), targets.to_vec());
        self.write_batch(move |inner, batch| {
            for target in &targets {
                inner.delete_sub(batch, &subscriber, target);
            }
            Ok(())
        })
        .await
    }

    async fn subscriptions(
        &self,
        subscriber: &UserId,
        now: i64,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Subscription>, usize)> {
        let live: Vec<Subscription> =
            self.inner.subs_of(subscriber)?.into_iter().filter(|s| s.expires_at > now).collect();
        let total = live.len();
        Ok((live.into_iter().skip(offset).take(limit).collect(), total))
    }

    async fn subscribers(&self, target: &UserId, now: i64) -> Result<Vec<UserId>> {
        let skip = target.as_str().len() + 1;
        let mut out = Vec::new();
        for item in self.inner.subs_by_target.prefix(key2(target.as_str(), &[])) {
            let (key, value) = item.into_inner().map_err(storage_err)?;
            if time_of(&value) > now {
                out.push(user_after_prefix(&key, skip, "subscriber")?);
            }
        }
        Ok(out)
    }

    async fn remove_expired(&self, subscriber: &UserId, target: &UserId, expires_at: i64) -> Result<bool> {
        let (subscriber, target) = (subscriber.clone(), target.clone());
        self.write_batch(move |inner, batch| {
            let key = key2(subscriber.as_str(), target.as_str().as_bytes());
            match inner.subs.get(&key).map_err(storage_err)? {
                Some(value) if time_of(&value) == expires_at => {
                    inner.delete_sub(batch, &subscriber, &target);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
    }

    async fn all_subscriptions(&self) -> Result<Vec<(UserId, Subscription)>> {
        self.inner
            .subs
            .iter()
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                let split = key.iter().position(|b| *b == 0).ok_or_else(|| Error::internal("bad subscription key"))?;
                let subscriber = UserId::parse(std::str::from_utf8(&key[..split]).map_err(storage_err)?, "subscriber")?;
                let target = user_after_prefix(&key, split + 1, "target")?;
                Ok((subscriber, Subscription { target, expires_at: time_of(&value) }))
            })
            .collect()
    }

    async fn set_presence(&self, user: &UserId, description: Option<&str>, time: i64) -> Result<()> {
        let (user, description) = (user.clone(), description.map(str::to_owned));
        self.write_batch(move |inner, batch| {
            let description = match description {
                Some(d) => d,
                None => match inner.presence.get(user.as_str()).map_err(storage_err)? {
                    Some(bytes) => decode::<v1::PresenceRecord>(&bytes)?.description,
                    None => String::new(),
                },
            };
            batch.insert(&inner.presence, user.as_str(), v1::PresenceRecord { description, time }.encode_to_vec());
            Ok(())
        })
        .await
    }

    async fn get_presence(&self, user: &UserId) -> Result<(String, i64)> {
        match self.inner.presence.get(user.as_str()).map_err(storage_err)? {
            Some(bytes) => {
                let record: v1::PresenceRecord = decode(&bytes)?;
                Ok((record.description, record.time))
            }
            None => Ok((String::new(), 0)),
        }
    }
}

#[async_trait]
impl WebhookOutbox for EmbeddedStore {
    async fn push(&self, receiver: &str, events: &[WebhookEvent]) -> Result<()> {
        let (receiver, events) = (receiver.to_owned(), events.to_vec());
        self.write_batch(move |inner, batch| {
            let mut heads = inner.outbox_heads.lock();
            let head = match heads.get(&receiver) {
                Some(head) => *head,
                None => {
                    let last = inner.outbox.prefix(key2(&receiver, &[])).next_back();
                    last.map(|g| g.key().map(|k| seq_of(&k))).transpose().map_err(storage_err)?.unwrap_or(0)
                }
            };
            let mut id = head;
            for event in &events {
                id += 1;
                batch.insert(
                    &inner.outbox,
                    key2(&receiver, &id.to_be_bytes()),
                    v1::WebhookEvent::from(event).encode_to_vec(),
                );
            }
            // Before the commit: a failed commit leaves a gap in the ids, never a reuse.
            heads.insert(receiver, id);
            Ok(())
        })
        .await
    }

    async fn peek(&self, receiver: &str, limit: usize) -> Result<Vec<(u64, WebhookEvent)>> {
        self.inner
            .outbox
            .prefix(key2(receiver, &[]))
            .take(limit)
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                Ok((seq_of(&key), decode::<v1::WebhookEvent>(&value)?.try_into()?))
            })
            .collect()
    }

    async fn remove(&self, receiver: &str, up_to: u64) -> Result<()> {
        let receiver = receiver.to_owned();
        self.write_batch(move |inner, batch| {
            let end = key2(&receiver, &up_to.to_be_bytes());
            for item in inner.outbox.range(key2(&receiver, &[])..=end) {
                batch.remove(&inner.outbox, item.key().map_err(storage_err)?);
            }
            Ok(())
        })
        .await
    }
}

fn session_key(user: &UserId, session: &natter_types::SessionId) -> Vec<u8> {
    key2(user.as_str(), session.0.as_bytes())
}

#[async_trait]
impl SessionJournal for EmbeddedStore {
    async fn opened(&self, session: &SessionInfo) -> Result<()> {
        let (key, value) = (session_key(&session.user, &session.session), v1::SessionInfo::from(session));
        self.write_batch(move |inner, batch| {
            batch.insert(&inner.sessions, key, value.encode_to_vec());
            Ok(())
        })
        .await
    }

    async fn closed(&self, sessions: &[SessionInfo]) -> Result<()> {
        let keys: Vec<Vec<u8>> = sessions.iter().map(|s| session_key(&s.user, &s.session)).collect();
        self.writer
            .write_unsynced(move |round| {
                let inner = round.inner;
                let mut batch = inner.db.batch();
                for key in keys {
                    batch.remove(&inner.sessions, key);
                }
                round.commit(batch)
            })
            .await
    }

    async fn open_sessions(&self) -> Result<Vec<SessionInfo>> {
        self.inner
            .sessions
            .iter()
            .map(|item| {
                let (_, value) = item.into_inner().map_err(storage_err)?;
                Ok(decode::<v1::SessionInfo>(&value)?.try_into()?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn open(dir: &Path, retention: u64) -> EmbeddedStore {
        EmbeddedStore::open(dir, EmbeddedOptions { log_retention_events: retention, ..EmbeddedOptions::default() })
            .expect("open")
    }

    /// Any event: the log does not look inside.
    fn group_created() -> LogEvent {
        group_created_n(1)
    }

    /// An event told apart by `n`.
    fn group_created_n(n: u64) -> LogEvent {
        LogEvent::GroupChange(natter_types::GroupChange {
            kind: natter_types::GroupChangeKind::Created,
            group_id: GroupId::from_id(n),
            group_name: String::new(),
            operator: UserId::system(),
            members: vec![],
            time: 0,
        })
    }

    /// Runs the writes of `jobs` (started at once) in one writer round: the
    /// writer is held in a round of its own until all of them are queued.
    async fn in_one_round<T: Send + 'static>(
        store: &EmbeddedStore,
        jobs: Vec<futures::future::BoxFuture<'static, T>>,
    ) -> Vec<T> {
        let (release, holder) = store.writer.hold().await;
        let n = jobs.len();
        let tasks: Vec<_> = jobs.into_iter().map(tokio::spawn).collect();
        while store.writer.queued() < n {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }

    /// Appends events `from..to` (as group ids) to the users, in one round.
    async fn append_in_one_round(store: &EmbeddedStore, users: &[UserId], events: std::ops::Range<u64>) {
        let jobs = events
            .map(|n| {
                let (store, users) = (store.clone(), users.to_vec());
                Box::pin(async move { UserLog::append(&store, &users, &group_created_n(n)).await.unwrap() })
                    as futures::future::BoxFuture<'static, _>
            })
            .collect();
        in_one_round(store, jobs).await;
    }

    fn rows_of(store: &EmbeddedStore, user: &str) -> Vec<u64> {
        store.inner.log.prefix(key2(user, &[])).map(|g| seq_of(&g.key().unwrap())).collect()
    }

    fn users(n: usize) -> Vec<UserId> {
        (0..n).map(|i| UserId::parse(&format!("u{i}"), "u").unwrap()).collect()
    }

    /// An event of about 1 KB.
    fn kilobyte_event() -> LogEvent {
        let mut event = group_created();
        if let LogEvent::GroupChange(change) = &mut event {
            change.group_name = "x".repeat(1000);
        }
        event
    }

    /// The memtable size reaches fjall: a keyspace's memtable is flushed to a
    /// table once it passes the size, and not before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memtables_are_flushed_at_the_configured_size() {
        let (users, event) = (users(50), kilobyte_event());
        // 20 appends of ~1 KB to 50 users: ~1 MB into `user_log`.
        for (memtable_bytes, flushed) in [(256 << 10, true), (64 << 20, false)] {
            let dir = tempfile::tempdir().unwrap();
            let options = EmbeddedOptions { memtable_bytes, ..EmbeddedOptions::default() };
            let store = EmbeddedStore::open(dir.path(), options).unwrap();
            for _ in 0..20 {
                UserLog::append(&store, &users, &event).await.unwrap();
            }
            // Flushes run on fjall's worker thread.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while flushed && store.inner.log.disk_space() == 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(store.inner.log.disk_space() > 0, flushed, "memtable of {memtable_bytes} bytes");
        }
    }

    /// Compactions write tables of a memtable's size, so that the one a
    /// compaction syncs under fjall's version lock is small.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compactions_write_tables_of_a_memtables_size() {
        let (users, event) = (users(50), kilobyte_event());
        let dir = tempfile::tempdir().unwrap();
        let memtable_bytes = 256 << 10;
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions { memtable_bytes, ..EmbeddedOptions::default() }).unwrap();
        // ~3 MB into `user_log`, every table spanning all 50 users' keys, so
        // that L0 tables merge with the tables below rather than move down.
        for _ in 0..60 {
            UserLog::append(&store, &users, &event).await.unwrap();
        }
        let log = &store.inner.log;
        // Flushes and compactions run on fjall's worker thread. A flush may
        // write several sealed memtables into one L0 table; compactions cut
        // their output at the target size: below L0, 3 MB makes about a
        // dozen tables of 256 KiB, or a single one at fjall's 64 MiB.
        let below_l0 = || log.table_count().saturating_sub(log.l0_table_count());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while below_l0() < 4 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(below_l0() >= 4, "{} table(s) below L0 after 30 s: compactions wrote larger tables", below_l0());
    }

    /// Flushed memtables are freed by the keeper, not by fjall under its
    /// version lock; none while nothing has been flushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushed_memtables_are_freed_by_the_keeper() {
        let (users, event) = (users(16), kilobyte_event());
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { memtable_bytes: 256 << 10, ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open(dir.path(), options).unwrap();
        // ~16 KB per append, ~128 KB per step: a memtable is sealed every
        // other step, and each one stays active across the keeper's polls.
        for step in 0..10 {
            for _ in 0..8 {
                UserLog::append(&store, &users, &event).await.unwrap();
            }
            if step == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                assert_eq!(store.keeper.freed(), 0, "nothing is flushed yet");
            }
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        // Flushes run on fjall's worker thread.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.keeper.freed() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(store.inner.log.disk_space() > 0, "the log was flushed");
        assert!(store.keeper.freed() > 0, "the keeper freed the flushed memtables");
    }

    /// The appends of one round to a user are one row; every read, from any
    /// position and with any limit, still returns exactly the entries after
    /// its cursor, in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_writes_one_row_per_user_and_reads_start_anywhere_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let users = [UserId::parse("ann", "u").unwrap(), UserId::parse("ben", "u").unwrap()];
        append_in_one_round(&store, &users, 1..7).await;
        UserLog::append(&store, &users[..1], &group_created_n(7)).await.unwrap();
        assert_eq!(rows_of(&store, "ann"), vec![1, 7], "one row for the round, one for the later append");
        assert_eq!(rows_of(&store, "ben"), vec![1]);
        let all = store.read(&users[0], 0, 100).await.unwrap().unwrap().events;
        assert_eq!(all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
        for after in 0..=7 {
            for limit in 1..=8 {
                let page = store.read(&users[0], after, limit).await.unwrap().unwrap();
                let want: Vec<_> = all.iter().skip(after as usize).take(limit).cloned().collect();
                assert_eq!(page.events, want, "after {after}, limit {limit}");
            }
        }
        // The same events in both logs, in the same order.
        let ben = store.read(&users[1], 0, 100).await.unwrap().unwrap().events;
        assert_eq!(ben, all[..6].to_vec());
    }

    /// Retention keeps a row while any of its entries is retained (reads
    /// skip the expired ones) and removes it once all are; positions survive
    /// a reopen with multi-entry rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_removes_a_row_once_all_its_entries_are_expired() {
        let dir = tempfile::tempdir().unwrap();
        let ann = [UserId::parse("ann", "u").unwrap()];
        let seqs = |page: LogPage| page.events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>();
        {
            let store = open(dir.path(), 4);
            append_in_one_round(&store, &ann, 1..4).await;
            append_in_one_round(&store, &ann, 4..7).await;
            assert_eq!(store.bounds(&ann[0]).await.unwrap(), (6, 3));
            assert_eq!(rows_of(&store, "ann"), vec![1, 4], "row 1-3 still holds seq 3");
            assert_eq!(seqs(store.read(&ann[0], 2, 10).await.unwrap().unwrap()), vec![3, 4, 5, 6]);
            let expired = store.read(&ann[0], 1, 10).await.unwrap().unwrap_err();
            assert_eq!((expired.oldest, expired.head), (3, 6));
            append_in_one_round(&store, &ann, 7..9).await;
            assert_eq!(store.bounds(&ann[0]).await.unwrap(), (8, 5));
            assert_eq!(rows_of(&store, "ann"), vec![4, 7]);
        }
        let store = open(dir.path(), 4);
        assert_eq!(
            store.bounds(&ann[0]).await.unwrap(),
            (8, 5),
            "head from the last row's last entry, oldest as before"
        );
        UserLog::append(&store, &ann, &group_created_n(9)).await.unwrap();
        assert_eq!(store.bounds(&ann[0]).await.unwrap(), (9, 6));
        assert_eq!(rows_of(&store, "ann"), vec![4, 7, 9], "row 4-6 still holds seq 6");
        assert_eq!(seqs(store.read(&ann[0], 5, 10).await.unwrap().unwrap()), vec![6, 7, 8, 9]);
        UserLog::append(&store, &ann, &group_created_n(10)).await.unwrap();
        assert_eq!(rows_of(&store, "ann"), vec![7, 9, 10]);
    }

    /// A send and its retry in the same round: the retry finds the send in
    /// the round (its message and record are written only by the round's
    /// rows batch) and is answered as a duplicate, with one log entry per
    /// recipient.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_retried_in_the_same_round_is_fanned_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let (ann, ben) = (UserId::parse("ann", "u").unwrap(), UserId::parse("ben", "u").unwrap());
        let send = |id: u64| {
            let store = store.clone();
            let users = vec![ann.clone(), ben.clone()];
            let message = Message {
                id: MessageId(id),
                client_msg_id: "c1".into(),
                from: ann.clone(),
                to: "ben".into(),
                chat_type: natter_types::ChatType::Single,
                timestamp: 1,
                body: natter_types::MessageBody::Text("hi".into()),
                ext: Default::default(),
                from_system: false,
            };
            Box::pin(async move { store.insert_and_append(&message, &users, &store).await.unwrap() })
                as futures::future::BoxFuture<'static, Stored>
        };
        let stored = in_one_round(&store, vec![send(10), send(11)]).await;
        let ids: Vec<_> = stored.iter().map(|s| (s.message.id.0, s.duplicate)).collect();
        assert!(ids == [(10, false), (10, true)] || ids == [(11, true), (11, false)], "{ids:?}");
        assert_eq!(store.read(&ben, 0, 10).await.unwrap().unwrap().events.len(), 1);
        let record = store.inner.dedup_record(&key2("ann", b"c1")).unwrap().unwrap();
        assert!(record.fanned_out, "marked by the round's rows");
        let history = store.history(&stored[0].message.conversation(), None, Direction::Up, 10).await.unwrap();
        assert_eq!(history.iter().map(|m| m.id.0).collect::<Vec<_>>(), vec![stored[0].message.id.0], "stored once");
    }

    /// Compaction drops idempotency records past the window and keeps the
    /// others. (Lookups ignore expired records before that: the conformance
    /// suite.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_drops_expired_idempotency_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let ann = UserId::parse("ann", "u").unwrap();
        let window_ms = i64::try_from(crate::DEFAULT_IDEMPOTENCY_WINDOW.as_millis()).unwrap();
        let now = natter_types::now_ms();
        for (id, client, timestamp) in [(1, "old", now - window_ms - 60_000), (2, "new", now - window_ms + 3_600_000)] {
            let message = Message {
                id: MessageId(id),
                client_msg_id: client.into(),
                from: ann.clone(),
                to: "ben".into(),
                chat_type: natter_types::ChatType::Single,
                timestamp,
                body: natter_types::MessageBody::Text("hi".into()),
                ext: Default::default(),
                from_system: false,
            };
            assert_eq!(store.insert_message(&message).await.unwrap(), Inserted::New);
        }
        assert!(store.inner.dedup_record(&key2("ann", b"old")).unwrap().is_some(), "stored until compacted");
        store.inner.dedup.rotate_memtable_and_wait().unwrap();
        store.inner.dedup.major_compact().unwrap();
        assert!(store.inner.dedup_record(&key2("ann", b"old")).unwrap().is_none(), "the expired record is gone");
        assert!(store.inner.dedup_record(&key2("ann", b"new")).unwrap().is_some(), "the live record is kept");
    }

    #[tokio::test]
    async fn conformance_suite_passes() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::run_all(&open(dir.path(), 5).stores(), 5).await;
    }

    #[tokio::test]
    async fn lowered_retention_trims_the_surplus_on_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::parse("carol", "u").unwrap();
        let event = group_created();
        {
            let store = open(dir.path(), 10);
            for _ in 0..8 {
                UserLog::append(&store, std::slice::from_ref(&user), &event).await.unwrap();
            }
        }
        let store = open(dir.path(), 3);
        UserLog::append(&store, std::slice::from_ref(&user), &event).await.unwrap();
        assert_eq!(store.bounds(&user).await.unwrap(), (9, 7));
        assert_eq!(store.read(&user, 6, 10).await.unwrap().unwrap().events.len(), 3);
    }

    /// Many callers at once share the writer's rounds: every append gets its
    /// own seq, without gaps, in both logs, and is readable once answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_distinct_contiguous_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1000);
        let users = vec![UserId::parse("ann", "u").unwrap(), UserId::parse("ben", "u").unwrap()];
        let event = group_created();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (store, users, event) = (store.clone(), users.clone(), event.clone());
                tokio::spawn(async move {
                    let at = UserLog::append(&store, &users, &event).await.unwrap();
                    let (head, _) = store.bounds(&users[1]).await.unwrap();
                    assert!(head >= at[1].seq, "answered before readable");
                    at
                })
            })
            .collect();
        let mut seqs: Vec<(u64, u64)> = Vec::new();
        for task in tasks {
            let at = task.await.unwrap();
            seqs.push((at[0].seq, at[1].seq));
        }
        seqs.sort_unstable();
        let expected: Vec<(u64, u64)> = (1..=200).map(|n| (n, n)).collect();
        assert_eq!(seqs, expected);
        assert_eq!(store.read(&users[0], 0, 1000).await.unwrap().unwrap().events.len(), 200);
    }

    /// Messages sent are referenced from the logs; a message appended as a
    /// whole event (as every entry was before references) reads back the same.
    #[tokio::test]
    async fn referenced_and_whole_message_entries_read_back_alike() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let (ann, ben) = (UserId::parse("ann", "u").unwrap(), UserId::parse("ben", "u").unwrap());
        let message = |n: u64, client: &str| Message {
            id: MessageId(n),
            client_msg_id: client.into(),
            from: ann.clone(),
            to: "ben".into(),
            chat_type: natter_types::ChatType::Single,
            timestamp: 1,
            body: natter_types::MessageBody::Text(format!("text {n}")),
            ext: Default::default(),
            from_system: false,
        };
        let whole = message(7, "c7");
        UserLog::append(&store, std::slice::from_ref(&ben), &LogEvent::Message(whole.clone())).await.unwrap();
        let sent = message(8, "c8");
        let users = [ann.clone(), ben.clone()];
        store.insert_and_append(&sent, &users, &store).await.unwrap();
        let stored = store.inner.log.get(key2("ben", &2u64.to_be_bytes())).unwrap().unwrap();
        assert!(stored.len() < 40, "a reference, not the message ({} bytes)", stored.len());
        let page = store.read(&ben, 0, 10).await.unwrap().unwrap();
        assert_eq!(page.events, vec![(1, LogEvent::Message(whole)), (2, LogEvent::Message(sent))]);
    }

    fn a_group(id: u64, owner: &UserId) -> Group {
        Group {
            id: GroupId::from_id(id),
            name: "g".into(),
            description: String::new(),
            owner: owner.clone(),
            created_at: 0,
            member_count: 0,
            max_members: 10,
        }
    }

    fn members_of(users: &[&UserId]) -> Vec<GroupMember> {
        users.iter().map(|u| GroupMember { user_id: (*u).clone(), role: GroupRole::Member, joined_at: 0 }).collect()
    }

    /// Retention goes on while an open run grows without rows being
    /// written: the oldest kept seq moves with the head, and rows wholly
    /// behind it go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_trims_behind_an_open_run() {
        use crate::conformance::{assert_log_is, group_message, send_to_group, text_message};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 3);
        let stores = store.stores();
        let [ann, ben, cat] = ["ann", "ben", "cat"].map(|n| UserId::parse(n, "u").unwrap());
        let group = a_group(9, &ann);
        stores.groups.create_group(&group, &members_of(&[&ann, &ben, &cat])).await.unwrap();
        let mut log = Vec::new();
        for n in 0..2 {
            log.push(group_message(&ann, &group.id, n));
            send_to_group(&stores, &log[n]).await;
        }
        let direct = text_message(&ben, &ann, "d", "aside");
        store.insert_and_append(&direct, &[ben.clone(), ann.clone()], &store).await.unwrap();
        log.push(direct);
        assert_eq!(rows_of(&store, "ann"), vec![1, 3]);
        for n in 3..9 {
            log.push(group_message(&ben, &group.id, n));
            send_to_group(&stores, &log[n]).await;
        }
        assert_eq!(rows_of(&store, "ann"), vec![4], "the rows behind the open run are gone");
        assert_eq!(store.bounds(&ann).await.unwrap(), (9, 7));
        let expired = store.read(&ann, 5, 10).await.unwrap().unwrap_err();
        assert_eq!((expired.oldest, expired.head), (7, 9));
        assert_log_is(&store, &ann, &log).await;
        // cat's oldest row is its only one, an open run: once a row follows
        // it, it goes when retention passes its end.
        assert_eq!(rows_of(&store, "cat"), vec![1]);
        let to_cat = text_message(&ann, &cat, "c", "to cat");
        store.insert_and_append(&to_cat, &[ann.clone(), cat.clone()], &store).await.unwrap();
        log.push(to_cat);
        for n in 10..12 {
            log.push(group_message(&ben, &group.id, n));
            send_to_group(&stores, &log[n]).await;
        }
        assert_eq!(rows_of(&store, "cat"), vec![9, 10]);
        drop((stores, store));
        let store = open(dir.path(), 3);
        assert_eq!(store.bounds(&ann).await.unwrap(), (12, 10), "kept what it kept before the restart");
        assert_log_is(&store, &ann, &log).await;
    }

    /// Log heads dropped from memory (past `heads_cached`) are read back
    /// from disk as they were: a store that keeps one head at a time answers
    /// every read and assigns every seq as one that keeps them all, through
    /// 1:1 rows, open group runs, a leave that closes a run, and a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_log_heads_are_read_back_as_they_were() {
        use crate::conformance::{group_message, send_to_group, text_message};
        let (small_dir, full_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let small_options = EmbeddedOptions { heads_cached: 1, ..EmbeddedOptions::default() };
        let mut small = EmbeddedStore::open(small_dir.path(), small_options.clone()).unwrap();
        let full = open(full_dir.path(), 10_000);
        let users = ["ann", "ben", "cat", "dan"].map(|n| UserId::parse(n, "u").unwrap());
        let [ann, ben, cat, dan] = users.clone();
        let group = a_group(5, &ann);
        let same = |small: EmbeddedStore, full: EmbeddedStore, users: [UserId; 4], step: &'static str| async move {
            for user in &users {
                assert_eq!(small.bounds(user).await.unwrap(), full.bounds(user).await.unwrap(), "{step}: {user}");
                for after in [0, 2, 4] {
                    let (got, want) =
                        (small.read(user, after, 100).await.unwrap(), full.read(user, after, 100).await.unwrap());
                    assert_eq!(got, want, "{step}: {user} after {after}");
                }
            }
        };
        for store in [&small, &full] {
            store.stores().groups.create_group(&group, &members_of(&[&ann, &ben, &cat])).await.unwrap();
        }
        let mut sent = Vec::new();
        for n in 0..3 {
            sent.push(group_message(&users[n % 3], &group.id, n));
        }
        sent.push(text_message(&dan, &cat, "d1", "to cat"));
        for n in 3..6 {
            sent.push(group_message(&ben, &group.id, n));
        }
        for (step, message) in sent.iter().enumerate() {
            for store in [&small, &full] {
                if message.to == cat.as_str() {
                    store.insert_and_append(message, &[dan.clone(), cat.clone()], store).await.unwrap();
                } else {
                    send_to_group(&store.stores(), message).await;
                }
            }
            let step = ["g0", "g1", "g2", "1:1", "g3", "g4", "g5"][step];
            same(small.clone(), full.clone(), users.clone(), step).await;
        }
        let after_leave = group_message(&ann, &group.id, 9);
        for store in [&small, &full] {
            store.stores().groups.remove_members(&group.id, std::slice::from_ref(&cat)).await.unwrap();
            send_to_group(&store.stores(), &after_leave).await;
        }
        same(small.clone(), full.clone(), users.clone(), "after the leave").await;
        // Between rounds the small store holds at most one head.
        small.sync_all().await.unwrap();
        assert!(small.inner.log_heads.lock().len() <= 1, "{:?}", small.inner.log_heads.lock().len());
        drop(small);
        small = EmbeddedStore::open(small_dir.path(), small_options).unwrap();
        same(small.clone(), full.clone(), users.clone(), "after a restart").await;
        let after_restart = group_message(&ben, &group.id, 10);
        for store in [&small, &full] {
            send_to_group(&store.stores(), &after_restart).await;
        }
        same(small, full, users, "a send after the restart").await;
    }

    /// A leave in the same writer round as a send to the leaver: the send's
    /// rows are written before the leave closes the run, so the run ends
    /// with that send and not later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leave_in_the_round_of_a_send_closes_the_run_after_it() {
        use crate::conformance::{assert_log_is, group_message, send_to_group};
        let dir = tempfile::tempdir().unwrap();
        let [ann, cat] = ["ann", "cat"].map(|n| UserId::parse(n, "u").unwrap());
        let group = a_group(8, &ann);
        let (first, second) = (group_message(&ann, &group.id, 0), group_message(&ann, &group.id, 1));
        {
            let store = open(dir.path(), 1000);
            let stores = store.stores();
            stores.groups.create_group(&group, &members_of(&[&ann, &cat])).await.unwrap();
            let (release, holder) = store.writer.hold().await;
            let send = tokio::spawn({
                let (stores, first) = (stores.clone(), first.clone());
                async move { send_to_group(&stores, &first).await }
            });
            while store.writer.queued() < 1 {
                tokio::task::yield_now().await;
            }
            let leave = tokio::spawn({
                let (stores, id, cat) = (stores.clone(), group.id.clone(), cat.clone());
                async move { stores.groups.remove_members(&id, &[cat]).await }
            });
            while store.writer.queued() < 2 {
                tokio::task::yield_now().await;
            }
            release.send(()).unwrap();
            holder.await.unwrap().unwrap();
            send.await.unwrap();
            leave.await.unwrap().unwrap();
            send_to_group(&stores, &second).await;
        }
        let store = open(dir.path(), 1000);
        assert_log_is(&store, &cat, std::slice::from_ref(&first)).await;
        assert_log_is(&store, &ann, &[first, second]).await;
    }

    /// Deleting a group closes its members' open runs: a group made again
    /// under the same id starts its timeline where the old one ended, and a
    /// run left open would cover the new group's messages for someone who
    /// is not in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_group_closes_its_members_runs() {
        use crate::conformance::{assert_log_is, group_message, send_to_group};
        let dir = tempfile::tempdir().unwrap();
        let [ann, cat] = ["ann", "cat"].map(|n| UserId::parse(n, "u").unwrap());
        let group = a_group(9, &ann);
        let sent: Vec<Message> = (0..3).map(|n| group_message(&ann, &group.id, n)).collect();
        {
            let store = open(dir.path(), 1000);
            let stores = store.stores();
            stores.groups.create_group(&group, &members_of(&[&ann, &cat])).await.unwrap();
            send_to_group(&stores, &sent[0]).await;
            send_to_group(&stores, &sent[1]).await;
            stores.groups.delete_group(&group.id).await.unwrap();
            stores.groups.create_group(&group, &members_of(&[&ann])).await.unwrap();
            send_to_group(&stores, &sent[2]).await;
            assert_log_is(&store, &cat, &sent[..2]).await;
            assert_log_is(&store, &ann, &sent).await;
        }
        let store = open(dir.path(), 1000);
        assert_log_is(&store, &cat, &sent[..2]).await;
        assert_log_is(&store, &ann, &sent).await;
    }

    /// A member who only gets the group's messages costs no log row per
    /// message: one open group run covers them, also across a reopen; other
    /// entries end it, a leave closes it, and a send that raced a member
    /// change stays out of the timeline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_sends_share_the_timeline_through_open_runs() {
        use crate::conformance::{assert_log_is, group_message, send_to_group};
        let dir = tempfile::tempdir().unwrap();
        let [ann, ben, cat] = ["ann", "ben", "cat"].map(|n| UserId::parse(n, "u").unwrap());
        let group = a_group(7, &ann);
        let timeline_rows = |store: &EmbeddedStore| store.inner.timeline.prefix(key2("g:7", &[])).count();
        let mut sent = Vec::new();
        let direct;
        {
            let store = open(dir.path(), 1000);
            let stores = store.stores();
            stores.groups.create_group(&group, &members_of(&[&ann, &ben, &cat])).await.unwrap();
            for n in 0..3 {
                sent.push(group_message(&ann, &group.id, n));
                send_to_group(&stores, &sent[n]).await;
            }
            // Concurrent sends of one round.
            let batch: Vec<_> = (3..6).map(|n| group_message(&ben, &group.id, n)).collect();
            let jobs = batch
                .iter()
                .map(|m| {
                    let (stores, m) = (stores.clone(), m.clone());
                    Box::pin(async move { send_to_group(&stores, &m).await }) as futures::future::BoxFuture<'static, ()>
                })
                .collect();
            in_one_round(&store, jobs).await;
            let mut in_round: Vec<_> = store.read(&ann, 3, 10).await.unwrap().unwrap().events;
            let order: Vec<_> = in_round.drain(..).map(|(_, e)| e).collect();
            for m in &batch {
                assert!(order.contains(&LogEvent::Message(m.clone())));
            }
            sent.extend(order.into_iter().map(|e| match e {
                LogEvent::Message(m) => m,
                other => panic!("not a message: {other:?}"),
            }));
            assert_eq!(rows_of(&store, "ann"), vec![1], "six messages, one row");
            assert_eq!(rows_of(&store, "cat"), vec![1]);
            assert_eq!(timeline_rows(&store), 6);

            // A 1:1 message ends ann's and ben's runs; the next group send opens new ones.
            direct = crate::conformance::text_message(&ben, &ann, "d1", "aside");
            store.insert_and_append(&direct, &[ben.clone(), ann.clone()], &store).await.unwrap();
            for n in 6..8 {
                sent.push(group_message(&cat, &group.id, n));
                send_to_group(&stores, &sent[n]).await;
            }
            assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8]);
            assert_eq!(rows_of(&store, "cat"), vec![1], "cat's run went on");

            // cat leaves: its run is closed where it stands.
            stores.groups.remove_members(&group.id, std::slice::from_ref(&cat)).await.unwrap();
            sent.push(group_message(&ann, &group.id, 8));
            send_to_group(&stores, &sent[8]).await;
            assert_eq!(store.bounds(&cat).await.unwrap().0, 8);
            assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8]);
        }
        let with_direct = |sent: &[Message]| {
            let mut all = sent[..6].to_vec();
            all.push(direct.clone());
            all.extend_from_slice(&sent[6..]);
            all
        };
        let store = open(dir.path(), 1000);
        let stores = store.stores();
        assert_log_is(&store, &ann, &with_direct(&sent)).await;
        assert_log_is(&store, &cat, &sent[..8]).await;
        // After the reopen ann's open run goes on from where the timeline is.
        sent.push(group_message(&ben, &group.id, 9));
        send_to_group(&stores, &sent[9]).await;
        assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8]);
        assert_log_is(&store, &ann, &with_direct(&sent)).await;
        assert_log_is(&store, &cat, &sent[..8]).await;

        // Recipients that are not the members (a send that raced cat's
        // leave): plain rows, the timeline does not move.
        let raced = group_message(&ben, &group.id, 10);
        store.insert_and_append(&raced, &[ann.clone(), ben.clone(), cat.clone()], &store).await.unwrap();
        assert_eq!(timeline_rows(&store), 10);
        assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8, 12]);
        let mut cat_log = sent[..8].to_vec();
        cat_log.push(raced.clone());
        assert_log_is(&store, &cat, &cat_log).await;
        sent.push(raced);
        sent.push(group_message(&ann, &group.id, 11));
        send_to_group(&stores, &sent[11]).await;
        assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8, 12, 13]);
        assert_log_is(&store, &ann, &with_direct(&sent)).await;
        assert_log_is(&store, &cat, &cat_log).await;

        // Recipients read before dan joined miss dan, whose run is open:
        // were that send in the timeline, dan's run would claim it.
        let dan = UserId::parse("dan", "u").unwrap();
        stores.groups.add_members(&group.id, &members_of(&[&dan])).await.unwrap();
        let welcome = group_message(&ann, &group.id, 12);
        send_to_group(&stores, &welcome).await;
        let stale = group_message(&ben, &group.id, 13);
        store.insert_and_append(&stale, &[ann.clone(), ben.clone()], &store).await.unwrap();
        drop((stores, store));
        let store = open(dir.path(), 1000);
        assert_log_is(&store, &dan, std::slice::from_ref(&welcome)).await;
        sent.push(welcome);
        sent.push(stale);
        assert_log_is(&store, &ann, &with_direct(&sent)).await;
    }

    #[tokio::test]
    async fn reopen_keeps_messages_groups_and_log_positions() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = open(dir.path(), 5).stores();
            crate::conformance::write_sample(&store).await
        };
        let store = open(dir.path(), 5).stores();
        crate::conformance::check_sample(&store, &before).await;
    }
}
