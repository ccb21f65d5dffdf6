//! Telling a group message's sender its read count (R6) without one event
//! per reader: receipts for one sender's messages take turns at writing the
//! sender's log, and the one whose turn it is writes, for every message with
//! receipts waiting, one event carrying the count read after them. Receipts
//! that arrive while a write is in flight wait for the next one, which
//! covers all of them: a busy message costs one event per write, not per
//! reader, and a receipt is answered only once an event covering it is
//! durable (the group commit of the writer's rounds, one level up).

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

type Batch = HashMap<(ConversationKey, MessageId), Waiting>;

#[derive(Default)]
struct Queue {
    waiting: Batch,
    /// Tickets are handed out in arrival order; every receipt with a ticket
    /// up to `written` is covered by a durable event.
    issued: u64,
    written: u64,
}

#[derive(Default)]
struct SenderQueue {
    queue: parking_lot::Mutex<Queue>,
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
        let sender_queue = self.senders.entry(sender.clone()).or_default().clone();
        let ticket = {
            let mut queue = sender_queue.queue.lock();
            queue.waiting.insert(message, Waiting { group, reader, time });
            queue.issued += 1;
            queue.issued
        };
        let result = async {
            let _turn = sender_queue.turn.lock().await;
            let (batch, upto) = {
                let mut queue = sender_queue.queue.lock();
                if queue.written >= ticket {
                    return Ok(()); // an earlier turn wrote this receipt's count
                }
                (std::mem::take(&mut queue.waiting), queue.issued)
            };
            let written = service.write_counts(sender, &batch).await;
            let mut queue = sender_queue.queue.lock();
            match &written {
                Ok(()) => queue.written = upto,
                // Back in line for the next turn, unless a newer receipt for
                // the same message is there already.
                Err(_) => {
                    for (message, entry) in batch {
                        queue.waiting.entry(message).or_insert(entry);
                    }
                }
            }
            written
        }
        .await;
        drop(sender_queue);
        // The map's reference is the only one left: nobody waits.
        self.senders.remove_if(sender, |_, q| Arc::strong_count(q) == 1 && q.queue.lock().waiting.is_empty());
        result
    }
}

impl MessageService {
    /// One read-count event per message into the sender's log, then live.
    async fn write_counts(&self, sender: &UserId, batch: &Batch) -> Result<()> {
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
