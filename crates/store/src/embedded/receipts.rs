//! Group read receipts (`ReceiptStore`): one row per reader of a message,
//! and the message's count beside them, both written by the writer, which
//! alone decides whether a receipt is new (so the count is exact).
//!
//! ```text
//! group_reads         conversation \0 id_be reader -> time_be (the first read)
//! group_read_counts   conversation \0 id_be        -> count_be
//! ```

use std::ops::Bound;

use async_trait::async_trait;
use natter_types::{ConversationKey, MessageId, Reader, Result, UserId};

use super::{EmbeddedStore, key2, seq_of, storage_err};
use crate::ReceiptStore;

fn message_key(conversation: &ConversationKey, message: MessageId) -> Vec<u8> {
    key2(conversation.as_str(), &message.0.to_be_bytes())
}

fn reader_key(prefix: &[u8], reader: &str) -> Vec<u8> {
    [prefix, reader.as_bytes()].concat()
}

#[async_trait]
impl ReceiptStore for EmbeddedStore {
    async fn record_read(
        &self,
        conversation: &ConversationKey,
        message: MessageId,
        reader: &UserId,
        time: i64,
    ) -> Result<()> {
        let count_key = message_key(conversation, message);
        let key = reader_key(&count_key, reader.as_str());
        self.writer
            .write(move |round| {
                let inner = round.inner;
                // Jobs run one at a time and see the round's earlier batches,
                // so this check and the count below cannot race.
                if inner.group_reads.contains_key(&key).map_err(storage_err)? {
                    return Ok(());
                }
                let count = inner.group_read_counts.get(&count_key).map_err(storage_err)?.map_or(0, |v| seq_of(&v));
                let mut batch = inner.db.batch();
                batch.insert(&inner.group_reads, key, time.to_be_bytes().to_vec());
                batch.insert(&inner.group_read_counts, count_key, (count + 1).to_be_bytes().to_vec());
                round.commit(batch)
            })
            .await
    }

    async fn read_count(&self, conversation: &ConversationKey, message: MessageId) -> Result<u64> {
        let count = self.inner.group_read_counts.get(message_key(conversation, message)).map_err(storage_err)?;
        Ok(count.map_or(0, |v| seq_of(&v)))
    }

    async fn readers(
        &self,
        conversation: &ConversationKey,
        message: MessageId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<Reader>> {
        let prefix = message_key(conversation, message);
        let start = match after {
            Some(after) => Bound::Excluded(reader_key(&prefix, after.as_str())),
            None => Bound::Included(prefix.clone()),
        };
        // User ids are `a-z 0-9 _ - .`: DEL (0x7f) sorts after every one.
        let end = Bound::Excluded(reader_key(&prefix, "\u{7f}"));
        self.inner
            .group_reads
            .range::<Vec<u8>, _>((start, end))
            .take(limit)
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                let user = std::str::from_utf8(key.get(prefix.len()..).unwrap_or_default())
                    .map_err(|_| natter_types::Error::internal("corrupt group read row"))?;
                Ok(Reader { user: UserId::parse(user, "reader")?, time: seq_of(&value) as i64 })
            })
            .collect()
    }
}
