//! Messages and their idempotency records (`MessageStore`), including a send
//! (`insert_and_append`): one job whose rows the writer's round writes atomically.

use std::ops::Bound;

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{ConversationKey, Error, Message, MessageId, Result, UserId};
use prost::Message as _;

use super::writer::{Round, RoundSend};
use super::{EmbeddedStore, Inner, decode, key2, prefix_end, storage_err};
use crate::{Direction, Inserted, MessageStore, Stored, UserLog};

impl Inner {
    /// A message that another record (dedup, log entry) says is stored.
    pub(super) fn referenced_message(&self, conversation: &str, id: u64, by: &str) -> Result<Message> {
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

    pub(super) fn dedup_record(&self, key: &[u8]) -> Result<Option<v1::DedupRecord>> {
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
    async fn insert_and_append(
        &self,
        message: &Message,
        recipients: &[UserId],
        counted: bool,
        _log: &dyn UserLog,
    ) -> Result<Stored> {
        let mut message = message.clone();
        message.pos = 0;
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
                    // Stored, but its fan-out never written: finish it. Today
                    // that is an `insert_message` alone. It also serves data
                    // written before a send became one batch (before commit
                    // aa0d631), where a crash could fall between the message's
                    // batch and its fan-out's; that part can go once no such
                    // data directory is left.
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
                        if counted {
                            round.stage_counted(&mut message)?;
                        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::embedded::test_util::*;

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
                allow_group_ack: false,
                pos: 0,
            };
            Box::pin(async move { store.insert_and_append(&message, &users, false, &store).await.unwrap() })
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
}
