//! The CQL backend (feature `cql`): the store traits over ScyllaDB or Apache
//! Cassandra through the `scylla` driver, for the distributed mode. The CQL is
//! portable (no tablets options, `USING TIMEOUT`, `BYPASS CACHE`, CDC,
//! materialized views or SASI); every hot-path statement is prepared once at
//! [`CqlStore::connect`], and scans page.
//!
//! # Data model (schema version 6, see [`migrate`])
//!
//! Partition key in inner parentheses where it is not the first column.
//!
//! ```text
//! messages             ((conversation text, bucket int), id bigint DESC) -> message blob
//! conversation_buckets (conversation text, bucket int)
//! message_dedup        ((sender text, client_msg_id text)) -> conversation, msg_id, message blob,
//!                                                             fanned_out boolean, counted boolean
//! conversation_heads   (conversation text) -> pos bigint, last_id bigint, last_time bigint,
//!                                             recent frozen<list<bigint>>
//! user_conversations   (user_id text, conversation text) -> created_at, read_pos, cleared_pos,
//!                                                           cleared_id bigint, hidden boolean,
//!                                                           hidden_pos, pinned_at bigint
//! user_removed_messages ((user_id text, conversation text), msg_id bigint ASC) -> pos bigint
//! recalled_messages    (conversation text, msg_id bigint ASC) -> pos bigint
//! group_reads          ((conversation text, msg_id bigint), reader text ASC) -> read_at bigint
//! groups               (group_id text, user_id text) -> role int, joined_at bigint
//!                        static: name, description, owner, created_at, member_count,
//!                                max_members, version bigint, writer bigint
//! user_groups          (user_id text, group_id text)
//! user_log_head        (user_id text) -> seq bigint, oldest bigint, event blob, earlier list<blob>,
//!                                        writer bigint
//! user_log             (user_id text, seq bigint ASC) -> event blob, writer bigint
//! user_acks            (user_id text, seq bigint DESC)
//! presence_subs        (subscriber text, target text) -> expires_at bigint   [TTL]
//!                        static: version bigint
//! presence_subscribers (target text, subscriber text) -> expires_at bigint   [TTL]
//! presence             (user_id text) -> description text, time bigint
//! webhook_outbox_head  (receiver text) -> seq, oldest, event blob, writer  (as user_log_head)
//! webhook_outbox       (receiver text, seq bigint ASC) -> event blob, writer  (as user_log)
//! webhook_outbox_removed (receiver text, id bigint DESC)
//! sessions             (user_id text, session_id text) -> device, gateway, platform, client_addr text,
//!                                                          connected_at bigint, seq bigint
//!                        static: version bigint, writer bigint
//! gateway_sessions     (gateway text, user_id text, session_id text)
//! gateway_leases       (shard int, gateway text) -> until bigint         [shard is always 0]
//! leases               (name text) -> owner text                         [TTL = the lease's]
//! schema_migrations    (version int) -> description, applied_at, applied_by
//! ```
//!
//! Blobs are the protobuf records of `natter-proto` (`Message`, `LogEvent`,
//! `WebhookEvent`), so both backends store the same bytes. Version 1 holds the
//! message, group and user-log tables; version 2 the presence and webhook
//! tables; version 3 the session registry and the leases; version 4 adds
//! `earlier` to the log heads; version 5 the conversation tables and
//! `counted` to the idempotency records; version 6 the recalled messages
//! and the group read receipts.
//!
//! **Messages** use the Discord layout: a conversation's history is split into
//! partitions of [`BUCKET_MS`] (10 days) of message-id time, clustered by
//! message id descending (ids are time-ordered), so "newest 50" reads the head
//! of one partition and no partition grows without bound. Every bucket a
//! conversation has used is recorded in `conversation_buckets` (written before
//! the message, cached per process), so history walks exactly the non-empty
//! buckets, newest→oldest (`Up`) or oldest→newest (`Down`), until the page is
//! full; the first recorded bucket bounds the walk.
//!
//! **Idempotency**: `message_dedup` is keyed by `(sender, client_msg_id)` and
//! holds the whole message. `insert_message` writes it first with
//! `INSERT … IF NOT EXISTS` (a Paxos round), so of two concurrent identical
//! sends exactly one wins; the loser gets the winner's row back from the same
//! round and answers `Duplicate` with the winner's message. Only then is the
//! message row written, with a write timestamp derived from the message (so
//! the winner and any later duplicate write identical cells; a duplicate
//! re-writes it, which repairs a winner that died between the two writes).
//! `fanned_out` is a separate cell set by a plain update.
//! Records live for the idempotency window: the insert sets it as the row's
//! TTL, the `fanned_out` update what is left of it less a second (so the mark
//! never outlives the message cell and leaves a record without its message).
//! A record older than the window by the messages' timestamps but not yet
//! removed by its TTL (clocks differ) is replaced with `UPDATE … IF msg_id =
//! <its id>`, so of concurrent sends past the window exactly one wins; a row
//! left with only its mark is taken over the same way, `IF msg_id = null`.
//! Compatibility: such rows (and records with no TTL at all) come only from
//! builds before the idempotency window (commit 32a432b, schema version 4
//! before and after), which marked without the TTL; they never expire, so
//! the `IF msg_id = null` take-over and `mark_fanned_out`'s no-TTL case can
//! go once no keyspace holds them: keyspaces created at or after 32a432b, or
//! after deleting the `message_dedup` rows without a TTL.
//!
//! **Conversations** (see `conversations.rs`): a counted message (C2) takes
//! the next position of its conversation, 1, 2, …, from
//! `conversation_heads`, a row per conversation changed only by Paxos: `IF
//! NOT EXISTS` for the first message, then `UPDATE … SET pos = s+k, last_id,
//! last_time, recent IF pos = s`. `recent` lists the ids of the newest 64
//! (`RECENT_IDS`) counted messages, the last at `pos`, so the head itself
//! says which position a recent message took. Claims of one
//! conversation from one process take turns like log appends: the one whose
//! turn it is positions every claim waiting behind it in one round, and a
//! claim whose id is already in `recent` (read at each attempt; the `IF pos
//! = s` makes that read exact) keeps the position it has. So a message is
//! given at most one position, by whichever attempt, retry or concurrent
//! duplicate gets there first, and a conditional update whose outcome was
//! lost is settled by the ids in the next read.
//!
//! A counted send writes, in order: the idempotency record with `counted =
//! true` and the message without its position (`IF NOT EXISTS`, as above);
//! the position; then together the record rewritten with the positioned
//! message, the history row (stamped a microsecond after an unpositioned
//! copy, so it always wins) and the users' states; then the log entries;
//! then the mark. The record's rewrite is a plain write stamped one
//! microsecond after the cell it replaces (its write time is read back: the
//! conditional insert was stamped by its Paxos ballot, on a coordinator
//! whose clock this one may trail) with what is left of the record's TTL,
//! so it wins and the record's cells still expire together. A retry with
//! the same client message id reads the record: one that is counted and
//! has no position is a send that died before recording it, and the retry
//! finds its position in `recent` or takes the next, then writes what
//! follows. Where the first attempt died:
//! - after the record, before the position: the retry takes the next
//!   position (`tests/cql.rs`, `a_send_that_died_before_its_position…`);
//! - after the position, before the record's rewrite: the retry finds it in
//!   `recent` (`a_send_that_died_after_taking_its_position_keeps_it`);
//! - after the record's rewrite: the retry has the position from the record
//!   and repairs the history row, the states and the entries, as before.
//!
//! What remains: a send that died after taking its position and is never
//! retried leaves a position without a message (a "ghost": it counts as
//! unread for the peer until they read past it), and one retried only after
//! more than 64 counted messages followed it in its conversation takes a
//! second position and leaves the first a ghost. Both need the send to stop
//! between the head's update and the record's rewrite (a crash, or an error
//! in the read and the write between them); a client retries an error at
//! once, far within 64 messages of most conversations. Taking positions
//! without Paxos (a later change) has to keep a message's position findable
//! from its record in the same way.
//!
//! A user's state is a row per conversation with one column per field, so
//! a change writes only the columns it touches: a pin, an unpin and a hide
//! (`hidden`, `hidden_pos`, `pinned_at = 0`) are plain writes that replace
//! what was there; `read_pos` and `(cleared_pos, cleared_id)` never move
//! back, so they are raised by a compare-and-set on the value read (`IF
//! read_pos = ?`), skipped when the value is already there — a plain write
//! could lose a concurrent higher read, which would show read messages as
//! unread again. `created_at` is set once, `IF created_at = null`, by the
//! first change or counted message. A missing field reads as its default. A hidden conversation is
//! listed again when its head passes `hidden_pos`, so a new message writes
//! nothing for it. `user_removed_messages` holds a user's one-way deletes
//! (C6) per conversation, by id. A group message writes the group's head and its sender's
//! state only, never a row per member.
//!
//! **Recalls and receipts**: `recalled_messages` holds a conversation's
//! recalled messages (R8) by id with their positions, one row per recall for
//! every user at once, written by a plain insert (a repeat rewrites the same
//! cells) and read like `user_removed_messages`. `group_reads` (see
//! `receipts.rs`) holds a row per reader of a group message in the message's
//! own partition, without Paxos: `read_count` is an exact `COUNT(*)` of that
//! partition, `readers` pages it by user id, and `record_read` reads the
//! reader's row first and writes it only if missing, so a repeat keeps the
//! first read time.
//!
//! **Groups** live in one partition per group: the group's fields are static
//! columns and each member is a clustering row ordered by user id (so
//! `list_members` pages by user id). Every membership change is one
//! single-partition conditional batch `… IF version = ?` that updates
//! `member_count`/`version` and inserts or deletes the member rows together:
//! the count, the rows and the size limit are checked and changed atomically
//! across processes, and `add_members` is all or nothing. Reads that decide a
//! change use `LOCAL_SERIAL`. A dissolved group's static columns are deleted
//! in the same way (conditionally), then its partition.
//! `user_groups` is a derived index: rows are written *before* the change
//! that makes the user a member and deleted *after* the change that removes
//! them, with a write timestamp equal to the group's version at that change,
//! so concurrent add/remove of the same user resolve in version order
//! whatever order the index writes arrive in. A crash can leave only extra
//! index rows, and `user_groups` checks each against the member row.
//! `version` starts at the creation time in microseconds, so a recreated
//! group id still moves forward.
//!
//! **User logs**: `user_log_head` holds, per user, the newest seq, the oldest
//! retained seq, and the entries of the append that set it (`event` at `seq`,
//! `earlier` at the seqs just below), and is only changed by Paxos:
//! `UPDATE … SET seq = s+k, oldest = …, event = …, earlier = …, writer = … IF
//! seq = s` (or `INSERT … IF NOT EXISTS` for the first append). An append of
//! `k` entries
//! 1. reads the head (cached per process after its own appends);
//! 2. copies the head's entries into `user_log` at their seqs — an idempotent
//!    write of immutable content, so every row below the head exists before
//!    the head moves past it;
//! 3. advances the head by `k` with the conditional update; on conflict it
//!    rereads the head at `LOCAL_SERIAL` and retries with `s` = the new head;
//! 4. once applied, writes its entries at `s+1 ..= s+k` (one single-partition
//!    batch) and range-deletes rows below the new `oldest` (best effort: step 2
//!    of the next append, and `read`, fall back to the head's copies).
//!
//! So a seq is taken by exactly one entry (the Paxos winner's), seqs never
//! skip or reuse a number, and a log row is only ever written for a seq the
//! head has already reached, with that seq's content: there are no rows
//! "ahead of the head" left behind by a dead appender, and a stray row beyond
//! the head is never read because `read` is capped at the head (the next
//! append overwrites it). A Paxos outcome the driver could not confirm
//! (timeout) is resolved by a serial read and the `writer` token, so an
//! append is not applied twice by its own retry.
//!
//! Within a process, appends to one user's log take turns (`append_user_entry`):
//! the one whose turn it is appends every entry waiting behind it (up to 64
//! entries or 256 KiB) in one Paxos round and hands the turn on. Racing each
//! other instead, a busy log — every member of an active group — would spend
//! most Paxos rounds on conflicts, enough to livelock a group's concurrent
//! sends (docs/PERFORMANCE.md#distributed-mode); taking turns, conflicts only
//! come from other processes, and a busy log costs a round per batch. Group fan-out appends to the users concurrently
//! (`fanout_concurrency`), each user's log independently. The webhook outbox
//! uses the same tables' shape with one entry per update.
//!
//! `user_acks` is a max-register without Paxos: each ack inserts its seq as a
//! clustering row (descending) and range-deletes smaller ones in the same
//! single-partition batch; `acked` reads the first row.
//!
//! **Presence** (see `presence.rs`): a subscriber's subscriptions are one
//! partition changed by conditional batches on its static `version` (so the
//! cap holds across processes), indexed by target with version-timestamped
//! writes, with a TTL of the remaining time plus a day as a backstop; expiry
//! itself compares `expires_at` with the caller's clock. **Webhook outbox**
//! (see `outbox.rs`): one log per receiver on the user-log machinery, one
//! entry per push; `remove` raises a watermark (a max-register like
//! `user_acks`) and deletes whole entries below it.
//!
//! **Sessions** (see `sessions.rs`): a user's sessions are one partition
//! changed by conditional batches on its static `version`, so the device
//! limit holds across presence processes and each session is removed by
//! exactly one call; `gateway_sessions` finds an expired gateway's sessions,
//! and `gateway_leases` is one small partition of lease ends. **Leases**
//! (see `leases.rs`): `IF NOT EXISTS` / `IF owner = ?` on a row whose TTL is
//! the lease's, so a dead holder's lease frees itself.
//!
//! `schema_migrations` records each applied migration; `version = 0` is the
//! migration lease (an `IF NOT EXISTS … USING TTL` row), so concurrent
//! `migrate` calls apply DDL one at a time.
//!
//! # Consistency
//! Reads and writes use the configured consistency (default `LOCAL_QUORUM`),
//! conditional statements `LOCAL_SERIAL`. A method returns `Ok` only after its
//! writes were acknowledged at that consistency.
//!
//! # Differences from the embedded backend
//! - `UserLog::append` to several users is one append per user (run
//!   concurrently), not one atomic batch: if it fails for some users, the
//!   others keep the event, and a retry of the send appends it to them again
//!   (clients drop repeats by message id). An `Err` can also follow an append
//!   that did land (its outcome could not be confirmed in time); it is never
//!   half-written and never lands twice for one call.
//! - A counted send is not one batch: it can die with its position taken
//!   and not yet recorded (see "Conversations" for what a retry completes
//!   and what remains). Its users' states are written before its log
//!   entries, so a device that receives the message finds the conversation.
//! - A group's id must not be reused after `delete_group` if its partition
//!   purge failed (ids are generated, so they are not).
//! - Two concurrent first receipts of one reader for one message (say from
//!   two devices) both write, and the row keeps one of the two times, not
//!   necessarily the earlier; it is still counted once.
//!
//! # Operating notes
//! - Every conditional statement is a Paxos round (4 round trips with
//!   Cassandra's default `paxos_variant: v1`, 2 with `v2`). A counted send
//!   costs, besides the record's and the log appends' rounds, one for its
//!   conversation's head (shared by the claims waiting in one process) and
//!   one for its sender's read position; the first message of a 1:1
//!   conversation one more per user for `created_at`.
//! - ScyllaDB releases that do not support LWT on tablets keyspaces need the
//!   keyspace created beforehand with tablets disabled (Scylla-only syntax,
//!   so `migrate` does not write it); `migrate` leaves an existing keyspace
//!   as it is.

mod conversations;
mod error;
mod groups;
mod leases;
mod log;
mod messages;
mod outbox;
mod presence;
mod receipts;
mod schema;
mod sessions;
mod statements;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use natter_types::{Error, Result};
use parking_lot::Mutex;
use scylla::client::PoolSize;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::frame::types::{Consistency, SerialConsistency};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

pub use schema::{LATEST_VERSION, Migrated, migrate, schema_version};

use crate::{Leases, SessionRegistry, Stores};
use statements::Statements;

/// Width of a message history partition, in milliseconds of message-id time.
/// Part of the schema: changing it needs a data migration.
pub const BUCKET_MS: u64 = 10 * 24 * 3600 * 1000;

/// How `migrate` creates the keyspace (an existing keyspace is left as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` (one data center; tests and small setups).
    Simple { replication_factor: u32 },
    /// `NetworkTopologyStrategy` with a replication factor per data center.
    NetworkTopology { datacenters: Vec<(String, u32)> },
}

impl Default for Replication {
    fn default() -> Self {
        Self::Simple { replication_factor: 1 }
    }
}

impl Replication {
    /// The CQL map literal, e.g. `{'class': 'SimpleStrategy', 'replication_factor': 3}`.
    pub fn to_cql(&self) -> Result<String> {
        match self {
            Self::Simple { replication_factor } => {
                if *replication_factor == 0 {
                    return Err(Error::bad_request("replication", "replication factor must be at least 1"));
                }
                Ok(format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"))
            }
            Self::NetworkTopology { datacenters } => {
                if datacenters.is_empty() {
                    return Err(Error::bad_request(
                        "replication",
                        "network topology replication needs at least one data center",
                    ));
                }
                let mut parts = vec!["'class': 'NetworkTopologyStrategy'".to_owned()];
                for (dc, rf) in datacenters {
                    let valid = !dc.is_empty()
                        && dc.len() <= 128
                        && dc.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !valid {
                        return Err(Error::bad_request(
                            "replication",
                            format!("data center name {dc:?} must be 1-128 of a-z A-Z 0-9 _ - ."),
                        ));
                    }
                    parts.push(format!("'{dc}': {rf}"));
                }
                Ok(format!("{{{}}}", parts.join(", ")))
            }
        }
    }
}

/// Parses `simple:RF` or `network_topology:DC=RF,DC=RF`.
impl FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("replication {s:?}: expected simple:RF or network_topology:DC=RF,...");
        let (class, rest) = s.split_once(':').ok_or_else(bad)?;
        match class.trim().to_ascii_lowercase().as_str() {
            "simple" | "simplestrategy" => {
                Ok(Self::Simple { replication_factor: rest.trim().parse().map_err(|_| bad())? })
            }
            "network_topology" | "networktopologystrategy" => {
                let mut datacenters = Vec::new();
                for part in rest.split(',') {
                    let (dc, rf) = part.split_once('=').ok_or_else(bad)?;
                    datacenters.push((dc.trim().to_owned(), rf.trim().parse().map_err(|_| bad())?));
                }
                Ok(Self::NetworkTopology { datacenters })
            }
            _ => Err(bad()),
        }
    }
}

/// Consistency of ordinary reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CqlConsistency {
    One,
    Two,
    Three,
    Quorum,
    All,
    #[default]
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

impl CqlConsistency {
    fn driver(self) -> Consistency {
        match self {
            Self::One => Consistency::One,
            Self::Two => Consistency::Two,
            Self::Three => Consistency::Three,
            Self::Quorum => Consistency::Quorum,
            Self::All => Consistency::All,
            Self::LocalQuorum => Consistency::LocalQuorum,
            Self::EachQuorum => Consistency::EachQuorum,
            Self::LocalOne => Consistency::LocalOne,
        }
    }
}

impl FromStr for CqlConsistency {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "ONE" => Self::One,
            "TWO" => Self::Two,
            "THREE" => Self::Three,
            "QUORUM" => Self::Quorum,
            "ALL" => Self::All,
            "LOCAL_QUORUM" => Self::LocalQuorum,
            "EACH_QUORUM" => Self::EachQuorum,
            "LOCAL_ONE" => Self::LocalOne,
            _ => {
                return Err(format!(
                    "consistency {s:?}: expected one of ONE, TWO, THREE, QUORUM, ALL, \
                     LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE"
                ));
            }
        })
    }
}

/// Consistency of the Paxos phase of conditional statements and serial reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CqlSerialConsistency {
    Serial,
    #[default]
    LocalSerial,
}

impl CqlSerialConsistency {
    fn driver(self) -> SerialConsistency {
        match self {
            Self::Serial => SerialConsistency::Serial,
            Self::LocalSerial => SerialConsistency::LocalSerial,
        }
    }

    /// The consistency a linearizable read is sent with.
    fn read(self) -> Consistency {
        match self {
            Self::Serial => Consistency::Serial,
            Self::LocalSerial => Consistency::LocalSerial,
        }
    }
}

impl FromStr for CqlSerialConsistency {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "SERIAL" => Ok(Self::Serial),
            "LOCAL_SERIAL" => Ok(Self::LocalSerial),
            _ => Err(format!("serial consistency {s:?}: expected SERIAL or LOCAL_SERIAL")),
        }
    }
}

/// Username and password for `PasswordAuthenticator`.
#[derive(Clone, PartialEq, Eq)]
pub struct CqlCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for CqlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlCredentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// Options of the CQL store.
#[derive(Debug, Clone)]
pub struct CqlOptions {
    /// `host:port` of one or more nodes; the driver discovers the others.
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// How [`migrate`] creates the keyspace.
    pub replication: Replication,
    /// Reads and writes (default `LOCAL_QUORUM`).
    pub consistency: CqlConsistency,
    /// Conditional statements and serial reads (default `LOCAL_SERIAL`).
    pub serial_consistency: CqlSerialConsistency,
    /// Connections per node. Cassandra has no shards, so the pool is per
    /// host; on ScyllaDB the connections are spread over its shards.
    pub pool_size_per_host: usize,
    /// Client-side timeout of one request (including the driver's retries).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Prefer this data center's nodes (and make `LOCAL_*` mean it).
    pub local_datacenter: Option<String>,
    pub credentials: Option<CqlCredentials>,
    /// Events kept per user log; older ones are deleted (a device resuming
    /// from before them is told to resync).
    pub log_retention_events: u64,
    /// Users appended to concurrently by one group fan-out.
    pub fanout_concurrency: usize,
    /// Rows per page of a scan (member lists, history, log reads).
    pub page_size: u32,
    /// How long an idempotency record holds; the database drops it after
    /// that (its TTL). At most [`MAX_TTL_SECS`].
    pub idempotency_window: Duration,
}

/// The longest TTL Cassandra and ScyllaDB accept (20 years).
pub const MAX_TTL_SECS: u64 = 630_720_000;

impl Default for CqlOptions {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "natter".to_owned(),
            replication: Replication::default(),
            consistency: CqlConsistency::default(),
            serial_consistency: CqlSerialConsistency::default(),
            pool_size_per_host: 2,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            local_datacenter: None,
            credentials: None,
            log_retention_events: 10_000,
            fanout_concurrency: 64,
            page_size: 1000,
            idempotency_window: crate::DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

impl CqlOptions {
    /// Checks the options are usable; errors name the setting.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.contact_points.is_empty() || self.contact_points.iter().any(|c| c.is_empty()) {
            return Err("cql.contact_points: at least one host:port is needed".into());
        }
        validate_keyspace(&self.keyspace).map_err(|e| e.message)?;
        self.replication.to_cql().map_err(|e| e.message)?;
        let positive = [
            ("cql.pool_size_per_host", self.pool_size_per_host as u64),
            ("cql.log_retention_events", self.log_retention_events),
            ("cql.fanout_concurrency", self.fanout_concurrency as u64),
            ("cql.page_size", u64::from(self.page_size)),
            ("cql.request_timeout", self.request_timeout.as_millis() as u64),
            ("cql.connect_timeout", self.connect_timeout.as_millis() as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name}: must be greater than 0"));
            }
        }
        let window = self.idempotency_window.as_secs();
        if !(1..=MAX_TTL_SECS).contains(&window) {
            return Err(format!(
                "cql.idempotency_window: {window} s, must be between 1 s and {MAX_TTL_SECS} s (the longest TTL)"
            ));
        }
        if self.page_size > i32::MAX as u32 {
            return Err(format!("cql.page_size: must be at most {}", i32::MAX));
        }
        Ok(())
    }
}

/// An invalid-options error naming the setting (`validate` messages start
/// with it).
fn invalid_options(message: String) -> Error {
    match message.split_once(": ") {
        Some((field, rest)) => Error::bad_request(field, rest),
        None => Error::bad_request("cql", message),
    }
}

/// Keyspace names are spliced into CQL, so they are checked strictly.
pub(crate) fn validate_keyspace(keyspace: &str) -> Result<()> {
    let valid = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !keyspace.starts_with('_');
    if valid {
        Ok(())
    } else {
        Err(Error::bad_request(
            "cql.keyspace",
            format!("keyspace {keyspace:?} must be 1-48 of a-z 0-9 _ (not starting with _)"),
        ))
    }
}

/// Opens a driver session with the options' contact points, pool, timeouts
/// and consistency (used by [`CqlStore::connect`] and by `natter migrate`).
pub async fn open_session(options: &CqlOptions) -> Result<Session> {
    options.validate().map_err(invalid_options)?;
    let pool = NonZeroUsize::new(options.pool_size_per_host)
        .ok_or_else(|| Error::bad_request("cql.pool_size_per_host", "must be greater than 0"))?;
    let profile = ExecutionProfile::builder()
        .consistency(options.consistency.driver())
        .serial_consistency(Some(options.serial_consistency.driver()))
        .request_timeout(Some(options.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&options.contact_points)
        .pool_size(PoolSize::PerHost(pool))
        .connection_timeout(options.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(dc) = &options.local_datacenter {
        builder = builder.prefer_datacenter(dc.clone());
    }
    if let Some(c) = &options.credentials {
        builder = builder.user(c.username.clone(), c.password.clone());
    }
    builder
        .build()
        .await
        .map_err(|e| error::unavailable(format!("cql connect to {}", options.contact_points.join(",")), e))
}

/// The CQL store; cheap to clone.
#[derive(Clone)]
pub struct CqlStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for CqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlStore").field("keyspace", &self.inner.options.keyspace).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    session: Arc<Session>,
    st: Statements,
    options: CqlOptions,
    /// Last head this process saw per user, after its own appends: a hint
    /// that saves a read; a stale hint only costs a failed conditional update.
    heads: Mutex<HashMap<(log::LogKind, String), log::HeadHint>>,
    /// User-log appends waiting for their log's turn (see `append_user_entry`).
    appends: log::AppendQueues,
    /// `(conversation, bucket)` rows this process has written.
    buckets: Mutex<std::collections::HashSet<(String, i32)>>,
    /// Last conversation head this process set, per conversation: a hint
    /// like `heads` (a stale one costs a failed conditional update).
    conversation_heads: Mutex<HashMap<String, conversations::HeadRow>>,
    /// Position claims waiting for their conversation's turn (see
    /// `take_position`).
    claims: conversations::ClaimQueues,
}

/// Entries of the per-process caches before they are cleared.
const CACHE_CAP: usize = 100_000;

impl CqlStore {
    /// Connects, checks the keyspace is migrated to [`LATEST_VERSION`] and
    /// prepares every statement.
    pub async fn connect(options: CqlOptions) -> Result<Self> {
        let session = Arc::new(open_session(&options).await?);
        Self::with_session(session, options).await
    }

    /// Like [`connect`](Self::connect) over an existing session.
    pub async fn with_session(session: Arc<Session>, options: CqlOptions) -> Result<Self> {
        options.validate().map_err(invalid_options)?;
        let ks = &options.keyspace;
        let version = schema_version(&session, ks).await?;
        match version {
            Some(v) if v >= LATEST_VERSION => {
                if v > LATEST_VERSION {
                    tracing::warn!(
                        keyspace = %ks,
                        version = v,
                        supported = LATEST_VERSION,
                        "cql schema is newer than this build"
                    );
                }
            }
            found => {
                return Err(Error::internal(format!(
                    "cql keyspace {ks} is at schema version {}, this build needs {LATEST_VERSION}: \
                     run `natter migrate`",
                    found.unwrap_or(0)
                )));
            }
        }
        let st = Statements::prepare(&session, &options).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                st,
                options,
                heads: Mutex::new(HashMap::new()),
                appends: Mutex::new(HashMap::new()),
                buckets: Mutex::new(std::collections::HashSet::new()),
                conversation_heads: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
            }),
        })
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

    /// The session registry and gateway leases, shared by every process on
    /// this keyspace.
    pub fn sessions(&self) -> Arc<dyn SessionRegistry> {
        Arc::new(self.clone())
    }

    /// Named leases (leadership, node ids), shared by every process on this
    /// keyspace.
    pub fn leases(&self) -> Arc<dyn Leases> {
        Arc::new(self.clone())
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    pub fn options(&self) -> &CqlOptions {
        &self.inner.options
    }
}

// ----------------------------------------------------------------- helpers

impl Inner {
    async fn execute(
        &self,
        context: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<scylla::response::query_result::QueryResult> {
        self.session.execute_unpaged(statement, values).await.map_err(|e| error::execution(context, e))
    }

    /// Runs a statement and decodes its first row, if any.
    async fn first_row<R>(
        &self,
        context: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(context, statement, values).await?;
        let rows = result.into_rows_result().map_err(|e| error::decoding(context, e))?;
        rows.maybe_first_row::<R>().map_err(|e| error::decoding(context, e))
    }

    /// Runs a (paging) scan and collects at most `limit` rows.
    async fn scan<R>(
        &self,
        context: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pager = self.session.execute_iter(statement.clone(), values).await.map_err(|e| error::pager(context, e))?;
        let mut stream = pager.rows_stream::<R>().map_err(|e| error::decoding(context, e))?;
        let mut rows = Vec::new();
        while rows.len() < limit {
            match stream.try_next().await {
                Ok(Some(row)) => rows.push(row),
                Ok(None) => break,
                Err(e) => return Err(error::next_row(context, e)),
            }
        }
        Ok(rows)
    }

    /// Runs a conditional statement and reads its `[applied]` row.
    async fn conditional(
        &self,
        context: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> std::result::Result<Lwt, scylla::errors::ExecutionError> {
        let result = self.session.execute_unpaged(statement, values).await?;
        Ok(Lwt::from_result(context, result))
    }
}

/// The answer to a conditional statement: whether it applied, and the
/// current values of the columns the database chose to return (Cassandra
/// returns the condition's columns, or the whole row for `IF NOT EXISTS`;
/// ScyllaDB returns the whole row). Columns are looked up by name.
#[derive(Debug, Default)]
pub(crate) struct Lwt {
    pub applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
    /// Why the answer could not be read, if it could not.
    pub malformed: Option<String>,
}

impl Lwt {
    fn from_result(context: &str, result: scylla::response::query_result::QueryResult) -> Self {
        let rows = match result.into_rows_result() {
            Ok(rows) => rows,
            Err(e) => {
                return Self {
                    malformed: Some(format!("cql {context}: conditional result: {e}").to_lowercase()),
                    ..Self::default()
                };
            }
        };
        let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
        match rows.maybe_first_row::<Row>() {
            Ok(Some(row)) => {
                let columns: Vec<_> = names.into_iter().zip(row.columns).collect();
                let applied = columns
                    .iter()
                    .any(|(name, value)| name == "[applied]" && matches!(value, Some(CqlValue::Boolean(true))));
                let has_applied = columns.iter().any(|(name, _)| name == "[applied]");
                Self {
                    applied,
                    columns,
                    malformed: (!has_applied)
                        .then(|| format!("cql {context}: conditional result has no [applied] column")),
                }
            }
            Ok(None) => {
                Self { malformed: Some(format!("cql {context}: conditional result has no row")), ..Self::default() }
            }
            Err(e) => Self {
                malformed: Some(format!("cql {context}: conditional result: {e}").to_lowercase()),
                ..Self::default()
            },
        }
    }

    /// `Err` if the answer could not be read.
    fn checked(self) -> Result<Self> {
        match &self.malformed {
            Some(why) => Err(Error::internal(why.clone())),
            None => Ok(self),
        }
    }

    fn value(&self, name: &str) -> Option<&CqlValue> {
        self.columns.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_ref())
    }

    fn bigint(&self, name: &str) -> Option<i64> {
        match self.value(name) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        }
    }

    fn blob(&self, name: &str) -> Option<&[u8]> {
        match self.value(name) {
            Some(CqlValue::Blob(v)) => Some(v),
            _ => None,
        }
    }

    fn boolean(&self, name: &str) -> Option<bool> {
        match self.value(name) {
            Some(CqlValue::Boolean(v)) => Some(*v),
            _ => None,
        }
    }

    fn text(&self, name: &str) -> Option<&str> {
        match self.value(name) {
            Some(CqlValue::Text(v)) | Some(CqlValue::Ascii(v)) => Some(v),
            _ => None,
        }
    }
}

/// Microseconds since the Unix epoch (CQL write timestamps).
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A token unique to one attempt of one operation (per process: a random
/// base mixed with a counter), to recognise our own write after an outcome
/// the driver could not confirm.
pub(crate) fn new_token() -> i64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_micros() as u64);
        h.write_u32(std::process::id());
        h.finish()
    });
    splitmix64(base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))) as i64
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sleeps a little, more after each failed attempt, with jitter (so
/// contending appenders do not retry in lockstep).
pub(crate) async fn backoff(attempt: u32) {
    let cap_us = 200u64 << attempt.min(7); // 0.2 ms .. 25.6 ms
    let jitter = splitmix64(new_token() as u64) % cap_us;
    tokio::time::sleep(Duration::from_micros(cap_us / 2 + jitter / 2)).await;
}

/// Bounds a count for a CQL `LIMIT` (an int).
pub(crate) fn cql_limit(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

pub(crate) fn decode<T: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::internal(format!("corrupt stored {what}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn replication_renders_and_parses() {
        assert_eq!(
            "simple:3".parse::<Replication>().unwrap().to_cql().unwrap(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let nts: Replication = "network_topology:dc1=3, dc2=2".parse().unwrap();
        assert_eq!(nts.to_cql().unwrap(), "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}");
        assert!("network_topology:dc'1=3".parse::<Replication>().unwrap().to_cql().is_err());
        assert!("simple:x".parse::<Replication>().is_err());
        assert!("simple:0".parse::<Replication>().unwrap().to_cql().is_err());
    }

    #[test]
    fn options_validate_names_the_setting() {
        assert!(CqlOptions::default().validate().is_ok());
        let bad = CqlOptions { keyspace: "Bad-Name".into(), ..CqlOptions::default() };
        assert!(bad.validate().unwrap_err().contains("cql.keyspace"));
        let bad = CqlOptions { fanout_concurrency: 0, ..CqlOptions::default() };
        assert!(bad.validate().unwrap_err().contains("cql.fanout_concurrency"));
        assert_eq!("local_quorum".parse::<CqlConsistency>().unwrap(), CqlConsistency::LocalQuorum);
        assert!("most".parse::<CqlConsistency>().is_err());
    }

    #[test]
    fn tokens_differ() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
    }
}
