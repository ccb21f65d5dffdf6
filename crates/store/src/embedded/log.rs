//! The user logs (`UserLog`): rows and runs, group runs, the heads, retention.
//!
//! A row of `user_log` holds one entry or a run of consecutive ones (all that
//! one writer round appended to that user), keyed by its first seq. Rows
//! follow each other without gaps, so the row after one ending at `n` is the
//! one keyed `n + 1`.
//!
//! A row can instead be a group run: a stretch of a group's timeline
//! (`group_log`, one row per message sent to the group). While it is the
//! user's newest row it is open and grows with the timeline, so a member
//! receiving only that group's messages costs no row per message: the
//! timeline's row is shared by every member. It ends where the user's next
//! row starts, or, when the user leaves the group, is closed with its count.
//!
//! What keeps an open run true: the timeline only grows by messages whose
//! recipients are the group's members at that moment (checked in the writer,
//! where member changes are serialized), and a member's open run is closed in
//! the batch that removes them. So everyone with an open run on a group gets
//! every entry its timeline gains, and their log heads move with it.
//!
//! The membership check is against the member cache, which is exact when it
//! holds the group (only the writer changes members); a group it does not
//! hold gets plain rows rather than a member scan in the writer, and so does
//! a send that raced a member change. A leaver's run is closed after the rows
//! the round staged so far (`Round::flush_rows`), which it may cover.
//!
//! # Heads
//!
//! A log head is loaded from the user's newest row, and for an open run from
//! its timeline's last position. Heads (and timelines' last positions) are
//! cached up to [`EmbeddedOptions::heads_cached`](super::EmbeddedOptions):
//! past it the writer drops a quarter of them between two rounds, when
//! everything it wrote is durable, so a dropped head reads back from disk as
//! it was; a head with a seq not yet durable stays.
//!
//! # Retention
//!
//! By count per user ([`EmbeddedOptions::log_retention_events`](super::EmbeddedOptions)):
//! a row goes when all its entries are older than the retained ones; reads
//! skip the expired entries of a row that straddles (an open group run
//! included, which moves the oldest seq without a row being written). After
//! a restart the oldest seq is again the head minus the retention, not the
//! start of a straddling row.

use std::sync::Arc;

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{ConversationKey, Error, GroupId, LogEvent, Message, Result, UserId};
use prost::Message as _;

use super::writer::Round;
use super::{EmbeddedStore, Inner, UserMap, decode, drop_excess, key2, prefix_end, seq_of, storage_err};
use crate::{Appended, CursorExpired, LogPage, UserLog};

#[derive(Debug, Clone)]
pub(super) struct LogHead {
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
    pub(super) fn close_group_runs<'u>(
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
    pub(super) fn runs_closed(&self, users: &[UserId]) {
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
        drop_excess(&mut self.log_heads.lock(), cap, keep, |head| head.assigned == head.durable);
        drop_excess(&mut self.timeline_heads.lock(), cap, keep, |_| true);
        self.conversations_cached.lock().trim(cap, keep);
    }

    /// After a round's fsync: readers may now see those entries.
    pub(super) fn publish_durable(&self, appended: &[(Vec<UserId>, Vec<Appended>)]) {
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
            // A whole message: what `UserLog::append` of a message event
            // writes, and every message entry written before sends stored
            // references (before commit a38fed3).
            Some(Kind::Message(message)) => Some(v1::log_event::Kind::Message(message)),
            Some(Kind::GroupChange(change)) => Some(v1::log_event::Kind::GroupChange(change)),
            Some(Kind::MultiDevice(event)) => Some(v1::log_event::Kind::MultiDevice(event)),
            Some(Kind::ChannelAck(ack)) => Some(v1::log_event::Kind::ChannelAck(ack)),
            Some(Kind::Receipt(receipt)) => Some(v1::log_event::Kind::Receipt(receipt)),
            Some(Kind::Recall(recall)) => Some(v1::log_event::Kind::Recall(recall)),
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
    pub(super) fn load_heads(&self, users: &[UserId]) -> Result<()> {
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
    pub(super) fn timeline_slot(
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
    pub(super) fn stage_log(
        &mut self,
        users: Vec<UserId>,
        entry: fjall::Slice,
        at: Option<&TimelinePos>,
    ) -> Vec<Appended> {
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
        let conversations = std::mem::take(&mut self.conversations);
        if self.runs.is_empty() && self.sends.is_empty() && timeline_rows.is_empty() && conversations.is_empty() {
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
        conversations.stage(inner, &mut batch);
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
        if written.is_ok() {
            conversations.written(inner);
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::embedded::test_util::*;

    /// The appends of one round to a user are one row; every read, from any
    /// position and with any limit, still returns exactly the entries after
    /// its cursor, in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_writes_one_row_per_user_and_reads_start_anywhere_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let users = [UserId::parse("ann", "u").unwrap(), UserId::parse("ben", "u").unwrap()];
        append_in_one_round(&store, &users, 1..7).await;
        UserLog::append(&*store, &users[..1], &group_created_n(7)).await.unwrap();
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
            store.close().await;
        }
        let store = open(dir.path(), 4);
        assert_eq!(
            store.bounds(&ann[0]).await.unwrap(),
            (8, 5),
            "head from the last row's last entry, oldest as before"
        );
        UserLog::append(&*store, &ann, &group_created_n(9)).await.unwrap();
        assert_eq!(store.bounds(&ann[0]).await.unwrap(), (9, 6));
        assert_eq!(rows_of(&store, "ann"), vec![4, 7, 9], "row 4-6 still holds seq 6");
        assert_eq!(seqs(store.read(&ann[0], 5, 10).await.unwrap().unwrap()), vec![6, 7, 8, 9]);
        UserLog::append(&*store, &ann, &group_created_n(10)).await.unwrap();
        assert_eq!(rows_of(&store, "ann"), vec![7, 9, 10]);
    }

    #[tokio::test]
    async fn lowered_retention_trims_the_surplus_on_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::parse("carol", "u").unwrap();
        let event = group_created();
        {
            let store = open(dir.path(), 10);
            for _ in 0..8 {
                UserLog::append(&*store, std::slice::from_ref(&user), &event).await.unwrap();
            }
            store.close().await;
        }
        let store = open(dir.path(), 3);
        UserLog::append(&*store, std::slice::from_ref(&user), &event).await.unwrap();
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
            allow_group_ack: false,
            pos: 0,
        };
        let whole = message(7, "c7");
        UserLog::append(&*store, std::slice::from_ref(&ben), &LogEvent::Message(whole.clone())).await.unwrap();
        let sent = message(8, "c8");
        let users = [ann.clone(), ben.clone()];
        store.insert_and_append(&sent, &users, false, &*store).await.unwrap();
        let stored = store.inner.log.get(key2("ben", &2u64.to_be_bytes())).unwrap().unwrap();
        assert!(stored.len() < 40, "a reference, not the message ({} bytes)", stored.len());
        let page = store.read(&ben, 0, 10).await.unwrap().unwrap();
        assert_eq!(page.events, vec![(1, LogEvent::Message(whole)), (2, LogEvent::Message(sent))]);
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
        store.insert_and_append(&direct, &[ben.clone(), ann.clone()], false, &*store).await.unwrap();
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
        assert_log_is(&*store, &ann, &log).await;
        // cat's oldest row is its only one, an open run: once a row follows
        // it, it goes when retention passes its end.
        assert_eq!(rows_of(&store, "cat"), vec![1]);
        let to_cat = text_message(&ann, &cat, "c", "to cat");
        store.insert_and_append(&to_cat, &[ann.clone(), cat.clone()], false, &*store).await.unwrap();
        log.push(to_cat);
        for n in 10..12 {
            log.push(group_message(&ben, &group.id, n));
            send_to_group(&stores, &log[n]).await;
        }
        assert_eq!(rows_of(&store, "cat"), vec![9, 10]);
        drop(stores);
        store.close().await;
        let store = open(dir.path(), 3);
        assert_eq!(store.bounds(&ann).await.unwrap(), (12, 10), "kept what it kept before the restart");
        assert_log_is(&*store, &ann, &log).await;
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
        let mut small = open_with(small_dir.path(), small_options.clone());
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
                    store.insert_and_append(message, &[dan.clone(), cat.clone()], false, &**store).await.unwrap();
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
        small.close().await;
        small = open_with(small_dir.path(), small_options);
        same(small.clone(), full.clone(), users.clone(), "after a restart").await;
        let after_restart = group_message(&ben, &group.id, 10);
        for store in [&small, &full] {
            send_to_group(&store.stores(), &after_restart).await;
        }
        same(small.clone(), full.clone(), users, "a send after the restart").await;
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
            store.insert_and_append(&direct, &[ben.clone(), ann.clone()], false, &*store).await.unwrap();
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
            store.close().await;
        }
        let with_direct = |sent: &[Message]| {
            let mut all = sent[..6].to_vec();
            all.push(direct.clone());
            all.extend_from_slice(&sent[6..]);
            all
        };
        let store = open(dir.path(), 1000);
        let stores = store.stores();
        assert_log_is(&*store, &ann, &with_direct(&sent)).await;
        assert_log_is(&*store, &cat, &sent[..8]).await;
        // After the reopen ann's open run goes on from where the timeline is.
        sent.push(group_message(&ben, &group.id, 9));
        send_to_group(&stores, &sent[9]).await;
        assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8]);
        assert_log_is(&*store, &ann, &with_direct(&sent)).await;
        assert_log_is(&*store, &cat, &sent[..8]).await;

        // Recipients that are not the members (a send that raced cat's
        // leave): plain rows, the timeline does not move.
        let raced = group_message(&ben, &group.id, 10);
        store.insert_and_append(&raced, &[ann.clone(), ben.clone(), cat.clone()], false, &*store).await.unwrap();
        assert_eq!(timeline_rows(&store), 10);
        assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8, 12]);
        let mut cat_log = sent[..8].to_vec();
        cat_log.push(raced.clone());
        assert_log_is(&*store, &cat, &cat_log).await;
        sent.push(raced);
        sent.push(group_message(&ann, &group.id, 11));
        send_to_group(&stores, &sent[11]).await;
        assert_eq!(rows_of(&store, "ann"), vec![1, 7, 8, 12, 13]);
        assert_log_is(&*store, &ann, &with_direct(&sent)).await;
        assert_log_is(&*store, &cat, &cat_log).await;

        // Recipients read before dan joined miss dan, whose run is open:
        // were that send in the timeline, dan's run would claim it.
        let dan = UserId::parse("dan", "u").unwrap();
        stores.groups.add_members(&group.id, &members_of(&[&dan])).await.unwrap();
        let welcome = group_message(&ann, &group.id, 12);
        send_to_group(&stores, &welcome).await;
        let stale = group_message(&ben, &group.id, 13);
        store.insert_and_append(&stale, &[ann.clone(), ben.clone()], false, &*store).await.unwrap();
        drop(stores);
        store.close().await;
        let store = open(dir.path(), 1000);
        assert_log_is(&*store, &dan, std::slice::from_ref(&welcome)).await;
        sent.push(welcome);
        sent.push(stale);
        assert_log_is(&*store, &ann, &with_direct(&sent)).await;
    }
}
