//! The webhook outbox: an ordered queue per receiver (`WebhookOutbox`).

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{Result, WebhookEvent};
use prost::Message as _;

use super::{EmbeddedStore, decode, key2, seq_of, storage_err};
use crate::WebhookOutbox;

#[async_trait]
impl WebhookOutbox for EmbeddedStore {
    async fn push(&self, receiver: &str, events: &[WebhookEvent]) -> Result<()> {
        let (receiver, events) = (receiver.to_owned(), events.to_vec());
        self.write_batch(move |inner, batch| {
            let mut heads = inner.outbox_heads.lock();
            let head = match heads.get(&receiver) {
                Some(head) => *head,
                None => {
                    let last = inner.outbox.prefix(key2(&receiver, &[])).next_back();
                    last.map(|g| g.key().map(|k| seq_of(&k))).transpose().map_err(storage_err)?.unwrap_or(0)
                }
            };
            let mut id = head;
            for event in &events {
                id += 1;
                batch.insert(
                    &inner.outbox,
                    key2(&receiver, &id.to_be_bytes()),
                    v1::WebhookEvent::from(event).encode_to_vec(),
                );
            }
            // Before the commit: a failed commit leaves a gap in the ids, never a reuse.
            heads.insert(receiver, id);
            Ok(())
        })
        .await
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
        let receiver = receiver.to_owned();
        self.write_batch(move |inner, batch| {
            let end = key2(&receiver, &up_to.to_be_bytes());
            for item in inner.outbox.range(key2(&receiver, &[])..=end) {
                batch.remove(&inner.outbox, item.key().map_err(storage_err)?);
            }
            Ok(())
        })
        .await
    }
}
