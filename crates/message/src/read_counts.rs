//! Telling a group message's sender its read count (R6) without one event
//! per reader: receipts for one sender's messages take turns at writing the
//! sender's log, and the one whose turn it is writes, for every message with
//! receipts waiting, one event carrying the count read after them. While one
//! write is in flight the next receipts wait behind it and are covered by the
//! next write: a busy message costs one event per write, not per reader,
//! and a receipt is answered only once an event covering it is durable.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use natter_types::{ChatType, ConversationKey, GroupId, LogEvent, MessageId, Receipt, ReceiptKind, Result, UserId};

use crate::MessageService;

/// The newest receipt waiting for one message.
#[derive(Debug, Clone)]
struct Waiting {
    group: GroupId,
    reader: UserId,
    time: i64,
}

#[derive(Default)]
struct SenderQueue {
    waiting: parking_lot::Mutex<HashMap<(ConversationKey, MessageId), Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

/// Per sender, the receipts not yet told.
#[derive(Default)]
pub(crate) struct ReadCounts {
    senders: DashMap<UserId, Arc<SenderQueue>>,
}

impl ReadCounts {
    /// Returns once an event with a count that includes this (already
    /// stored) receipt is durable in the sender's log.
    pub(crate) async fn tell(
        &self,
        service: &MessageService,
        sender: &UserId,
        message: (ConversationKey, MessageId),
        group: GroupId,
        reader: UserId,
        time: i64,
    ) -> Result<()> {
        let queue = self.senders.entry(sender.clone()).or_default().clone();
        queue.waiting.lock().insert(message, Waiting { group, reader, time });
        let result = {
            let _turn = queue.turn.lock().await;
            let batch = std::mem::take(&mut *queue.waiting.lock());
            // Empty: an earlier turn took this receipt and wrote it.
            let written = service.write_counts(sender, &batch).await;
            if written.is_err() {
                // Back in line for the next turn, unless a newer receipt for
                // the same message is there already.
                let mut waiting = queue.waiting.lock();
                for (message, entry) in batch {
                    waiting.entry(message).or_insert(entry);
                }
            }
            written
        };
        drop(queue);
        // The map's reference is the only one left: nobody waits.
        self.senders.remove_if(sender, |_, q| Arc::strong_count(q) == 1 && q.waiting.lock().is_empty());
        result
    }
}

impl MessageService {
    /// One read-count event per message into the sender's log, then live.
    async fn write_counts(
        &self,
        sender: &UserId,
        batch: &HashMap<(ConversationKey, MessageId), Waiting>,
    ) -> Result<()> {
        let events = futures::future::try_join_all(batch.iter().map(|((key, id), waiting)| async move {
            let read_count = self.stores.receipts.read_count(key, *id).await?;
            Ok::<_, natter_types::Error>(LogEvent::Receipt(Receipt {
                kind: ReceiptKind::Read,
                message_id: *id,
                chat_type: ChatType::Group,
                from: waiting.reader.clone(),
                to: waiting.group.to_string(),
                time: waiting.time,
                read_count,
            }))
        }))
        .await?;
        let recipients = std::slice::from_ref(sender);
        futures::future::try_join_all(events.into_iter().map(|event| self.fan_out(recipients, event))).await?;
        Ok(())
    }
}
