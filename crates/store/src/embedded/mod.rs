//! The single-node backend: one fjall database in a data directory.
//!
//! # Keyspaces
//!
//! ```text
//! messages                 conversation \0 msg_id_be    -> Message
//! dedup                    sender \0 client_msg_id      -> DedupRecord (idempotency, dedup_expiry.rs)
//! groups                   group                        -> GroupRecord
//! members                  group \0 user                -> GroupMember
//! user_groups              user \0 group                (the user->groups index)
//! user_log                 user \0 first_seq_be         -> StoredLogEntry: an entry, a run, a group run (log.rs)
//! group_log                conversation \0 pos_be       -> the entry: each group's timeline
//! user_log_meta            user \0 "acked"              -> acked seq
//! presence_subs            subscriber \0 target         -> expires_at
//! presence_subs_by_target  target \0 subscriber         -> expires_at
//! presence                 user                         -> PresenceRecord
//! webhook_outbox           receiver \0 id_be            -> WebhookEvent
//! open_sessions            user \0 session              -> SessionInfo (the SessionJournal)
//! conversation_heads       conversation                 -> ConversationHeadRecord
//! user_conversations       user \0 conversation         -> UserConversationRecord
//! removed_messages         user \0 conversation \0 id_be -> pos_be (conversations.rs)
//! recalled_messages        conversation \0 id_be       -> pos_be (conversations.rs)
//! group_reads              conversation \0 id_be reader -> time_be (receipts.rs)
//! group_read_counts        conversation \0 id_be       -> count_be
//! ```
//!
//! A log entry is a group change, or a reference to its message in
//! `messages`, so a group message is stored once. Each keyspace's memtable is
//! [`EmbeddedOptions::memtable_bytes`], and compactions cut their output
//! tables at the same size; fjall records both when it creates the keyspace.
//!
//! # Writes and reads
//!
//! Every write is a job for one writer (`writer.rs`): a round runs every
//! queued job, writes the round's log rows, fsyncs once, then answers the
//! round's callers (the group commit). The R1 rule (ack only what is
//! durable) so costs one fsync per round, not per message; async tasks never
//! block on the journal or the disk, and read-check-write sequences need no
//! locks. Reads run inline on the caller's task (fjall reads are memtable or
//! page-cache hits) and stop at each log's durable head, which the writer
//! moves after the fsync.
//!
//! A round's latency follows fjall's: fjall installs a compaction's result
//! (fsyncing its last table and the version file) and a flush's version file
//! under the lock every write takes, and the round's fsync can wait for the
//! disk's writeback of a table (docs/PERFORMANCE.md#11-tail-latency).
//! Hence small memtables and compaction tables, and one fjall worker
//! ([`EmbeddedStore::open`]).
//!
//! Sending a message is one job (`MessageStore::insert_and_append`,
//! `messages.rs`) that writes nothing itself: the message, its idempotency
//! record (marked fanned out) and its log entries all go into the round's
//! rows batch, so a send is atomic, and a retry or an `insert_message` later
//! in the same round finds the send in the round (`Round::sends`).
//!
//! Group messages are read, not written, per member: a member's log follows
//! the group's timeline through an open group run, without a row per message
//! (`log.rs`); member lists come from memory (`member_cache.rs`). Log
//! retention is by count per user ([`EmbeddedOptions::log_retention_events`]).
//!
//! # Memory
//!
//! The memtable keeper (`keeper.rs`) frees flushed memtables off fjall's
//! lock; log heads and timeline positions are cached up to
//! [`EmbeddedOptions::heads_cached`] (`log.rs`); member lists up to a fixed
//! count of ids (`member_cache.rs`).
//!
//! # Lifecycle
//!
//! [`EmbeddedStore::open`] runs the keeper's thread and the store's stop in
//! the given task set's [`Stage::Storage`], which stops after sessions and
//! services, so their writes in flight finish first. The stop refuses new
//! writes (UNAVAILABLE), waits until every write already accepted has been
//! answered, and syncs the database; the keeper's thread ends on the same
//! token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use natter_runtime::{Stage, Tasks};
use natter_types::{Error, Result, UserId};
use parking_lot::Mutex;

use crate::Stores;

mod conversations;
mod dedup_expiry;
mod groups;
mod keeper;
mod log;
mod member_cache;
mod messages;
mod outbox;
mod presence;
mod receipts;
mod sessions;
#[cfg(test)]
mod test_util;
mod writer;

use dedup_expiry::DedupExpiry;
use keeper::Keeper;
use log::LogHead;
use member_cache::MemberCache;
use writer::Writer;

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
    /// Users' log heads (and groups' timeline positions, conversation heads
    /// and users' conversation states) kept in memory at most, ~150 bytes
    /// each. Past it, a quarter of them is dropped between two writer rounds
    /// and read back from disk when next needed, so memory does not grow
    /// with every user who ever got a message.
    pub heads_cached: usize,
}

/// The keyspace of the idempotency records.
const DEDUP: &str = "dedup";

/// Default [`EmbeddedOptions::memtable_bytes`], against fjall's 64 MiB: writes
/// stall while fjall retires a flushed memtable and while it installs a
/// compaction's result, and those stalls grow with the memtable, while
/// throughput does not (docs/PERFORMANCE.md#settings-that-matter).
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

/// Every keyspace of the embedded store; cheap to clone. Its tasks belong to
/// the task set it was opened with, and it stops with that set's storage
/// stage. Dropping the last clone waits for a running write round to finish.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// The memtable keeper's counts; its thread belongs to the task set.
    #[cfg_attr(not(test), expect(dead_code, reason = "only tests read the keeper's counts"))]
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
    /// Conversation state (`conversations.rs`).
    conversation_heads: Keyspace,
    user_conversations: Keyspace,
    removed_messages: Keyspace,
    recalled_messages: Keyspace,
    /// Group read receipts (`receipts.rs`).
    group_reads: Keyspace,
    group_read_counts: Keyspace,
    options: EmbeddedOptions,
    /// Last queue id per webhook receiver, loaded lazily (writer only).
    outbox_heads: Mutex<HashMap<String, u64>>,
    /// Shared by the writer (which alone moves `assigned`, `oldest` and,
    /// after each fsync, `durable`) and readers (which stop at `durable`).
    log_heads: Mutex<UserMap<LogHead>>,
    /// Last position assigned per group timeline, loaded lazily (writer only).
    timeline_heads: Mutex<HashMap<Arc<str>, u64>>,
    /// Conversation heads and users' states as written (writer only).
    conversations_cached: Mutex<conversations::ConversationRows>,
    /// Member ids of recently used groups; see [`EmbeddedStore::write_members`].
    member_cache: MemberCache,
}

impl Inner {
    fn keyspaces(&self) -> [&Keyspace; 19] {
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
            &self.conversation_heads,
            &self.user_conversations,
            &self.removed_messages,
            &self.recalled_messages,
            &self.group_reads,
            &self.group_read_counts,
        ]
    }
}

/// Maps by user id on the delivery path, where a group send looks up every
/// member several times: foldhash, not SipHash (randomly seeded per process).
type UserMap<V> = foldhash::HashMap<UserId, V>;

/// Drops entries that `droppable` allows until `map` is down to `keep`,
/// once it has grown past `cap`; which ones is the map's order, not age.
fn drop_excess<K, V, S>(
    map: &mut std::collections::HashMap<K, V, S>,
    cap: usize,
    keep: usize,
    droppable: impl Fn(&V) -> bool,
) {
    if map.len() > cap {
        let mut excess = map.len() - keep;
        map.retain(|_, value| {
            let gone = excess > 0 && droppable(value);
            excess -= usize::from(gone);
            !gone
        });
    }
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
    /// Opens (or creates) the store in `path`. Its keeper thread and its
    /// stop run in `tasks` ([`Stage::Storage`]): once that stage is stopped,
    /// writes are refused with UNAVAILABLE, every write accepted before has
    /// been answered, and the database is synced.
    pub fn open(path: &Path, options: EmbeddedOptions, tasks: &Tasks) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(storage_err)?;
        // One background worker for flushes and compactions: with more,
        // fjall 3.1's worker 0 hands every compaction request back to the
        // queue and takes it again, a busy loop for as long as another worker
        // compacts (docs/PERFORMANCE.md#settings-that-matter).
        let expiry = DedupExpiry::factory(options.idempotency_window);
        let db = Database::builder(path)
            .worker_threads(1)
            .with_compaction_filter_factories(Arc::new(move |keyspace| (keyspace == DEDUP).then(|| expiry.clone())))
            .open()
            .map_err(storage_err)?;
        let memtable = options.memtable_bytes;
        // Compactions write tables of a memtable's size, not fjall's 64 MiB:
        // a compaction syncs its last table while it holds the keyspace's
        // version lock, which every write waits for
        // (docs/PERFORMANCE.md#settings-that-matter). fjall records the size with the
        // keyspace, as it does the memtable's.
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
            conversation_heads: ks("conversation_heads")?,
            user_conversations: ks("user_conversations")?,
            removed_messages: ks("removed_messages")?,
            recalled_messages: ks("recalled_messages")?,
            group_reads: ks("group_reads")?,
            group_read_counts: ks("group_read_counts")?,
            db,
            options,
            outbox_heads: Mutex::new(HashMap::new()),
            log_heads: Mutex::new(UserMap::default()),
            timeline_heads: Mutex::new(HashMap::new()),
            conversations_cached: Mutex::default(),
            member_cache: MemberCache::new(),
        };
        let keeper = Keeper::start(inner.keyspaces().into_iter().cloned().collect(), tasks).map_err(storage_err)?;
        let inner = Arc::new(inner);
        let writer = Arc::new(Writer::new(inner.clone()));
        let store = Self { keeper: Arc::new(keeper), inner, writer };
        let stopping = store.clone();
        tasks.spawn(Stage::Storage, "store", |token| async move {
            token.cancelled().await;
            stopping.stop().await
        });
        Ok(store)
    }

    /// Refuses new writes, waits for those already accepted, then syncs.
    async fn stop(&self) -> anyhow::Result<()> {
        self.writer.close().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.db.persist(PersistMode::SyncAll)).await??;
        tracing::info!("store stopped");
        Ok(())
    }

    pub fn stores(&self) -> Stores {
        Stores {
            messages: Arc::new(self.clone()),
            groups: Arc::new(self.clone()),
            log: Arc::new(self.clone()),
            presence: Arc::new(self.clone()),
            outbox: Arc::new(self.clone()),
            conversations: Arc::new(self.clone()),
            receipts: Arc::new(self.clone()),
        }
    }

    /// Makes every write so far durable (the store's stop does too).
    pub async fn sync_all(&self) -> Result<()> {
        self.writer
            .write(|round| {
                round.sync();
                Ok(())
            })
            .await
    }
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::embedded::test_util::*;

    /// The memtable size reaches fjall: a keyspace's memtable is flushed to a
    /// table once it passes the size, and not before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memtables_are_flushed_at_the_configured_size() {
        let (users, event) = (users(50), kilobyte_event());
        // 20 appends of ~1 KB to 50 users: ~1 MB into `user_log`.
        for (memtable_bytes, flushed) in [(256 << 10, true), (64 << 20, false)] {
            let dir = tempfile::tempdir().unwrap();
            let options = EmbeddedOptions { memtable_bytes, ..EmbeddedOptions::default() };
            let store = open_with(dir.path(), options);
            for _ in 0..20 {
                UserLog::append(&*store, &users, &event).await.unwrap();
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
        let store = open_with(dir.path(), EmbeddedOptions { memtable_bytes, ..EmbeddedOptions::default() });
        // ~3 MB into `user_log`, every table spanning all 50 users' keys, so
        // that L0 tables merge with the tables below rather than move down.
        for _ in 0..60 {
            UserLog::append(&*store, &users, &event).await.unwrap();
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

    /// The storage stage's stop ends the keeper's thread, and the store
    /// refuses writes from then on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_stop_the_keeper_has_ended_and_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = Tasks::new();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap();
        let ann = UserId::parse("ann", "u").unwrap();
        UserLog::append(&store, std::slice::from_ref(&ann), &group_created()).await.unwrap();
        assert!(!store.keeper.ended());
        tasks.stop(Duration::from_secs(30)).await.unwrap();
        assert!(store.keeper.ended(), "the keeper's thread has ended");
        let refused = UserLog::append(&store, std::slice::from_ref(&ann), &group_created()).await.unwrap_err();
        assert_eq!(refused.code, natter_types::ErrorCode::Unavailable, "{refused:?}");
        assert_eq!(store.bounds(&ann).await.unwrap(), (1, 1), "reads still answer");
    }

    /// A write queued when the stop comes is written and answered before
    /// the stop ends, and is there after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_accepted_before_the_stop_is_durable_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ann = UserId::parse("ann", "u").unwrap();
        let tasks = Tasks::new();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap();
        // The write waits behind a round held open, so that the stop finds it queued.
        let (release, holder) = store.writer.hold().await;
        let append = tokio::spawn({
            let (store, ann) = (store.clone(), ann.clone());
            async move { UserLog::append(&store, &[ann], &group_created()).await }
        });
        while store.writer.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let stop = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.stop(Duration::from_secs(30)).await }
        });
        while !store.writer.closed() {
            tokio::task::yield_now().await;
        }
        assert!(!stop.is_finished(), "the stop waits for the queued write");
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(append.await.unwrap().unwrap(), vec![crate::Appended { seq: 1, prev: 0 }]);
        stop.await.unwrap().unwrap();
        drop(store);
        let store = open(dir.path(), 100);
        assert_eq!(store.bounds(&ann).await.unwrap(), (1, 1), "the write survived the stop");
    }

    /// The conformance suite, one test per check, each on a directory of its own.
    mod conformance {
        use super::*;

        crate::conformance_tests!(stores: conformance_backend);
    }
}
