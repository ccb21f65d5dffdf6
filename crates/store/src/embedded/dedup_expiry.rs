//! Drops idempotency records older than the idempotency window when fjall
//! compacts their tables, so that the `dedup` keyspace holds about one
//! window of sends instead of every send ever made.
//!
//! Lookups do not depend on it: they ignore an expired record whether or not
//! a compaction has dropped it yet ([`crate::idempotency_expired`]).

use std::sync::Arc;
use std::time::Duration;

use fjall::compaction::filter::{CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict};
use natter_proto::v1;
use prost::Message as _;

/// Makes one [`Filter`] per compaction of the `dedup` keyspace.
pub(super) struct DedupExpiry {
    window: Duration,
}

impl DedupExpiry {
    pub(super) fn factory(window: Duration) -> Arc<dyn Factory> {
        Arc::new(Self { window })
    }
}

impl Factory for DedupExpiry {
    fn name(&self) -> &str {
        "natter-dedup-expiry"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        // One clock reading per compaction: a record that expires while the
        // compaction runs goes at the next one.
        Box::new(Filter { now_ms: natter_types::now_ms(), window: self.window })
    }
}

struct Filter {
    now_ms: i64,
    window: Duration,
}

impl CompactionFilter for Filter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        // Keep what does not decode: the filter only collects garbage, a
        // corrupt record is for a read to report.
        let expired = v1::DedupRecord::decode(&*item.value()?)
            .is_ok_and(|record| crate::idempotency_expired(record.timestamp, self.now_ms, self.window));
        // A tombstone, not `Destroy`: a record is rewritten when its fan-out
        // is marked, so older versions of it may sit in lower levels.
        Ok(if expired { Verdict::Remove } else { Verdict::Keep })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::embedded::test_util::*;

    /// Compaction drops idempotency records past the window and keeps the
    /// others. (Lookups ignore expired records before that: the conformance
    /// suite.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_drops_expired_idempotency_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let ann = UserId::parse("ann", "u").unwrap();
        let window_ms = i64::try_from(crate::DEFAULT_IDEMPOTENCY_WINDOW.as_millis()).unwrap();
        let now = natter_types::now_ms();
        for (id, client, timestamp) in [(1, "old", now - window_ms - 60_000), (2, "new", now - window_ms + 3_600_000)] {
            let message = Message {
                id: MessageId(id),
                client_msg_id: client.into(),
                from: ann.clone(),
                to: "ben".into(),
                chat_type: natter_types::ChatType::Single,
                timestamp,
                body: natter_types::MessageBody::Text("hi".into()),
                ext: Default::default(),
                from_system: false,
                allow_group_ack: false,
                pos: 0,
            };
            assert_eq!(store.insert_message(&message).await.unwrap(), Inserted::New);
        }
        assert!(store.inner.dedup_record(&key2("ann", b"old")).unwrap().is_some(), "stored until compacted");
        store.inner.dedup.rotate_memtable_and_wait().unwrap();
        store.inner.dedup.major_compact().unwrap();
        assert!(store.inner.dedup_record(&key2("ann", b"old")).unwrap().is_none(), "the expired record is gone");
        assert!(store.inner.dedup_record(&key2("ann", b"new")).unwrap().is_some(), "the live record is kept");
    }
}
