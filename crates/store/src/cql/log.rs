//! `UserLog` over CQL: a Paxos-advanced head row per user that carries the
//! newest append's entries, and the entry rows below it (see the module docs
//! of [`super`] for why every row below the head exists and no row above it
//! is ever read).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use natter_proto::v1;
use natter_types::{Error, LogEvent, Result, UserId};
use prost::Message as _;

use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::oneshot;

use super::statements::Preparer;
use super::{CACHE_CAP, CqlStore, Inner, backoff, cql_limit, decode, error, new_token};
use crate::{Appended, CursorExpired, LogPage, UserLog};

/// The statements of one log-shaped pair of tables: a head row per key,
/// advanced by Paxos and holding the newest entry, and the entry rows.
/// Used by the user logs and by the webhook outbox.
pub(crate) struct LogStatements {
    head_get: PreparedStatement,
    head_get_serial: PreparedStatement,
    head_create: PreparedStatement,
    head_advance: PreparedStatement,
    row_put: PreparedStatement,
    row_writer: PreparedStatement,
    rows_read: PreparedStatement,
    /// Deletes rows below a seq.
    pub(crate) row_trim: PreparedStatement,
}

impl LogStatements {
    /// `head` and `rows` are table names, `key` the partition key column.
    pub(crate) async fn prepare(p: &Preparer<'_>, head: &str, rows: &str, key: &str) -> Result<Self> {
        let row_put = p
            .prepare(&format!("INSERT INTO {{ks}}.{rows} ({key}, seq, event, writer) VALUES (?, ?, ?, ?)"), true)
            .await?;
        let row_trim = p.prepare(&format!("DELETE FROM {{ks}}.{rows} WHERE {key} = ? AND seq < ?"), true).await?;
        let head_select = format!("SELECT seq, oldest, event, writer, earlier FROM {{ks}}.{head} WHERE {key} = ?");
        Ok(Self {
            head_get: p.prepare(&head_select, true).await?,
            head_get_serial: p.serial_read(&head_select).await?,
            head_create: p
                .prepare(
                    &format!(
                        "INSERT INTO {{ks}}.{head} ({key}, seq, oldest, event, earlier, writer) \
                         VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                    ),
                    false,
                )
                .await?,
            head_advance: p
                .prepare(
                    &format!(
                        "UPDATE {{ks}}.{head} SET seq = ?, oldest = ?, event = ?, earlier = ?, writer = ? \
                         WHERE {key} = ? IF seq = ?"
                    ),
                    false,
                )
                .await?,
            row_writer: p
                .prepare(&format!("SELECT writer FROM {{ks}}.{rows} WHERE {key} = ? AND seq = ?"), true)
                .await?,
            rows_read: p
                .prepare(
                    &format!("SELECT seq, event FROM {{ks}}.{rows} WHERE {key} = ? AND seq > ? AND seq <= ? LIMIT ?"),
                    true,
                )
                .await?,
            row_put,
            row_trim,
        })
    }

    /// One unlogged single-partition batch writing `n` rows.
    fn rows_put(&self, n: usize) -> Batch {
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in 0..n {
            batch.append_statement(self.row_put.clone());
        }
        batch.set_is_idempotent(true);
        batch
    }
}

/// A row of a log: key, seq, entry, writer.
type RowValues<'a> = (&'a str, i64, &'a [u8], i64);

/// Which log a head hint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LogKind {
    User,
    Outbox,
}

/// Attempts of one append that keeps losing the head to concurrent appends
/// to the same user.
const MAX_ATTEMPTS: u32 = 500;

/// Entries one conditional update appends at most (a user log's waiting
/// appends beyond this go in the next one).
const MAX_BATCH_ENTRIES: usize = 64;
/// Bytes of entries one conditional update appends at most (the head row
/// holds them all; far below Cassandra's mutation size limit).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Bytes of entries per batch of row writes.
const ROWS_BATCH_BYTES: usize = 4 * 1024;

/// What this process knows about a head after its own append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadHint {
    seq: i64,
    oldest: i64,
}

/// A head row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Head {
    /// Newest seq (0: no entry ever).
    pub seq: i64,
    /// Oldest retained seq.
    pub oldest: i64,
    /// The entry at `seq`.
    pub event: Option<Vec<u8>>,
    /// The entries at `seq - earlier.len()` .. `seq - 1`, appended together
    /// with `event` (empty for a one-entry append).
    earlier: Vec<Vec<u8>>,
    writer: Option<i64>,
    /// Whether the rows of the head's entries are known to be written.
    row_written: bool,
}

impl Head {
    /// The head's own copy of the entry at `seq`, if the append that set the
    /// head wrote it. Authoritative: the rows may not be written yet.
    pub(crate) fn entry(&self, seq: i64) -> Option<&[u8]> {
        if seq == self.seq {
            return self.event.as_deref();
        }
        let back = usize::try_from(self.seq - seq).ok()?;
        let index = self.earlier.len().checked_sub(back)?;
        self.earlier.get(index).map(Vec::as_slice)
    }

    /// The seq of the first entry the head holds.
    fn first_seq(&self) -> i64 {
        self.seq - self.earlier.len() as i64
    }
}

type HeadRow = (Option<i64>, Option<i64>, Option<Vec<u8>>, Option<i64>, Option<Vec<Vec<u8>>>);

fn head_from(row: Option<HeadRow>) -> Head {
    match row {
        Some((Some(seq), oldest, event, writer, earlier)) => Head {
            seq,
            oldest: oldest.unwrap_or(1),
            event,
            earlier: earlier.unwrap_or_default(),
            writer,
            row_written: false,
        },
        _ => Head::default(),
    }
}

pub(crate) fn seq_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn decode_event(bytes: &[u8]) -> Result<LogEvent> {
    Ok(decode::<v1::LogEvent>("log event", bytes)?.try_into()?)
}

/// An append attempt whose conditional update timed out: it may have won.
#[derive(Debug, Clone, Copy)]
struct Unsure {
    /// The seq of its last entry.
    seq: i64,
    oldest: i64,
}

/// User-log appends of this process waiting for their log's turn, by user.
/// A log with an entry here has an append running; the waiting ones go next.
pub(crate) type AppendQueues = parking_lot::Mutex<std::collections::HashMap<String, VecDeque<Waiting>>>;

pub(crate) struct Waiting {
    entry: Arc<[u8]>,
    turn: oneshot::Sender<Turn>,
}

enum Turn {
    /// Appended by another call (the seq of this entry), or failed.
    Done(Result<i64>),
    /// This call appends now: its entry back, with whatever waits behind it.
    Lead(Arc<[u8]>),
}

/// The running append of one user log in this process. Dropping it (done,
/// failed or cancelled) hands the turn to the next waiting append.
struct LogTurn<'a> {
    queues: &'a AppendQueues,
    key: &'a str,
}

impl LogTurn<'_> {
    /// Takes waiting appends that fit in one batch after `first_len` bytes.
    fn take_batch(&self, first_len: usize) -> Vec<Waiting> {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(self.key) else { return Vec::new() };
        let mut batch = Vec::new();
        let mut bytes = first_len;
        while batch.len() + 1 < MAX_BATCH_ENTRIES
            && let Some(next) = queue.front()
            && bytes + next.entry.len() <= MAX_BATCH_BYTES
        {
            bytes += next.entry.len();
            batch.extend(queue.pop_front());
        }
        batch
    }
}

impl Drop for LogTurn<'_> {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(self.key) else { return };
        while let Some(next) = queue.pop_front() {
            // A waiter whose call was dropped meanwhile is skipped: its entry
            // was never appended.
            if next.turn.send(Turn::Lead(next.entry)).is_ok() {
                return;
            }
        }
        queues.remove(self.key);
    }
}

/// A waiting append's side of its turn. Dropped after the turn was handed to
/// it but before it ran (its call was cancelled just then), it hands the
/// turn on, or the log would wait for it forever.
struct TurnWait<'a> {
    rx: oneshot::Receiver<Turn>,
    queues: &'a AppendQueues,
    key: &'a str,
}

impl Drop for TurnWait<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Turn::Lead(_)) = self.rx.try_recv() {
            drop(LogTurn { queues: self.queues, key: self.key });
        }
    }
}

impl Inner {
    fn log_statements(&self, kind: LogKind) -> &LogStatements {
        match kind {
            LogKind::User => &self.st.user_log,
            LogKind::Outbox => &self.st.outbox,
        }
    }

    pub(crate) async fn read_head(&self, kind: LogKind, key: &str) -> Result<Head> {
        let st = self.log_statements(kind);
        let row: Option<HeadRow> = self.first_row("read log head", &st.head_get, (key,)).await?;
        Ok(head_from(row))
    }

    /// The head read linearizably (completes a conditional update in flight).
    async fn read_head_serial(&self, kind: LogKind, key: &str) -> Result<Head> {
        let st = self.log_statements(kind);
        let row: Option<HeadRow> = self.first_row("read log head", &st.head_get_serial, (key,)).await?;
        Ok(head_from(row))
    }

    /// The current head after our conditional update lost to one that
    /// reached `at_least`.
    async fn refresh_head(&self, kind: LogKind, key: &str, at_least: Option<i64>) -> Result<Head> {
        if let Some(at_least) = at_least {
            let head = self.read_head(kind, key).await?;
            if head.seq >= at_least {
                return Ok(head);
            }
        }
        self.read_head_serial(kind, key).await
    }

    /// Did one of our unsure attempts win? `head` is read after them.
    async fn unsure_won(
        &self,
        kind: LogKind,
        key: &str,
        head: &Head,
        unsure: &[Unsure],
        token: i64,
    ) -> Result<Option<Unsure>> {
        let st = self.log_statements(kind);
        for u in unsure {
            if u.seq == head.seq {
                if head.writer == Some(token) {
                    return Ok(Some(*u));
                }
            } else if u.seq < head.seq {
                let row: Option<(Option<i64>,)> = self.first_row("read log row", &st.row_writer, (key, u.seq)).await?;
                match row {
                    Some((writer,)) => {
                        if writer == Some(token) {
                            return Ok(Some(*u));
                        }
                    }
                    None if u.seq < head.oldest => {
                        return Err(Error::unavailable(format!(
                            "append to the log of {key} timed out and its outcome was trimmed by retention \
                             before it could be checked"
                        )));
                    }
                    None => {
                        return Err(Error::internal(format!(
                            "log of {key} is missing seq {} below its head {}",
                            u.seq, head.seq
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Appends `entry` to the user log of `key`; returns its seq.
    ///
    /// Concurrent appends to one log from this process take turns instead of
    /// racing each other's conditional updates: the one whose turn it is
    /// appends its entry and every entry waiting behind it (up to a batch) in
    /// one Paxos round, then hands the turn on. So a busy log costs a round
    /// per batch, not per event, and only other processes can make a round
    /// fail.
    pub(crate) async fn append_user_entry(&self, key: &str, entry: Arc<[u8]>, retention: i64) -> Result<i64> {
        let waiting = {
            let mut queues = self.appends.lock();
            match queues.get_mut(key) {
                Some(queue) => {
                    let (turn, rx) = oneshot::channel();
                    queue.push_back(Waiting { entry, turn });
                    Err(rx)
                }
                None => {
                    queues.insert(key.to_owned(), VecDeque::new());
                    Ok(entry)
                }
            }
        };
        let own = match waiting {
            Ok(entry) => entry,
            Err(rx) => match (&mut TurnWait { rx, queues: &self.appends, key }.rx).await {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead(entry)) => entry,
                Err(_) => {
                    return Err(Error::unavailable(format!(
                        "append to the log of {key} was cut short (the call appending it was cancelled); \
                         it may or may not have landed"
                    )));
                }
            },
        };
        let turn = LogTurn { queues: &self.appends, key };
        let batch = turn.take_batch(own.len());
        let entries: Vec<&[u8]> = std::iter::once(&*own).chain(batch.iter().map(|w| &*w.entry)).collect();
        let last = self.append_entries(LogKind::User, key, &entries, retention).await;
        let first = last.map(|last| last + 1 - entries.len() as i64);
        for (i, waiting) in batch.into_iter().enumerate() {
            let result = first.clone().map(|first| first + 1 + i as i64);
            // A waiter whose call was dropped no longer needs its answer.
            let _ = waiting.turn.send(Turn::Done(result));
        }
        drop(turn);
        first
    }

    /// Appends `entries` to the log of `key` as consecutive seqs in one
    /// conditional update, keeping the newest `retention` entries; returns the
    /// seq of the last (see the module docs).
    pub(crate) async fn append_entries(
        &self,
        kind: LogKind,
        key: &str,
        entries: &[&[u8]],
        retention: i64,
    ) -> Result<i64> {
        let Some((newest, earlier)) = entries.split_last() else {
            return Err(Error::internal("append of no entries"));
        };
        let st = self.log_statements(kind);
        let retention = retention.max(1);
        let count = entries.len() as i64;
        let token = new_token();
        let hint = self.heads.lock().get(&(kind, key.to_owned())).copied();
        let mut head = match hint {
            Some(h) => Head { seq: h.seq, oldest: h.oldest, row_written: true, ..Head::default() },
            None => self.read_head(kind, key).await?,
        };
        let earlier: Option<Vec<&[u8]>> = (!earlier.is_empty()).then(|| earlier.to_vec());
        let mut unsure: Vec<Unsure> = Vec::new();
        for attempt in 0..MAX_ATTEMPTS {
            if head.seq > 0 && !head.row_written {
                // Every row below the head must exist before the head moves on.
                let held: Vec<&[u8]> = (head.first_seq()..=head.seq)
                    .map(|seq| {
                        head.entry(seq).ok_or_else(|| Error::internal(format!("log head of {key} has no entry {seq}")))
                    })
                    .collect::<Result<_>>()?;
                self.write_rows(kind, key, head.first_seq(), head.oldest, &held, head.writer.unwrap_or(0))
                    .await
                    .map_err(|e| error::execution("copy log head", e))?;
                head.row_written = true;
            }
            let last = head.seq + count;
            let oldest = head.oldest.max(1).max(last.saturating_sub(retention) + 1);
            let result = if head.seq == 0 {
                self.conditional("append to log", &st.head_create, (key, last, oldest, newest, &earlier, token)).await
            } else {
                self.conditional(
                    "append to log",
                    &st.head_advance,
                    (last, oldest, newest, &earlier, token, key, head.seq),
                )
                .await
            };
            match result {
                Ok(lwt) => {
                    let lwt = lwt.checked()?;
                    if lwt.applied {
                        let trim = oldest > head.oldest.max(1);
                        self.appended(kind, key, last, oldest, trim, entries, token).await;
                        return Ok(last);
                    }
                    head = self.refresh_head(kind, key, lwt.bigint("seq")).await?;
                }
                Err(e) if error::outcome_unknown(&e) => {
                    tracing::warn!(key, seq = last, error = %e, "log append outcome unknown; checking");
                    unsure.push(Unsure { seq: last, oldest });
                    head = self.read_head_serial(kind, key).await?;
                }
                Err(e) => return Err(error::execution("append to log", e)),
            }
            if !unsure.is_empty()
                && let Some(won) = self.unsure_won(kind, key, &head, &unsure, token).await?
            {
                self.appended(kind, key, won.seq, won.oldest, true, entries, token).await;
                return Ok(won.seq);
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!(
            "log of {key} is appended to concurrently; gave up after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Writes `entries` as the rows from seq `first` on (those below
    /// `oldest` are already trimmed and are skipped), in single-partition
    /// batches.
    async fn write_rows(
        &self,
        kind: LogKind,
        key: &str,
        first: i64,
        oldest: i64,
        entries: &[&[u8]],
        writer: i64,
    ) -> std::result::Result<(), scylla::errors::ExecutionError> {
        let st = self.log_statements(kind);
        let rows: Vec<RowValues<'_>> =
            (first..).zip(entries).filter(|(seq, _)| *seq >= oldest).map(|(seq, e)| (key, seq, *e, writer)).collect();
        // Batches stay below Cassandra's batch size warning (5 KiB by
        // default; 50 KiB fails), so large appends take several, concurrently.
        let mut chunks: Vec<&[RowValues<'_>]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, row) in rows.iter().enumerate() {
            if i > start && bytes + row.2.len() > ROWS_BATCH_BYTES {
                chunks.push(&rows[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += row.2.len();
        }
        if start < rows.len() {
            chunks.push(&rows[start..]);
        }
        let writes = chunks.into_iter().map(|chunk| async move {
            match chunk {
                [row] => self.session.execute_unpaged(&st.row_put, row).await.map(|_| ()),
                _ => self.session.batch(&st.rows_put(chunk.len()), chunk).await.map(|_| ()),
            }
        });
        futures::future::try_join_all(writes).await.map(|_| ())
    }

    /// After our head update won with its last entry at `seq`: writes the
    /// rows and trims below `oldest` (best effort: the next append, and
    /// reads, fall back to the head's copy of the entries), and remembers the
    /// head.
    #[allow(clippy::too_many_arguments)]
    async fn appended(
        &self,
        kind: LogKind,
        key: &str,
        seq: i64,
        oldest: i64,
        trim: bool,
        entries: &[&[u8]],
        token: i64,
    ) {
        let first = seq + 1 - entries.len() as i64;
        let rows = self.write_rows(kind, key, first, oldest, entries, token);
        let written = if trim {
            let trimmed = async {
                let st = self.log_statements(kind);
                self.session.execute_unpaged(&st.row_trim, (key, oldest)).await.map(|_| ())
            };
            let (rows, trimmed) = futures::join!(rows, trimmed);
            if let Err(e) = trimmed {
                tracing::warn!(key, oldest, error = %e, "log rows below the oldest retained seq not trimmed");
            }
            rows
        } else {
            rows.await
        };
        let mut heads = self.heads.lock();
        match written {
            Ok(()) => {
                if heads.len() >= CACHE_CAP {
                    heads.clear();
                }
                // A concurrent append in this process may have gone further.
                let hint = heads.entry((kind, key.to_owned())).or_insert(HeadHint { seq, oldest });
                if hint.seq <= seq {
                    *hint = HeadHint { seq, oldest };
                }
            }
            Err(e) => {
                tracing::warn!(key, seq, error = %e, "log rows not written after append; the head holds them");
                heads.remove(&(kind, key.to_owned()));
            }
        }
    }

    /// Entry rows with `after < seq <= upper` (at most `limit`), in order.
    pub(crate) async fn read_rows(
        &self,
        kind: LogKind,
        key: &str,
        after: u64,
        upper: u64,
        limit: usize,
    ) -> Result<Vec<(i64, Option<Vec<u8>>)>> {
        let st = self.log_statements(kind);
        let (after, upper) = (i64::try_from(after).unwrap_or(i64::MAX), i64::try_from(upper).unwrap_or(i64::MAX));
        self.scan("read log", &st.rows_read, (key, after, upper, cql_limit(limit)), limit).await
    }
}

#[async_trait]
impl UserLog for CqlStore {
    async fn append(&self, users: &[UserId], event: &LogEvent) -> Result<Vec<Appended>> {
        let inner = &*self.inner;
        let entry: Arc<[u8]> = v1::LogEvent::from(event).encode_to_vec().into();
        let retention = i64::try_from(inner.options.log_retention_events).unwrap_or(i64::MAX);
        let appends: Vec<_> =
            users.iter().map(|u| inner.append_user_entry(u.as_str(), entry.clone(), retention)).collect();
        // Every started append runs to its end, even after another failed.
        let results: Vec<Result<i64>> =
            stream::iter(appends).buffered(inner.options.fanout_concurrency.max(1)).collect().await;
        results.into_iter().map(|r| r.map(|seq| Appended { seq: seq_u64(seq), prev: seq_u64(seq - 1) })).collect()
    }

    async fn read(&self, user: &UserId, after: u64, limit: usize) -> Result<Result<LogPage, CursorExpired>> {
        let inner = &*self.inner;
        let head = inner.read_head(LogKind::User, user.as_str()).await?;
        let h = seq_u64(head.seq);
        let oldest = if h == 0 { 1 } else { seq_u64(head.oldest) };
        if after > h || (after + 1 < oldest && after < h) {
            return Ok(Err(CursorExpired { requested: after, oldest, head: h }));
        }
        let upper = h.min(after.saturating_add(limit as u64));
        let mut events = Vec::new();
        if upper > after {
            let want = (upper - after) as usize;
            let rows = inner.read_rows(LogKind::User, user.as_str(), after, upper, want).await?;
            let mut expected = after + 1;
            for (seq, bytes) in rows {
                if seq_u64(seq) != expected {
                    break;
                }
                // The head's copy of its entries is the authoritative one.
                let bytes = match head.entry(seq) {
                    Some(held) => held,
                    None => bytes
                        .as_deref()
                        .ok_or_else(|| Error::internal(format!("user log of {user} has an empty row at seq {seq}")))?,
                };
                events.push((expected, decode_event(bytes)?));
                expected += 1;
            }
            // The head's entries may not be copied to their rows yet.
            while expected <= upper
                && let Some(bytes) = head.entry(i64::try_from(expected).unwrap_or(i64::MAX))
            {
                events.push((expected, decode_event(bytes)?));
                expected += 1;
            }
            if expected <= upper {
                // A gap: retention trimmed rows since the head was read.
                let now = inner.read_head(LogKind::User, user.as_str()).await?;
                let now_oldest = seq_u64(now.oldest);
                if expected < now_oldest {
                    return Ok(Err(CursorExpired { requested: after, oldest: now_oldest, head: seq_u64(now.seq) }));
                }
                return Err(Error::internal(format!(
                    "user log of {user} is missing seq {expected} below its head {h}"
                )));
            }
        }
        Ok(Ok(LogPage { events, head: h }))
    }

    async fn bounds(&self, user: &UserId) -> Result<(u64, u64)> {
        let head = self.inner.read_head(LogKind::User, user.as_str()).await?;
        let h = seq_u64(head.seq);
        Ok((h, if h == 0 { 0 } else { seq_u64(head.oldest) }))
    }

    async fn ack(&self, user: &UserId, seq: u64) -> Result<()> {
        let seq = i64::try_from(seq).map_err(|_| Error::bad_request("seq", "acked seq does not fit a cql bigint"))?;
        self.inner.max_put("ack", &self.inner.st.acks, user.as_str(), seq).await
    }

    async fn acked(&self, user: &UserId) -> Result<u64> {
        let acked = self.inner.max_get("read acked", &self.inner.st.acks, user.as_str()).await?;
        Ok(acked.map_or(0, seq_u64))
    }
}

/// A per-key maximum without Paxos: each value is a clustering row (sorted
/// descending); a put inserts its value and deletes smaller ones in one
/// single-partition batch, and the maximum is the first row.
pub(crate) struct MaxRegister {
    put: Batch,
    get: PreparedStatement,
}

impl MaxRegister {
    /// `table` has `(key, value bigint)` clustered by `value DESC`.
    pub(crate) async fn prepare(p: &Preparer<'_>, table: &str, key: &str, value: &str) -> Result<Self> {
        let insert = p.prepare(&format!("INSERT INTO {{ks}}.{table} ({key}, {value}) VALUES (?, ?)"), true).await?;
        let trim = p.prepare(&format!("DELETE FROM {{ks}}.{table} WHERE {key} = ? AND {value} < ?"), true).await?;
        let mut put = Batch::new(BatchType::Unlogged);
        put.append_statement(insert);
        put.append_statement(trim);
        put.set_is_idempotent(true);
        Ok(Self {
            put,
            get: p.prepare(&format!("SELECT {value} FROM {{ks}}.{table} WHERE {key} = ? LIMIT 1"), true).await?,
        })
    }
}

impl Inner {
    pub(crate) async fn max_put(&self, context: &'static str, reg: &MaxRegister, key: &str, value: i64) -> Result<()> {
        self.session.batch(&reg.put, ((key, value), (key, value))).await.map_err(|e| error::execution(context, e))?;
        Ok(())
    }

    pub(crate) async fn max_get(&self, context: &'static str, reg: &MaxRegister, key: &str) -> Result<Option<i64>> {
        let row: Option<(i64,)> = self.first_row(context, &reg.get, (key,)).await?;
        Ok(row.map(|(v,)| v))
    }
}
