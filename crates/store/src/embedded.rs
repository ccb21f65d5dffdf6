//! The single-node backend: one fjall database in a data directory.
//!
//! Writes go to fjall's journal without fsync and are then made durable by a
//! group commit ([`Syncer`]): concurrent writers share one fsync, so the
//! R1 rule (ack only what is durable) costs one fsync per batch of writers,
//! not per message. fjall calls are short and run inline on the async task;
//! only fsync, which can take milliseconds, goes to the blocking pool.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use natter_proto::v1;
use natter_types::{
    ConversationKey, Error, Group, GroupId, GroupMember, GroupRole, LogEvent, Message, MessageId, Result, Subscription,
    UserId, WebhookEvent,
};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::watch;

use crate::{
    Appended, CursorExpired, Direction, GroupStore, Inserted, LogPage, MembersAdded, MessageStore, PresenceStore,
    Stores, UserLog, WebhookOutbox,
};

/// Options of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Events kept per user log; older ones are dropped (a device resuming
    /// from before them is told to resync).
    pub log_retention_events: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { log_retention_events: 10_000 }
    }
}

/// Every keyspace of the embedded store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
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
    subs: Keyspace,
    subs_by_target: Keyspace,
    presence: Keyspace,
    outbox: Keyspace,
    syncer: Syncer,
    options: EmbeddedOptions,
    /// Serialises read-check-write sequences per aggregate kind. Held only
    /// around in-memory fjall calls, never across an await.
    message_lock: Mutex<()>,
    group_lock: Mutex<()>,
    meta_lock: Mutex<()>,
    presence_lock: Mutex<()>,
    /// Last queue id per webhook receiver, loaded lazily.
    outbox_heads: Mutex<HashMap<String, u64>>,
    log_heads: Mutex<HashMap<UserId, LogHead>>,
}

#[derive(Debug, Clone, Copy)]
struct LogHead {
    /// Last seq assigned (possibly not yet durable).
    assigned: u64,
    /// Last seq known durable; reads stop here.
    durable: u64,
    /// Oldest retained seq (`assigned + 1` when the log is empty).
    oldest: u64,
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
        let db = Database::builder(path).open().map_err(storage_err)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(storage_err);
        let inner = Inner {
            messages: ks("messages")?,
            dedup: ks("dedup")?,
            groups: ks("groups")?,
            members: ks("members")?,
            user_groups: ks("user_groups")?,
            log: ks("user_log")?,
            log_meta: ks("user_log_meta")?,
            subs: ks("presence_subs")?,
            subs_by_target: ks("presence_subs_by_target")?,
            presence: ks("presence")?,
            outbox: ks("webhook_outbox")?,
            syncer: Syncer::new(db.clone()),
            db,
            options,
            message_lock: Mutex::new(()),
            group_lock: Mutex::new(()),
            meta_lock: Mutex::new(()),
            presence_lock: Mutex::new(()),
            outbox_heads: Mutex::new(HashMap::new()),
            log_heads: Mutex::new(HashMap::new()),
        };
        Ok(Self { inner: Arc::new(inner) })
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
        let ticket = self.inner.syncer.written();
        self.inner.syncer.sync(ticket).await
    }
}

/// Group commit: a writer commits its batch, takes a ticket, and awaits
/// `sync(ticket)`. The first waiter becomes the leader and fsyncs everything
/// written so far; the others wait for it, so N concurrent writers pay for
/// about one fsync instead of N.
struct Syncer {
    db: Database,
    state: Mutex<SyncState>,
    synced_tx: watch::Sender<u64>,
}

struct SyncState {
    written: u64,
    synced: u64,
    syncing: bool,
}

impl Syncer {
    fn new(db: Database) -> Self {
        let (synced_tx, _) = watch::channel(0);
        Self { db, state: Mutex::new(SyncState { written: 0, synced: 0, syncing: false }), synced_tx }
    }

    /// Called right after a batch commit: the ticket that covers it.
    fn ticket(&self) -> u64 {
        let mut s = self.state.lock();
        s.written += 1;
        s.written
    }

    fn written(&self) -> u64 {
        self.state.lock().written
    }

    async fn sync(&self, ticket: u64) -> Result<()> {
        let mut synced_rx = self.synced_tx.subscribe();
        loop {
            let lead = {
                let mut s = self.state.lock();
                if s.synced >= ticket {
                    return Ok(());
                }
                if s.syncing {
                    None
                } else {
                    s.syncing = true;
                    Some(s.written)
                }
            };
            let Some(target) = lead else {
                // The leader always sends, on success or failure; then re-check.
                if synced_rx.changed().await.is_err() {
                    return Err(Error::unavailable("storage: syncer stopped"));
                }
                continue;
            };
            let db = self.db.clone();
            let result = tokio::task::spawn_blocking(move || db.persist(PersistMode::SyncAll)).await;
            let synced = {
                let mut s = self.state.lock();
                s.syncing = false;
                if matches!(result, Ok(Ok(()))) {
                    s.synced = s.synced.max(target);
                }
                s.synced
            };
            self.synced_tx.send_replace(synced);
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(storage_err(e)),
                Err(e) => return Err(storage_err(e)),
            }
        }
    }
}

// ---------------------------------------------------------------- messages

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn insert_message(&self, message: &Message) -> Result<Inserted> {
        let inner = &self.inner;
        let dedup_key = key2(message.from.as_str(), message.client_msg_id.as_bytes());
        let conversation = message.conversation();
        let (ticket, outcome) = {
            let _guard = inner.message_lock.lock();
            match inner.dedup.get(&dedup_key).map_err(storage_err)? {
                Some(existing) => {
                    let record: v1::DedupRecord = decode(&existing)?;
                    let conv = ConversationKey::from_stored(record.conversation);
                    let stored = inner
                        .messages
                        .get(key2(conv.as_str(), &record.msg_id.to_be_bytes()))
                        .map_err(storage_err)?
                        .ok_or_else(|| Error::internal("dedup record without its message"))?;
                    let stored: Message = decode::<v1::Message>(&stored)?.try_into()?;
                    // The original may still be waiting for its fsync.
                    (inner.syncer.written(), Inserted::Duplicate { message: stored, fanned_out: record.fanned_out })
                }
                None => {
                    let record = v1::DedupRecord {
                        msg_id: message.id.0,
                        conversation: conversation.as_str().to_owned(),
                        timestamp: message.timestamp,
                        fanned_out: false,
                    };
                    let mut batch = inner.db.batch();
                    batch.insert(
                        &inner.messages,
                        key2(conversation.as_str(), &message.id.0.to_be_bytes()),
                        v1::Message::from(message).encode_to_vec(),
                    );
                    batch.insert(&inner.dedup, dedup_key, record.encode_to_vec());
                    batch.commit().map_err(storage_err)?;
                    (inner.syncer.ticket(), Inserted::New)
                }
            }
        };
        inner.syncer.sync(ticket).await?;
        Ok(outcome)
    }

    async fn mark_fanned_out(&self, sender: &UserId, client_msg_id: &str) -> Result<()> {
        let inner = &self.inner;
        let key = key2(sender.as_str(), client_msg_id.as_bytes());
        let _guard = inner.message_lock.lock();
        let Some(existing) = inner.dedup.get(&key).map_err(storage_err)? else {
            return Err(Error::not_found("no such client message id"));
        };
        let mut record: v1::DedupRecord = decode(&existing)?;
        record.fanned_out = true;
        // Not fsynced on purpose: losing the mark only repeats a fan-out,
        // which clients absorb by deduplicating on the message id.
        inner.dedup.insert(key, record.encode_to_vec()).map_err(storage_err)
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

impl EmbeddedStore {
    fn load_group(&self, id: &GroupId) -> Result<Option<v1::Group>> {
        let raw = self.inner.groups.get(id.as_str()).map_err(storage_err)?;
        raw.map(|bytes| decode::<v1::GroupRecord>(&bytes).map(|r| r.group.unwrap_or_default())).transpose()
    }

    fn put_group(batch: &mut fjall::OwnedWriteBatch, ks: &Keyspace, group: v1::Group) {
        let id = group.id.clone();
        batch.insert(ks, id, v1::GroupRecord { group: Some(group) }.encode_to_vec());
    }

    fn put_member(&self, batch: &mut fjall::OwnedWriteBatch, id: &GroupId, member: &GroupMember) {
        let inner = &self.inner;
        batch.insert(
            &inner.members,
            key2(id.as_str(), member.user_id.as_str().as_bytes()),
            v1::GroupMember::from(member).encode_to_vec(),
        );
        batch.insert(&inner.user_groups, key2(member.user_id.as_str(), id.as_str().as_bytes()), Vec::new());
    }

    fn decode_member(bytes: &[u8]) -> Result<GroupMember> {
        let m: v1::GroupMember = decode(bytes)?;
        Ok(GroupMember {
            user_id: UserId::parse(&m.user_id, "member")?,
            role: natter_proto::group_role(m.role)?,
            joined_at: m.joined_at,
        })
    }

    /// Commits under the group lock, then waits for durability outside it.
    async fn commit_group_write(&self, build: impl FnOnce(&mut fjall::OwnedWriteBatch) -> Result<()>) -> Result<()> {
        let ticket = {
            let _guard = self.inner.group_lock.lock();
            let mut batch = self.inner.db.batch();
            build(&mut batch)?;
            batch.commit().map_err(storage_err)?;
            self.inner.syncer.ticket()
        };
        self.inner.syncer.sync(ticket).await
    }
}

fn group_not_found(id: &GroupId) -> Error {
    Error::not_found(format!("group {id} does not exist"))
}

#[async_trait]
impl GroupStore for EmbeddedStore {
    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<()> {
        self.commit_group_write(|batch| {
            if self.load_group(&group.id)?.is_some() {
                return Err(Error::new(natter_types::ErrorCode::Conflict, format!("group {} exists", group.id)));
            }
            let mut record = v1::Group::from(group);
            record.member_count = members.len() as u32;
            Self::put_group(batch, &self.inner.groups, record);
            for m in members {
                self.put_member(batch, &group.id, m);
            }
            Ok(())
        })
        .await
    }

    async fn get_group(&self, id: &GroupId) -> Result<Option<Group>> {
        self.load_group(id)?.map(|g| Ok(g.try_into()?)).transpose()
    }

    async fn get_member(&self, id: &GroupId, user: &UserId) -> Result<Option<GroupMember>> {
        let raw = self.inner.members.get(key2(id.as_str(), user.as_str().as_bytes())).map_err(storage_err)?;
        raw.map(|b| Self::decode_member(&b)).transpose()
    }

    async fn add_members(&self, id: &GroupId, members: &[GroupMember]) -> Result<MembersAdded> {
        let mut outcome = MembersAdded { added: Vec::new(), member_count: 0 };
        self.commit_group_write(|batch| {
            let mut group = self.load_group(id)?.ok_or_else(|| group_not_found(id))?;
            let mut seen = std::collections::HashSet::new();
            for m in members {
                let key = key2(id.as_str(), m.user_id.as_str().as_bytes());
                if seen.insert(&m.user_id) && !self.inner.members.contains_key(&key).map_err(storage_err)? {
                    outcome.added.push(m.user_id.clone());
                    self.put_member(batch, id, m);
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
            Self::put_group(batch, &self.inner.groups, group);
            Ok(())
        })
        .await?;
        Ok(outcome)
    }

    async fn remove_members(&self, id: &GroupId, users: &[UserId]) -> Result<Vec<UserId>> {
        let mut removed = Vec::new();
        self.commit_group_write(|batch| {
            let mut group = self.load_group(id)?.ok_or_else(|| group_not_found(id))?;
            for user in users {
                let key = key2(id.as_str(), user.as_str().as_bytes());
                if !removed.contains(user) && self.inner.members.contains_key(&key).map_err(storage_err)? {
                    batch.remove(&self.inner.members, key);
                    batch.remove(&self.inner.user_groups, key2(user.as_str(), id.as_str().as_bytes()));
                    removed.push(user.clone());
                }
            }
            group.member_count = group.member_count.saturating_sub(removed.len() as u32);
            Self::put_group(batch, &self.inner.groups, group);
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    async fn set_role(&self, id: &GroupId, user: &UserId, role: GroupRole) -> Result<()> {
        self.commit_group_write(|batch| {
            let key = key2(id.as_str(), user.as_str().as_bytes());
            let raw = self.inner.members.get(&key).map_err(storage_err)?;
            let mut member = match raw {
                Some(bytes) => Self::decode_member(&bytes)?,
                None => {
                    return Err(Error::not_found(format!("{user} is not a member of group {id}")));
                }
            };
            member.role = role;
            self.put_member(batch, id, &member);
            if role == GroupRole::Owner {
                let mut group = self.load_group(id)?.ok_or_else(|| group_not_found(id))?;
                group.owner = user.to_string();
                Self::put_group(batch, &self.inner.groups, group);
            }
            Ok(())
        })
        .await
    }

    async fn delete_group(&self, id: &GroupId) -> Result<()> {
        self.commit_group_write(|batch| {
            if self.load_group(id)?.is_none() {
                return Err(group_not_found(id));
            }
            for item in self.inner.members.prefix(key2(id.as_str(), &[])) {
                let (key, _) = item.into_inner().map_err(storage_err)?;
                let user = &key[id.as_str().len() + 1..];
                let mut index_key = user.to_vec();
                index_key.push(0);
                index_key.extend_from_slice(id.as_str().as_bytes());
                batch.remove(&self.inner.user_groups, index_key);
                batch.remove(&self.inner.members, key);
            }
            batch.remove(&self.inner.groups, id.as_str());
            Ok(())
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
            .map(|item| Self::decode_member(&item.into_inner().map_err(storage_err)?.1))
            .collect()
    }

    async fn member_ids(&self, id: &GroupId) -> Result<Vec<UserId>> {
        let skip = id.as_str().len() + 1;
        self.inner
            .members
            .prefix(key2(id.as_str(), &[]))
            .map(|item| {
                let key = item.key().map_err(storage_err)?;
                let raw = std::str::from_utf8(&key[skip..]).map_err(storage_err)?;
                UserId::parse(raw, "member")
            })
            .collect()
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        let skip = user.as_str().len() + 1;
        self.inner
            .user_groups
            .prefix(key2(user.as_str(), &[]))
            .map(|item| {
                let key = item.key().map_err(storage_err)?;
                let raw = std::str::from_utf8(&key[skip..]).map_err(storage_err)?;
                GroupId::parse(raw, "group")
            })
            .collect()
    }
}

// ---------------------------------------------------------------- user log

impl EmbeddedStore {
    fn head_of(&self, heads: &mut HashMap<UserId, LogHead>, user: &UserId) -> Result<LogHead> {
        if let Some(head) = heads.get(user) {
            return Ok(*head);
        }
        let log = &self.inner.log;
        let prefix = key2(user.as_str(), &[]);
        let last = log.prefix(&prefix).next_back().map(|g| g.key().map_err(storage_err)).transpose()?;
        let head = match last {
            Some(last) => {
                let first = log.prefix(&prefix).next().map(|g| g.key().map_err(storage_err)).transpose()?;
                let last = seq_of(&last);
                LogHead { assigned: last, durable: last, oldest: first.map_or(last + 1, |k| seq_of(&k)) }
            }
            // Retention always keeps the newest event, so an empty log is a new one.
            None => LogHead { assigned: 0, durable: 0, oldest: 1 },
        };
        heads.insert(user.clone(), head);
        Ok(head)
    }

    fn meta_u64(&self, user: &UserId, name: &[u8]) -> Result<u64> {
        let raw = self.inner.log_meta.get(key2(user.as_str(), name)).map_err(storage_err)?;
        Ok(raw.map_or(0, |v| seq_of(&v)))
    }
}

#[async_trait]
impl UserLog for EmbeddedStore {
    async fn append(&self, users: &[UserId], event: &LogEvent) -> Result<Vec<Appended>> {
        let inner = &self.inner;
        let bytes = v1::LogEvent::from(event).encode_to_vec();
        let retention = inner.options.log_retention_events.max(1);
        let (ticket, seqs) = {
            let mut heads = inner.log_heads.lock();
            let mut batch = inner.db.batch();
            let mut seqs = Vec::with_capacity(users.len());
            let mut updated = Vec::with_capacity(users.len());
            for user in users {
                let mut head = self.head_of(&mut heads, user)?;
                head.assigned += 1;
                batch.insert(&inner.log, key2(user.as_str(), &head.assigned.to_be_bytes()), bytes.clone());
                // A loop, not an if: a lowered retention trims the surplus at once.
                while head.assigned >= head.oldest + retention {
                    batch.remove(&inner.log, key2(user.as_str(), &head.oldest.to_be_bytes()));
                    head.oldest += 1;
                }
                seqs.push(Appended { seq: head.assigned, prev: head.assigned - 1 });
                updated.push((user, head));
            }
            batch.commit().map_err(storage_err)?;
            for (user, head) in updated {
                if let Some(h) = heads.get_mut(user) {
                    h.assigned = h.assigned.max(head.assigned);
                    h.oldest = h.oldest.max(head.oldest);
                }
            }
            (inner.syncer.ticket(), seqs)
        };
        inner.syncer.sync(ticket).await?;
        let mut heads = inner.log_heads.lock();
        for (user, appended) in users.iter().zip(&seqs) {
            if let Some(h) = heads.get_mut(user) {
                h.durable = h.durable.max(appended.seq);
            }
        }
        Ok(seqs)
    }

    async fn read(&self, user: &UserId, after: u64, limit: usize) -> Result<Result<LogPage, CursorExpired>> {
        let head = {
            let mut heads = self.inner.log_heads.lock();
            self.head_of(&mut heads, user)?
        };
        if after > head.durable || (after + 1 < head.oldest && after < head.durable) {
            return Ok(Err(CursorExpired { requested: after, oldest: head.oldest, head: head.durable }));
        }
        let start = key2(user.as_str(), &(after + 1).to_be_bytes());
        let end = key2(user.as_str(), &head.durable.to_be_bytes());
        let events = self
            .inner
            .log
            .range(start..=end)
            .take(limit)
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                let event: LogEvent = decode::<v1::LogEvent>(&value)?.try_into()?;
                Ok((seq_of(&key), event))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ok(LogPage { events, head: head.durable }))
    }

    async fn bounds(&self, user: &UserId) -> Result<(u64, u64)> {
        let mut heads = self.inner.log_heads.lock();
        let head = self.head_of(&mut heads, user)?;
        Ok((head.durable, if head.durable == 0 { 0 } else { head.oldest }))
    }

    async fn ack(&self, user: &UserId, seq: u64) -> Result<()> {
        let _guard = self.inner.meta_lock.lock();
        if seq > self.meta_u64(user, b"acked")? {
            // Not fsynced: a lost ack only means a new device replays a little more.
            self.inner
                .log_meta
                .insert(key2(user.as_str(), b"acked"), seq.to_be_bytes().to_vec())
                .map_err(storage_err)?;
        }
        Ok(())
    }

    async fn acked(&self, user: &UserId) -> Result<u64> {
        self.meta_u64(user, b"acked")
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

impl EmbeddedStore {
    /// The subscriber's stored subscriptions, expired ones included.
    fn subs_of(&self, subscriber: &UserId) -> Result<Vec<Subscription>> {
        let skip = subscriber.as_str().len() + 1;
        self.inner
            .subs
            .prefix(key2(subscriber.as_str(), &[]))
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                Ok(Subscription { target: user_after_prefix(&key, skip, "target")?, expires_at: time_of(&value) })
            })
            .collect()
    }

    fn put_sub(&self, batch: &mut fjall::OwnedWriteBatch, subscriber: &UserId, target: &UserId, expires_at: i64) {
        let at = expires_at.to_be_bytes().to_vec();
        batch.insert(&self.inner.subs, key2(subscriber.as_str(), target.as_str().as_bytes()), at.clone());
        batch.insert(&self.inner.subs_by_target, key2(target.as_str(), subscriber.as_str().as_bytes()), at);
    }

    fn delete_sub(&self, batch: &mut fjall::OwnedWriteBatch, subscriber: &UserId, target: &UserId) {
        batch.remove(&self.inner.subs, key2(subscriber.as_str(), target.as_str().as_bytes()));
        batch.remove(&self.inner.subs_by_target, key2(target.as_str(), subscriber.as_str().as_bytes()));
    }

    /// Commits under the presence lock, then waits for durability outside it.
    async fn commit_presence_write<T>(
        &self,
        build: impl FnOnce(&mut fjall::OwnedWriteBatch) -> Result<T>,
    ) -> Result<T> {
        let (ticket, value) = {
            let _guard = self.inner.presence_lock.lock();
            let mut batch = self.inner.db.batch();
            let value = build(&mut batch)?;
            batch.commit().map_err(storage_err)?;
            (self.inner.syncer.ticket(), value)
        };
        self.inner.syncer.sync(ticket).await?;
        Ok(value)
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
        self.commit_presence_write(|batch| {
            let mut others = Vec::new();
            for sub in self.subs_of(subscriber)? {
                if sub.expires_at <= now {
                    self.delete_sub(batch, subscriber, &sub.target);
                } else if !targets.contains(&sub.target) {
                    others.push(sub);
                }
            }
            let mut fresh: Vec<&UserId> = targets.iter().collect();
            fresh.sort();
            fresh.dedup();
            for target in &fresh {
                self.put_sub(batch, subscriber, target, expires_at);
            }
            let excess = (others.len() + fresh.len()).saturating_sub(cap);
            others.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then_with(|| a.target.cmp(&b.target)));
            let evicted: Vec<Subscription> = others.into_iter().take(excess).collect();
            for sub in &evicted {
                self.delete_sub(batch, subscriber, &sub.target);
            }
            Ok(evicted)
        })
        .await
    }

    async fn unsubscribe(&self, subscriber: &UserId, targets: &[UserId]) -> Result<()> {
        self.commit_presence_write(|batch| {
            for target in targets {
                self.delete_sub(batch, subscriber, target);
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
        let live: Vec<Subscription> = self.subs_of(subscriber)?.into_iter().filter(|s| s.expires_at > now).collect();
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
        self.commit_presence_write(|batch| {
            let key = key2(subscriber.as_str(), target.as_str().as_bytes());
            match self.inner.subs.get(&key).map_err(storage_err)? {
                Some(value) if time_of(&value) == expires_at => {
                    self.delete_sub(batch, subscriber, target);
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
        self.commit_presence_write(|batch| {
            let description = match description {
                Some(d) => d.to_owned(),
                None => match self.inner.presence.get(user.as_str()).map_err(storage_err)? {
                    Some(bytes) => decode::<v1::PresenceRecord>(&bytes)?.description,
                    None => String::new(),
                },
            };
            batch.insert(&self.inner.presence, user.as_str(), v1::PresenceRecord { description, time }.encode_to_vec());
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
        let inner = &self.inner;
        let ticket = {
            let mut heads = inner.outbox_heads.lock();
            let head = match heads.get(receiver) {
                Some(head) => *head,
                None => {
                    let last = inner.outbox.prefix(key2(receiver, &[])).next_back();
                    last.map(|g| g.key().map(|k| seq_of(&k))).transpose().map_err(storage_err)?.unwrap_or(0)
                }
            };
            let mut batch = inner.db.batch();
            let mut id = head;
            for event in events {
                id += 1;
                batch.insert(
                    &inner.outbox,
                    key2(receiver, &id.to_be_bytes()),
                    v1::WebhookEvent::from(event).encode_to_vec(),
                );
            }
            batch.commit().map_err(storage_err)?;
            heads.insert(receiver.to_owned(), id);
            inner.syncer.ticket()
        };
        inner.syncer.sync(ticket).await
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
        let inner = &self.inner;
        let ticket = {
            let mut batch = inner.db.batch();
            let end = key2(receiver, &up_to.to_be_bytes());
            for item in inner.outbox.range(key2(receiver, &[])..=end) {
                batch.remove(&inner.outbox, item.key().map_err(storage_err)?);
            }
            batch.commit().map_err(storage_err)?;
            inner.syncer.ticket()
        };
        inner.syncer.sync(ticket).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn open(dir: &Path, retention: u64) -> EmbeddedStore {
        EmbeddedStore::open(dir, EmbeddedOptions { log_retention_events: retention }).expect("open")
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
        let event = LogEvent::GroupChange(natter_types::GroupChange {
            kind: natter_types::GroupChangeKind::Created,
            group_id: GroupId::from_id(1),
            group_name: String::new(),
            operator: UserId::system(),
            members: vec![],
            time: 0,
        });
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
