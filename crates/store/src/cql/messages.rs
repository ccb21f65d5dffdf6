//! `MessageStore` over CQL: history in `(conversation, bucket)` partitions,
//! idempotency records with `INSERT … IF NOT EXISTS`, and a counted send's
//! position (see the module docs of [`super`], "Conversations").

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{ConversationKey, Error, LogEvent, Message, MessageId, Result, UserId};
use prost::Message as _;

use super::conversations::Claim;
use super::{BUCKET_MS, CACHE_CAP, CqlStore, Inner, cql_limit, decode, error};
use crate::{Direction, Inserted, MessageStore, Stored, UserLog};

/// Bits below the millisecond timestamp in a message id (node + sequence).
const ID_TIME_SHIFT: u32 = 22;

/// The partition a message id falls in.
pub(crate) fn bucket_of(id: MessageId) -> i32 {
    // 41 bits of ms / 10 days fits an i32 for the id's whole range.
    i32::try_from((id.0 >> ID_TIME_SHIFT) / BUCKET_MS).unwrap_or(i32::MAX)
}

pub(crate) fn id_value(id: MessageId) -> Result<i64> {
    i64::try_from(id.0).map_err(|_| Error::internal(format!("message id {id} does not fit a cql bigint")))
}

/// Write timestamp of a message row: the same for the first write and any
/// repair by a duplicate, and older than any later change of the row. A
/// positioned copy is a microsecond later, so it wins over one written
/// without its position whatever the order they land in.
fn message_write_time(message: &Message) -> i64 {
    message.timestamp.saturating_mul(1000).saturating_add(i64::from(message.pos > 0))
}

fn decode_message(bytes: &[u8]) -> Result<Message> {
    Ok(decode::<v1::Message>("message", bytes)?.try_into()?)
}

fn encode_message(message: &Message) -> Vec<u8> {
    v1::Message::from(message).encode_to_vec()
}

/// `message, fanned_out, counted` of an idempotency record.
type RecordValues = (Option<Vec<u8>>, Option<bool>, Option<bool>);

/// A stored idempotency record.
#[derive(Debug)]
struct Record {
    message: Message,
    fanned_out: bool,
    /// Whether its send counts for conversations: one whose message has no
    /// position yet died before recording it.
    counted: bool,
}

impl Record {
    fn pending_position(&self) -> bool {
        self.counted && self.message.pos == 0
    }

    fn into_inserted(self) -> Inserted {
        Inserted::Duplicate { message: self.message, fanned_out: self.fanned_out }
    }
}

impl Inner {
    /// Makes sure the conversation's bucket is listed, then writes the
    /// message row (both idempotent).
    async fn write_message(&self, message: &Message, bytes: &[u8]) -> Result<()> {
        let conversation = message.conversation();
        let bucket = bucket_of(message.id);
        let key = (conversation.as_str().to_owned(), bucket);
        if !self.buckets.lock().contains(&key) {
            self.execute("record conversation bucket", &self.st.bucket_insert, (conversation.as_str(), bucket)).await?;
            let mut seen = self.buckets.lock();
            if seen.len() >= CACHE_CAP {
                seen.clear();
            }
            seen.insert(key);
        }
        self.execute(
            "insert message",
            &self.st.message_insert,
            (conversation.as_str(), bucket, id_value(message.id)?, bytes, message_write_time(message)),
        )
        .await?;
        Ok(())
    }

    /// The idempotency record's TTL in seconds (validated to fit).
    fn idempotency_ttl(&self) -> i32 {
        i32::try_from(self.options.idempotency_window.as_secs()).unwrap_or(i32::MAX)
    }

    /// Replaces an idempotency record that no longer holds with `message`'s,
    /// if it is still the record with message id `expired`: one older than
    /// the window but not yet dropped by its TTL (the clocks differ), or
    /// (`None`) a row left with only its fanned-out mark, which only builds
    /// before the idempotency window (32a432b, schema version 4) wrote,
    /// without the record's TTL; that case can go with them (see the module
    /// docs, "Idempotency").
    async fn take_over(
        &self,
        message: &Message,
        bytes: &[u8],
        counted: bool,
        expired: Option<MessageId>,
    ) -> Result<Option<Record>> {
        let conversation = message.conversation();
        let values = (
            self.idempotency_ttl(),
            conversation.as_str(),
            id_value(message.id)?,
            bytes,
            counted,
            message.from.as_str(),
            message.client_msg_id.as_str(),
            expired.map(id_value).transpose()?,
        );
        let lwt = match self.conditional("replace expired idempotency record", &self.st.dedup_take_over, values).await {
            Ok(lwt) => lwt.checked()?,
            // As for the insert: the record says whether it became ours.
            Err(e) if error::outcome_unknown(&e) => {
                return match self.stored_record(&message.from, &message.client_msg_id).await? {
                    Some(stored) if stored.message.id == message.id => Ok(None),
                    Some(duplicate) => Ok(Some(duplicate)),
                    None => Err(error::execution("replace expired idempotency record", e)),
                };
            }
            Err(e) => return Err(error::execution("replace expired idempotency record", e)),
        };
        if lwt.applied {
            return Ok(None);
        }
        // Another send replaced it first (or the record is gone): whatever
        // is stored now answers.
        self.stored_record(&message.from, &message.client_msg_id)
            .await?
            .map(Some)
            .ok_or_else(|| Error::unavailable("idempotency record changed concurrently, retry"))
    }

    /// The stored record, read linearizably (after a conditional insert
    /// whose answer was lost). `None` also for a row without its message (see
    /// [`take_over`](Self::take_over)): it holds nothing.
    async fn stored_record(&self, sender: &UserId, client_msg_id: &str) -> Result<Option<Record>> {
        let row: Option<RecordValues> = self
            .first_row("read idempotency record", &self.st.dedup_get_serial, (sender.as_str(), client_msg_id))
            .await?;
        match row {
            None | Some((None, _, _)) => Ok(None),
            Some((Some(bytes), fanned_out, counted)) => Ok(Some(Record {
                message: decode_message(&bytes)?,
                fanned_out: fanned_out.unwrap_or(false),
                counted: counted.unwrap_or(false),
            })),
        }
    }

    /// Writes the idempotency record of `message` (`counted` with it), or
    /// finds the one that holds: `None` when this call stored it.
    async fn claim_record(&self, message: &Message, bytes: &[u8], counted: bool) -> Result<Option<Record>> {
        let conversation = message.conversation();
        let values = (
            message.from.as_str(),
            message.client_msg_id.as_str(),
            conversation.as_str(),
            id_value(message.id)?,
            bytes,
            counted,
            self.idempotency_ttl(),
        );
        let mut outcome = match self.conditional("insert idempotency record", &self.st.dedup_insert, values).await {
            Ok(lwt) => {
                let lwt = lwt.checked()?;
                if lwt.applied {
                    None
                } else {
                    match lwt.blob("message") {
                        Some(stored) => Some(Record {
                            message: decode_message(stored)?,
                            fanned_out: lwt.boolean("fanned_out").unwrap_or(false),
                            counted: lwt.boolean("counted").unwrap_or(false),
                        }),
                        // The database did not return the message: read the
                        // record; a row without its message is taken over.
                        None => match self.stored_record(&message.from, &message.client_msg_id).await? {
                            Some(duplicate) => Some(duplicate),
                            None => self.take_over(message, bytes, counted, None).await?,
                        },
                    }
                }
            }
            Err(e) if error::outcome_unknown(&e) => {
                // A serial read settles the round; the record says whether
                // it was ours (same message id) or another attempt's.
                match self.stored_record(&message.from, &message.client_msg_id).await? {
                    Some(stored) if stored.message.id == message.id => None,
                    Some(duplicate) => Some(duplicate),
                    None => return Err(error::execution("insert idempotency record", e)),
                }
            }
            Err(e) => return Err(error::execution("insert idempotency record", e)),
        };
        if let Some(stored) = &outcome
            && crate::idempotency_expired(stored.message.timestamp, message.timestamp, self.options.idempotency_window)
        {
            outcome = self.take_over(message, bytes, counted, Some(stored.message.id)).await?;
        }
        Ok(outcome)
    }

    /// The position of a counted message whose record has none yet: the one
    /// it took before if its conversation's head still lists it, or the next.
    async fn position(&self, message: &Message) -> Result<u64> {
        let conversation = message.conversation();
        self.take_position(conversation.as_str(), Claim { id: message.id, time: message.timestamp }).await
    }

    /// Rewrites the record with the positioned message. The record was
    /// written by a conditional insert, whose write time is the Paxos
    /// ballot's; this plain write is stamped just after the cell it
    /// replaces (read back), so it wins whatever the coordinators' clocks,
    /// and carries what is left of the record's TTL, so the cells still
    /// expire together. A record replaced or expired meanwhile is left
    /// alone: the message row keeps the position.
    async fn record_position(&self, message: &Message, bytes: &[u8]) -> Result<()> {
        let (sender, client_msg_id) = (message.from.as_str(), message.client_msg_id.as_str());
        let id = id_value(message.id)?;
        let row: Option<(Option<i64>, Option<i64>, Option<i32>)> =
            self.first_row("read idempotency record", &self.st.dedup_write_time, (sender, client_msg_id)).await?;
        let Some((Some(stored_id), Some(written), ttl)) = row else { return Ok(()) };
        if stored_id != id {
            return Ok(());
        }
        // No TTL only on records of builds before the idempotency window
        // (see `mark_fanned_out`); 0 keeps none.
        let ttl = match ttl {
            None => 0,
            Some(left) if left > 0 => left,
            Some(_) => return Ok(()),
        };
        let conversation = message.conversation();
        let values = (ttl, written.saturating_add(1), conversation.as_str(), id, bytes, sender, client_msg_id);
        self.execute("record message position", &self.st.dedup_position, values).await?;
        Ok(())
    }
}

#[async_trait]
impl MessageStore for CqlStore {
    async fn insert_message(&self, message: &Message) -> Result<Inserted> {
        let inner = &*self.inner;
        let bytes = encode_message(message);
        match inner.claim_record(message, &bytes, false).await? {
            None => {
                inner.write_message(message, &bytes).await?;
                Ok(Inserted::New)
            }
            Some(stored) => {
                // Re-write the stored message (identical cells): if the first
                // attempt died between its two writes, history gets it now.
                // One still waiting for its position gets it with it.
                if !stored.pending_position() {
                    inner.write_message(&stored.message, &encode_message(&stored.message)).await?;
                }
                Ok(stored.into_inserted())
            }
        }
    }

    /// The record, the position (counted), the message row and the users'
    /// conversation states, then the log entries, then the mark. A retry
    /// finds the record and completes what is missing: the position (the
    /// head's `recent` ids tell whether the first attempt took one), the
    /// message row, the states (idempotent), the entries.
    async fn insert_and_append(
        &self,
        message: &Message,
        recipients: &[UserId],
        counted: bool,
        log: &dyn UserLog,
    ) -> Result<Stored> {
        let inner = &*self.inner;
        let mut message = message.clone();
        message.pos = 0;
        let bytes = encode_message(&message);
        let (mut message, duplicate, position_pending) = match inner.claim_record(&message, &bytes, counted).await? {
            None => (message, false, counted),
            Some(stored) => {
                if stored.fanned_out {
                    // Complete: the states and entries were written before the mark.
                    inner.write_message(&stored.message, &encode_message(&stored.message)).await?;
                    return Ok(Stored { message: stored.message, duplicate: true, appended: Vec::new() });
                }
                let pending = stored.pending_position();
                (stored.message, true, pending)
            }
        };
        if position_pending {
            message.pos = inner.position(&message).await?;
        }
        let bytes = encode_message(&message);
        let record = async { if position_pending { inner.record_position(&message, &bytes).await } else { Ok(()) } };
        let states = async { if message.pos > 0 { inner.counted_effects(&message).await } else { Ok(()) } };
        futures::try_join!(record, inner.write_message(&message, &bytes), states)?;
        let appended = log.append(recipients, &LogEvent::Message(message.clone())).await?;
        self.mark_fanned_out(&message.from, &message.client_msg_id).await?;
        Ok(Stored { message, duplicate, appended })
    }

    async fn mark_fanned_out(&self, sender: &UserId, client_msg_id: &str) -> Result<()> {
        let inner = &*self.inner;
        let record: Option<(Option<i64>, Option<i32>)> =
            inner.first_row("read idempotency record", &inner.st.dedup_get, (sender.as_str(), client_msg_id)).await?;
        let Some((_, ttl)) = record else {
            return Err(Error::not_found("no such client message id"));
        };
        // The mark must not outlive the record: a row left with only the mark
        // would be a record without its message. So it gets what is left of
        // the record's TTL, less a second for the time this write takes; a
        // record that old is not marked (a retry after it is a new message).
        // Records written without a TTL keep none (0): those of builds
        // before the idempotency window (32a432b, schema version 4), which
        // never expire; this arm can go once no keyspace holds one.
        let ttl = match ttl {
            None => 0,
            Some(left) if left > 1 => left - 1,
            Some(_) => return Ok(()),
        };
        inner.execute("mark fanned out", &inner.st.dedup_mark, (ttl, sender.as_str(), client_msg_id)).await?;
        Ok(())
    }

    async fn get_message(&self, conversation: &ConversationKey, id: MessageId) -> Result<Option<Message>> {
        let inner = &*self.inner;
        let row: Option<(Option<Vec<u8>>,)> = inner
            .first_row("get message", &inner.st.message_get, (conversation.as_str(), bucket_of(id), id_value(id)?))
            .await?;
        match row {
            Some((Some(bytes),)) => Ok(Some(decode_message(&bytes)?)),
            _ => Ok(None),
        }
    }

    async fn history(
        &self,
        conversation: &ConversationKey,
        cursor: Option<MessageId>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let inner = &*self.inner;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conv = conversation.as_str();
        let mut buckets: Vec<i32> = inner
            .scan::<(i32,)>("list conversation buckets", &inner.st.buckets, (conv,), usize::MAX)
            .await?
            .into_iter()
            .map(|(b,)| b)
            .collect();
        let cursor_bucket = cursor.map(bucket_of);
        let cursor_value = cursor.map(id_value).transpose()?;
        match direction {
            Direction::Up => {
                buckets.retain(|b| cursor_bucket.is_none_or(|c| *b <= c));
                buckets.sort_unstable_by(|a, b| b.cmp(a));
            }
            Direction::Down => {
                buckets.retain(|b| cursor_bucket.is_none_or(|c| *b >= c));
                buckets.sort_unstable();
            }
        }
        let mut page = Vec::new();
        for bucket in buckets {
            let want = limit - page.len();
            let bound = match (cursor_bucket, cursor_value) {
                (Some(cb), Some(cv)) if cb == bucket => Some(cv),
                _ => None,
            };
            let st = match (direction, bound.is_some()) {
                (Direction::Up, false) => &inner.st.history_up,
                (Direction::Up, true) => &inner.st.history_up_before,
                (Direction::Down, false) => &inner.st.history_down,
                (Direction::Down, true) => &inner.st.history_down_after,
            };
            let rows: Vec<(Option<Vec<u8>>,)> = match bound {
                Some(id) => inner.scan("read history", st, (conv, bucket, id, cql_limit(want)), want).await?,
                None => inner.scan("read history", st, (conv, bucket, cql_limit(want)), want).await?,
            };
            for (bytes,) in rows {
                if let Some(bytes) = bytes {
                    page.push(decode_message(&bytes)?);
                }
            }
            if page.len() >= limit {
                break;
            }
        }
        Ok(page)
    }
}
