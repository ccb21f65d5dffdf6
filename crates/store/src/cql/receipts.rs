//! `ReceiptStore` over CQL: group read receipts in `group_reads`, one
//! partition per group message and a row per reader, without Paxos.
//!
//! - The count is exact because it is not kept beside the rows: it is a
//!   `COUNT(*)` of the message's partition, and a repeated receipt writes the
//!   same row again, never a second one, so no interleaving of concurrent
//!   receipts can count a reader twice or lose one.
//! - The first read time is kept by reading the reader's row before writing
//!   it: a receipt that finds the row writes nothing. The alternative, a
//!   write timestamp that decreases as `read_at` grows (so the earliest time
//!   wins last-write-wins), was not taken: it keeps the smallest time rather
//!   than the first recorded one (the embedded backend keeps the first), and
//!   timestamps unrelated to the clock would be shadowed by, or outlive, any
//!   later wall-clock delete of the rows. The race this leaves is harmless:
//!   two concurrent first receipts of the same reader (two devices) both miss
//!   the row and both write it, and the row keeps one of the two nearly
//!   equal times. Repeats, the common case (clients resend receipts), cost a
//!   read and no write.

use async_trait::async_trait;
use natter_types::{ConversationKey, Error, MessageId, Reader, Result, UserId};
use scylla::statement::prepared::PreparedStatement;

use super::messages::id_value;
use super::statements::Preparer;
use super::{CqlStore, cql_limit};
use crate::ReceiptStore;

const READERS: &str = "SELECT reader, read_at FROM {ks}.group_reads WHERE conversation = ? AND msg_id = ?";

pub(crate) struct ReceiptStatements {
    read_get: PreparedStatement,
    read_insert: PreparedStatement,
    read_count: PreparedStatement,
    readers_first: PreparedStatement,
    readers_after: PreparedStatement,
}

impl ReceiptStatements {
    pub(crate) async fn prepare(p: &Preparer<'_>) -> Result<Self> {
        Ok(Self {
            read_get: p
                .prepare(
                    "SELECT read_at FROM {ks}.group_reads WHERE conversation = ? AND msg_id = ? AND reader = ?",
                    true,
                )
                .await?,
            // Idempotent: a retry writes the same cells (at worst replacing a
            // concurrent first receipt's nearly equal time, see above).
            read_insert: p
                .prepare(
                    "INSERT INTO {ks}.group_reads (conversation, msg_id, reader, read_at) VALUES (?, ?, ?, ?)",
                    true,
                )
                .await?,
            read_count: p
                .prepare("SELECT COUNT(*) FROM {ks}.group_reads WHERE conversation = ? AND msg_id = ?", true)
                .await?,
            readers_first: p.prepare(&format!("{READERS} LIMIT ?"), true).await?,
            readers_after: p.prepare(&format!("{READERS} AND reader > ? LIMIT ?"), true).await?,
        })
    }
}

fn corrupt(conversation: &ConversationKey, message: MessageId, why: &str) -> Error {
    Error::internal(format!("corrupt read receipt of message {message} in {}: {why}", conversation.as_str()))
}

#[async_trait]
impl ReceiptStore for CqlStore {
    async fn record_read(
        &self,
        conversation: &ConversationKey,
        message: MessageId,
        reader: &UserId,
        time: i64,
    ) -> Result<()> {
        let inner = &*self.inner;
        let st = &inner.st.receipts;
        let key = (conversation.as_str(), id_value(message)?, reader.as_str());
        // Read before write (see the module docs): a repeat keeps the first
        // time and writes nothing.
        let existing: Option<(Option<i64>,)> = inner.first_row("read read receipt", &st.read_get, key).await?;
        if existing.is_some() {
            return Ok(());
        }
        inner.execute("record read receipt", &st.read_insert, (key.0, key.1, key.2, time)).await?;
        Ok(())
    }

    async fn read_count(&self, conversation: &ConversationKey, message: MessageId) -> Result<u64> {
        let inner = &*self.inner;
        let values = (conversation.as_str(), id_value(message)?);
        let row: Option<(i64,)> = inner.first_row("count read receipts", &inner.st.receipts.read_count, values).await?;
        let Some((count,)) = row else { return Ok(0) };
        u64::try_from(count).map_err(|_| corrupt(conversation, message, &format!("count {count}")))
    }

    async fn readers(
        &self,
        conversation: &ConversationKey,
        message: MessageId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<Reader>> {
        let inner = &*self.inner;
        let st = &inner.st.receipts;
        let id = id_value(message)?;
        let rows: Vec<(String, Option<i64>)> = match after {
            Some(after) => {
                let values = (conversation.as_str(), id, after.as_str(), cql_limit(limit));
                inner.scan("read readers", &st.readers_after, values, limit).await?
            }
            None => {
                let values = (conversation.as_str(), id, cql_limit(limit));
                inner.scan("read readers", &st.readers_first, values, limit).await?
            }
        };
        rows.into_iter()
            .map(|(user, time)| {
                let time = time.ok_or_else(|| corrupt(conversation, message, &format!("reader {user} has no time")))?;
                let user = UserId::parse(&user, "reader")
                    .map_err(|e| corrupt(conversation, message, &format!("reader: {}", e.message)))?;
                Ok(Reader { user, time })
            })
            .collect()
    }
}
