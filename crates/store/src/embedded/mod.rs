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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use natter_types::{Error, Result, UserId};
use parking_lot::Mutex;

use crate::Stores;

mod dedup_expiry;
mod groups;
mod keeper;
mod log;
mod member_cache;
mod messages;
mod outbox;
mod presence;
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

    #[tokio::test]
    async fn conformance_suite_passes() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::run_all(&open(dir.path(), 5).stores(), 5).await;
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
