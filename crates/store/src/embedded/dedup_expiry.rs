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
