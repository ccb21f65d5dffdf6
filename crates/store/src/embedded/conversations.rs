//! Conversation state (`ConversationStore`) and what a counted send writes
//! of it: the conversation's head, the 1:1 users' states, the sender's read
//! position. A send stages these in its writer round (`Round::conversations`)
//! and the round's rows batch writes them with the message, so the send stays
//! one atomic batch; later jobs of the round read the staged rows first.
//!
//! ```text
//! conversation_heads   conversation                  -> ConversationHeadRecord
//! user_conversations   user \0 conversation          -> UserConversationRecord
//! removed_messages     user \0 conversation \0 id_be -> pos_be (C6 by id)
//! recalled_messages    conversation \0 id_be         -> pos_be (R8)
//! ```

use std::collections::HashMap;
use std::ops::Bound;

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{ChatType, ConversationKey, Error, Message, MessageId, Result, UserId};
use prost::Message as _;

use super::writer::Round;
use super::{EmbeddedStore, Inner, decode, drop_excess, key2, prefix_end, seq_of, storage_err};
use crate::{ConversationChange, ConversationHead, ConversationStore, UserConversation};

/// Conversation heads and users' states keyed as stored: those a round's
/// jobs staged, written by its rows batch, and (in `Inner::conversations_cached`)
/// those the writer last wrote, so that a counted send to a warm
/// conversation reads neither from disk. Every write of these rows goes
/// through the writer, so the cache is never behind the disk.
#[derive(Default)]
pub(super) struct ConversationRows {
    heads: HashMap<String, ConversationHead>,
    states: HashMap<Vec<u8>, UserConversation>,
}

impl ConversationRows {
    pub(super) fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.states.is_empty()
    }

    /// Adds the staged rows to `batch`.
    pub(super) fn stage(&self, inner: &Inner, batch: &mut fjall::OwnedWriteBatch) {
        for (conversation, head) in &self.heads {
            batch.insert(&inner.conversation_heads, conversation.as_bytes(), head_record(head).encode_to_vec());
        }
        for (key, state) in &self.states {
            batch.insert(&inner.user_conversations, key.as_slice(), state_record(state).encode_to_vec());
        }
    }

    /// The staged rows are in the journal: later rounds take them from
    /// memory. (A failed batch must not reach the cache, or the next send
    /// would skip a position.)
    pub(super) fn written(self, inner: &Inner) {
        if !self.is_empty() {
            let mut cached = inner.conversations_cached.lock();
            cached.heads.extend(self.heads);
            cached.states.extend(self.states);
        }
    }

    /// Drops entries past `cap` (down to `keep`); they are read back from
    /// disk when next needed.
    pub(super) fn trim(&mut self, cap: usize, keep: usize) {
        drop_excess(&mut self.heads, cap, keep, |_| true);
        drop_excess(&mut self.states, cap, keep, |_| true);
    }
}

fn state_key(user: &UserId, conversation: &ConversationKey) -> Vec<u8> {
    key2(user.as_str(), conversation.as_str().as_bytes())
}

fn removed_prefix(user: &UserId, conversation: &ConversationKey) -> String {
    format!("{user}\0{}", conversation.as_str())
}

fn head_record(head: &ConversationHead) -> v1::ConversationHeadRecord {
    v1::ConversationHeadRecord { pos: head.pos, last_id: head.last_id.0, last_time: head.last_time }
}

fn head_of(record: v1::ConversationHeadRecord) -> ConversationHead {
    ConversationHead { pos: record.pos, last_id: MessageId(record.last_id), last_time: record.last_time }
}

fn state_record(state: &UserConversation) -> v1::UserConversationRecord {
    v1::UserConversationRecord {
        created_at: state.created_at,
        read_pos: state.read_pos,
        cleared_pos: state.cleared_pos,
        cleared_id: state.cleared_id.0,
        hidden: state.hidden_pos.is_some(),
        hidden_pos: state.hidden_pos.unwrap_or(0),
        pinned_at: state.pinned_at,
    }
}

fn state_of(conversation: ConversationKey, record: v1::UserConversationRecord) -> UserConversation {
    UserConversation {
        conversation,
        created_at: record.created_at,
        read_pos: record.read_pos,
        cleared_pos: record.cleared_pos,
        cleared_id: MessageId(record.cleared_id),
        hidden_pos: record.hidden.then_some(record.hidden_pos),
        pinned_at: record.pinned_at,
    }
}

impl Inner {
    fn stored_head(&self, conversation: &str) -> Result<Option<ConversationHead>> {
        let raw = self.conversation_heads.get(conversation).map_err(storage_err)?;
        raw.map(|bytes| Ok(head_of(decode(&bytes)?))).transpose()
    }

    fn stored_state(&self, user: &UserId, conversation: &ConversationKey) -> Result<Option<UserConversation>> {
        let raw = self.user_conversations.get(state_key(user, conversation)).map_err(storage_err)?;
        raw.map(|bytes| Ok(state_of(conversation.clone(), decode(&bytes)?))).transpose()
    }
}

impl Round<'_> {
    /// The head as this round has it: staged by it, cached by an earlier
    /// round, or read from disk.
    fn head(&self, conversation: &str) -> Result<Option<ConversationHead>> {
        if let Some(head) = self.conversations.heads.get(conversation) {
            return Ok(Some(*head));
        }
        if let Some(head) = self.inner.conversations_cached.lock().heads.get(conversation) {
            return Ok(Some(*head));
        }
        self.inner.stored_head(conversation)
    }

    /// The user's state as this round has it, like [`Round::head`].
    fn state(&self, user: &UserId, conversation: &ConversationKey) -> Result<Option<UserConversation>> {
        let key = state_key(user, conversation);
        if let Some(state) = self.conversations.states.get(&key) {
            return Ok(Some(state.clone()));
        }
        if let Some(state) = self.inner.conversations_cached.lock().states.get(&key) {
            return Ok(Some(state.clone()));
        }
        self.inner.stored_state(user, conversation)
    }

    /// Applies `change` to the user's state (made at `now` if absent) and
    /// stages the result.
    fn change_state(
        &mut self,
        user: &UserId,
        conversation: &ConversationKey,
        change: Option<&ConversationChange>,
        now: i64,
    ) -> Result<UserConversation> {
        let mut state =
            self.state(user, conversation)?.unwrap_or_else(|| UserConversation::new(conversation.clone(), now));
        if let Some(change) = change {
            state.apply(change);
        }
        self.conversations.states.insert(state_key(user, conversation), state.clone());
        Ok(state)
    }

    /// A counted send (C2): gives `message` the next position of its
    /// conversation and stages the head, the 1:1 users' states and the
    /// sender's read position.
    pub(super) fn stage_counted(&mut self, message: &mut Message) -> Result<()> {
        let conversation = message.conversation();
        let before = self.head(conversation.as_str())?;
        let pos = before.map_or(0, |head| head.pos) + 1;
        message.pos = pos;
        let head = ConversationHead { pos, last_id: message.id, last_time: message.timestamp };
        self.conversations.heads.insert(conversation.as_str().to_owned(), head);
        let sender = (!message.from_system).then(|| message.from.clone());
        // A 1:1 conversation's first counted message gives both users their
        // state, and states are never removed: with a head, they exist.
        if message.chat_type == ChatType::Single && before.is_none() {
            let to = UserId::parse(&message.to, "to")?;
            if self.state(&to, &conversation)?.is_none() {
                self.change_state(&to, &conversation, None, message.timestamp)?;
            }
        }
        if let Some(sender) = sender {
            self.change_state(&sender, &conversation, Some(&ConversationChange::Read { pos }), message.timestamp)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ConversationStore for EmbeddedStore {
    async fn heads(&self, conversations: &[ConversationKey]) -> Result<Vec<Option<ConversationHead>>> {
        conversations.iter().map(|c| self.inner.stored_head(c.as_str())).collect()
    }

    async fn user_conversations(&self, user: &UserId) -> Result<Vec<UserConversation>> {
        let range = (Bound::Included(key2(user.as_str(), &[])), Bound::Excluded(prefix_end(user.as_str())));
        let prefix_len = user.as_str().len() + 1;
        self.inner
            .user_conversations
            .range::<Vec<u8>, _>(range)
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                let conversation = key
                    .get(prefix_len..)
                    .and_then(|raw| std::str::from_utf8(raw).ok())
                    .ok_or_else(|| Error::internal("corrupt conversation key"))?;
                Ok(state_of(ConversationKey::from_stored(conversation.to_owned()), decode(&value)?))
            })
            .collect()
    }

    async fn user_conversation(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
    ) -> Result<Option<UserConversation>> {
        self.inner.stored_state(user, conversation)
    }

    async fn update(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        change: ConversationChange,
        now: i64,
    ) -> Result<UserConversation> {
        let (user, conversation) = (user.clone(), conversation.clone());
        self.writer.write(move |round| round.change_state(&user, &conversation, Some(&change), now)).await
    }

    async fn remove_messages(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        messages: &[(MessageId, u64)],
    ) -> Result<()> {
        let prefix = removed_prefix(user, conversation);
        let messages = messages.to_vec();
        self.write_batch(move |inner, batch| {
            for (id, pos) in messages {
                batch.insert(&inner.removed_messages, key2(&prefix, &id.0.to_be_bytes()), pos.to_be_bytes().to_vec());
            }
            Ok(())
        })
        .await
    }

    async fn removed_messages(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        after: MessageId,
    ) -> Result<Vec<(MessageId, u64)>> {
        positions_after(&self.inner.removed_messages, &removed_prefix(user, conversation), after)
    }

    async fn recall(&self, conversation: &ConversationKey, message: MessageId, pos: u64) -> Result<()> {
        let key = key2(conversation.as_str(), &message.0.to_be_bytes());
        self.write_batch(move |inner, batch| {
            batch.insert(&inner.recalled_messages, key, pos.to_be_bytes().to_vec());
            Ok(())
        })
        .await
    }

    async fn recalled(&self, conversation: &ConversationKey, after: MessageId) -> Result<Vec<(MessageId, u64)>> {
        positions_after(&self.inner.recalled_messages, conversation.as_str(), after)
    }
}

/// The `prefix \0 id_be -> pos_be` rows of `keyspace` with ids above `after`.
fn positions_after(keyspace: &fjall::Keyspace, prefix: &str, after: MessageId) -> Result<Vec<(MessageId, u64)>> {
    let range = (Bound::Excluded(key2(prefix, &after.0.to_be_bytes())), Bound::Excluded(prefix_end(prefix)));
    keyspace
        .range::<Vec<u8>, _>(range)
        .map(|item| {
            let (key, value) = item.into_inner().map_err(storage_err)?;
            Ok((MessageId(seq_of(&key)), seq_of(&value)))
        })
        .collect()
}
