//! `WebhookOutbox` over CQL, on the same log machinery as the user logs:
//! each `push` appends one entry (its events, length-delimited) to the
//! receiver's log (`webhook_outbox_head` / `webhook_outbox`), so concurrent
//! pushes from several processes are ordered by Paxos and never interleave.
//! An event's id is `entry seq << 16 | index in the entry`. `remove` raises
//! a per-receiver watermark (`webhook_outbox_removed`, a max-register) and
//! then deletes the entries wholly below it; `peek` skips ids at or below
//! the watermark.

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{Error, Result, WebhookEvent};
use prost::Message as _;

use super::log::{LogKind, seq_u64};
use super::{CqlStore, Inner, error};
use crate::WebhookOutbox;

/// Bits of an event id that index the event within its entry.
const INDEX_BITS: u32 = 16;
/// Events per entry (a larger push becomes several entries).
const EVENTS_PER_ENTRY: usize = 1024;

fn encode_entry(events: &[WebhookEvent]) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in events {
        // Writing to a Vec cannot fail.
        let _ = v1::WebhookEvent::from(e).encode_length_delimited(&mut buf);
    }
    buf
}

fn decode_entry(mut bytes: &[u8]) -> Result<Vec<WebhookEvent>> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let event = v1::WebhookEvent::decode_length_delimited(&mut bytes)
            .map_err(|e| Error::internal(format!("corrupt stored webhook event: {e}")))?;
        events.push(event.try_into()?);
    }
    Ok(events)
}

fn event_id(seq: u64, index: usize) -> u64 {
    (seq << INDEX_BITS) | index as u64
}

impl Inner {
    async fn removed_up_to(&self, receiver: &str) -> Result<u64> {
        Ok(self.max_get("read webhook outbox", &self.st.outbox_removed, receiver).await?.map_or(0, seq_u64))
    }
}

#[async_trait]
impl WebhookOutbox for CqlStore {
    async fn push(&self, receiver: &str, events: &[WebhookEvent]) -> Result<()> {
        for chunk in events.chunks(EVENTS_PER_ENTRY) {
            // One entry per update: `peek` reads only the newest entry from the head.
            self.inner.append_entries(LogKind::Outbox, receiver, &[&encode_entry(chunk)], i64::MAX).await?;
        }
        Ok(())
    }

    async fn peek(&self, receiver: &str, limit: usize) -> Result<Vec<(u64, WebhookEvent)>> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut removed = inner.removed_up_to(receiver).await?;
        let head = inner.read_head(LogKind::Outbox, receiver).await?;
        let h = seq_u64(head.seq);
        let missing = |seq: u64| {
            Error::internal(format!("webhook outbox of {receiver} is missing entry {seq} below its head {h}"))
        };
        // Entries below the one holding the watermark may be deleted.
        let mut after = (removed >> INDEX_BITS).saturating_sub(1);
        'pages: while out.len() < limit && after < h {
            // Each entry holds at least one event; one more for a first
            // entry the watermark has partly passed.
            let want = limit - out.len() + 1;
            let upper = h.min(after.saturating_add(want as u64));
            let mut rows = inner.read_rows(LogKind::Outbox, receiver, after, upper, want).await?;
            if upper == h && rows.last().is_none_or(|(seq, _)| seq_u64(*seq) < h) {
                // The newest entry may not be copied to its row yet.
                rows.push((head.seq, head.event.clone()));
            }
            if rows.is_empty() {
                // Entries deleted by a concurrent remove: restart past them.
                removed = inner.removed_up_to(receiver).await?;
                let next = (removed >> INDEX_BITS).saturating_sub(1);
                if next <= after {
                    return Err(missing(after + 1));
                }
                out.retain(|(id, _)| *id > removed);
                after = next;
                continue;
            }
            for (seq, bytes) in rows {
                let seq = seq_u64(seq);
                if seq <= after {
                    return Err(Error::internal(format!("webhook outbox of {receiver} returned entries out of order")));
                }
                if seq != after + 1 {
                    // Only a concurrent remove may have deleted entries, and
                    // only below its watermark.
                    removed = inner.removed_up_to(receiver).await?;
                    if seq > removed >> INDEX_BITS {
                        return Err(missing(after + 1));
                    }
                    out.retain(|(id, _)| *id > removed);
                }
                // The head's copy of the newest entry is the authoritative one.
                let bytes = if seq == h { head.event.clone() } else { bytes };
                let bytes = bytes.ok_or_else(|| missing(seq))?;
                for (index, event) in decode_entry(&bytes)?.into_iter().enumerate() {
                    let id = event_id(seq, index);
                    if id > removed && out.len() < limit {
                        out.push((id, event));
                    }
                }
                after = seq;
                if out.len() >= limit {
                    break 'pages;
                }
            }
        }
        Ok(out)
    }

    async fn remove(&self, receiver: &str, up_to: u64) -> Result<()> {
        let inner = &*self.inner;
        let value = i64::try_from(up_to).map_err(|_| Error::bad_request("up_to", "id does not fit a cql bigint"))?;
        inner.max_put("remove from webhook outbox", &inner.st.outbox_removed, receiver, value).await?;
        // Entries wholly at or below the watermark can go (best effort).
        let below = (up_to >> INDEX_BITS) as i64;
        if below > 1
            && let Err(e) = inner
                .session
                .execute_unpaged(&inner.st.outbox.row_trim, (receiver, below))
                .await
                .map_err(|e| error::execution("trim webhook outbox", e))
        {
            tracing::warn!(receiver, error = %e, "webhook outbox entries not trimmed; peek skips them");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use natter_types::{SessionStatus, UserId};

    #[test]
    fn entries_round_trip() {
        let e = |n: i64| WebhookEvent {
            user: UserId::parse("u", "u").unwrap(),
            status: SessionStatus::Online,
            os: "iOS".into(),
            time: n,
            client_ip: "1.2.3.4:5".into(),
            session_id: format!("s{n}"),
        };
        let events = vec![e(1), e(2), e(3)];
        assert_eq!(decode_entry(&encode_entry(&events)).unwrap(), events);
        assert!(event_id(2, 0) > event_id(1, EVENTS_PER_ENTRY - 1));
    }
}
