//! C4, C6, C7 and marking read: each changes the user's state of one
//! conversation, then tells the user's devices through the user's log
//! (so an offline device learns it on resume, in order, once). A change
//! repeated after a failure is harmless: the state ends the same, and the
//! devices get the event again, which they apply idempotently.

use natter_store::ConversationChange;
use natter_types::{
    ChannelAck, ChatType, ConversationEvent, ConversationId, Direction, Error, LogEvent, MessageId,
    MultiDeviceOperation, Removal, Result, UserId, now_ms,
};

use crate::{ConversationService, notify, notify_all};

impl ConversationService {
    async fn tell(&self, user: &UserId, event: LogEvent) -> Result<()> {
        notify(&self.stores, &self.bus, user, event).await
    }

    fn event(operation: MultiDeviceOperation, conversation: &ConversationId, time: i64) -> ConversationEvent {
        ConversationEvent {
            operation,
            conversation: conversation.clone(),
            time,
            message_ids: Vec::new(),
            before: 0,
            delete_roam: false,
        }
    }

    /// C4: only a conversation on the user's list can be pinned; pinning a
    /// pinned one keeps its pin time.
    pub(crate) async fn pin_impl(&self, user: &UserId, conversation: &ConversationId, pinned: bool) -> Result<()> {
        self.view(user, conversation).await?;
        let key = conversation.key(user);
        let entries = self.entries(user).await?;
        let Some(entry) = entries.iter().find(|e| e.key == key) else {
            return Err(Error::not_found(format!("{conversation} is not in {user}'s conversations")));
        };
        let (operation, time) = if pinned {
            let at = match entry.pinned_at() {
                0 => {
                    let count = entries.iter().filter(|e| e.pinned_at() > 0).count();
                    let max = self.options.max_pinned;
                    if count >= max {
                        return Err(Error::limit(
                            "is_pinned",
                            format!("{count} conversations are pinned, the limit is {max} (conversations.max_pinned)"),
                        ));
                    }
                    let at = now_ms();
                    self.stores.conversations.update(user, &key, ConversationChange::Pin { at }, at).await?;
                    at
                }
                at => at,
            };
            (MultiDeviceOperation::PinnedConversation, at)
        } else {
            let now = now_ms();
            self.stores.conversations.update(user, &key, ConversationChange::Unpin, now).await?;
            (MultiDeviceOperation::UnpinnedConversation, now)
        };
        self.tell(user, LogEvent::Conversation(Self::event(operation, conversation, time))).await
    }

    /// C6: by time (clamped to now, so a client's fast clock cannot hide
    /// messages still to come) or by ids, all of which must be messages of
    /// this conversation (else nothing is deleted).
    pub(crate) async fn remove_impl(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        removal: Removal,
    ) -> Result<()> {
        let view = self.view(user, conversation).await?;
        let now = now_ms();
        let mut event = Self::event(MultiDeviceOperation::DeleteRoaming, conversation, now);
        match removal {
            Removal::Before(before) => {
                let bound = MessageId::first_at(before.min(now + 1));
                let pos = self.position_before(&view.key, bound).await?;
                let id = MessageId(bound.0.saturating_sub(1));
                self.stores.conversations.update(user, &view.key, ConversationChange::Clear { pos, id }, now).await?;
                event.before = before;
            }
            Removal::Ids(ids) => {
                let mut removed = Vec::with_capacity(ids.len());
                for id in &ids {
                    match self.stores.messages.get_message(&view.key, *id).await? {
                        Some(message) => removed.push((message.id, message.pos)),
                        None => {
                            return Err(Error::bad_request(
                                "message_ids",
                                format!("message {id} is not in {conversation}"),
                            ));
                        }
                    }
                }
                // The view reads deletions only where the user has state.
                self.stores.conversations.update(user, &view.key, ConversationChange::Read { pos: 0 }, now).await?;
                self.stores.conversations.remove_messages(user, &view.key, &removed).await?;
                event.message_ids = ids;
            }
        }
        self.tell(user, LogEvent::Conversation(event)).await
    }

    /// C7: off the list until a new message; with `delete_roam` everything
    /// up to now is gone for the user too.
    pub(crate) async fn delete_impl(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        delete_roam: bool,
    ) -> Result<()> {
        let view = self.view(user, conversation).await?;
        let now = now_ms();
        let head = self.stores.conversations.heads(std::slice::from_ref(&view.key)).await?.pop().flatten();
        let pos = head.map_or(0, |h| h.pos);
        let conversations = &self.stores.conversations;
        if delete_roam {
            // Uncounted messages (backend ones) may be newer than the head.
            let newest = self.stores.messages.history(&view.key, None, Direction::Up, 1).await?;
            let id = newest.first().map(|m| m.id).max(head.map(|h| h.last_id)).unwrap_or(MessageId(0));
            conversations.update(user, &view.key, ConversationChange::Clear { pos, id }, now).await?;
        }
        conversations.update(user, &view.key, ConversationChange::Hide { pos }, now).await?;
        let mut event = Self::event(MultiDeviceOperation::DeleteConversation, conversation, now);
        event.delete_roam = delete_roam;
        self.tell(user, LogEvent::Conversation(event)).await
    }

    /// The conversation read receipt: the user's read position moves to the
    /// head; the user's devices get the receipt (`onChannelMessage`), and in
    /// a 1:1 chat so does the peer's (R3).
    pub(crate) async fn mark_read_impl(&self, user: &UserId, conversation: &ConversationId) -> Result<()> {
        let view = self.view(user, conversation).await?;
        let now = now_ms();
        if let Some(head) = self.stores.conversations.heads(std::slice::from_ref(&view.key)).await?.pop().flatten() {
            let read = ConversationChange::Read { pos: head.pos };
            self.stores.conversations.update(user, &view.key, read, now).await?;
        }
        let ack = ChannelAck {
            from: user.clone(),
            to: conversation.target.clone(),
            chat_type: conversation.chat_type,
            time: now,
        };
        let mut told = vec![user.clone()];
        if conversation.chat_type == ChatType::Single
            && let Ok(peer) = UserId::parse(&conversation.target, "to")
            && peer != *user
            && peer != UserId::system()
        {
            told.push(peer);
        }
        notify_all(&self.stores, &self.bus, &told, LogEvent::ChannelAck(ack)).await
    }
}
