//! What one user can see of one conversation: its history from their join
//! (or all of it, `history_before_join`) and after their clears, without the
//! messages they deleted; the preview and the unread count come from the
//! same rules.

use std::collections::HashMap;

use natter_store::{ConversationHead, UserConversation};
use natter_types::{
    ChatType, ConversationId, ConversationKey, Direction, Error, GroupId, HistoryPage, HistoryQuery, Message,
    MessageId, Result, UserId,
};

use crate::ConversationService;

/// Messages read per step while skipping what the user cannot see.
const STEP: usize = 50;

/// One user's view of one conversation.
pub(crate) struct View {
    pub(crate) key: ConversationKey,
    pub(crate) state: Option<UserConversation>,
    /// When a group member joined (ms); `None` for a 1:1 chat.
    pub(crate) joined_at: Option<i64>,
    /// The oldest id the user may see (their join, their clears).
    pub(crate) from_id: MessageId,
    /// Messages the user deleted one way, and recalled ones (id → position).
    pub(crate) removed: HashMap<MessageId, u64>,
}

impl View {
    pub(crate) fn visible(&self, message: &Message) -> bool {
        message.id >= self.from_id && !self.removed.contains_key(&message.id)
    }
}

impl ConversationService {
    /// The user's view of a conversation they may read: FORBIDDEN for a
    /// group they are not a member of, NOT_FOUND for a group that does not
    /// exist.
    pub(crate) async fn view(&self, user: &UserId, conversation: &ConversationId) -> Result<View> {
        let key = conversation.key(user);
        let joined_at = async {
            match conversation.chat_type {
                ChatType::Single => Ok(None),
                ChatType::Group => self.member_since(user, &group_of(conversation)?).await.map(Some),
                ChatType::Thread => Err(Error::bad_request("chat_type", "thread conversations are not supported yet")),
            }
        };
        // Independent reads, one round trip on a remote store; nothing read
        // is returned unless the membership check passed.
        let conversations = &self.stores.conversations;
        let (joined_at, state, removed, recalled) = futures::try_join!(
            joined_at,
            conversations.user_conversation(user, &key),
            conversations.removed_messages(user, &key, MessageId(0)),
            conversations.recalled(&key, MessageId(0)),
        )?;
        Ok(self.assemble(key, state, joined_at, removed.into_iter().chain(recalled).collect()))
    }

    /// The view from what the caller already read.
    pub(crate) async fn view_of(
        &self,
        user: &UserId,
        key: ConversationKey,
        state: Option<UserConversation>,
        joined_at: Option<i64>,
    ) -> Result<View> {
        let conversations = &self.stores.conversations;
        let removed = async {
            match &state {
                Some(_) => conversations.removed_messages(user, &key, MessageId(0)).await,
                None => Ok(Vec::new()),
            }
        };
        let (removed, recalled) = futures::try_join!(removed, conversations.recalled(&key, MessageId(0)))?;
        Ok(self.assemble(key, state, joined_at, removed.into_iter().chain(recalled).collect()))
    }

    fn assemble(
        &self,
        key: ConversationKey,
        state: Option<UserConversation>,
        joined_at: Option<i64>,
        removed: HashMap<MessageId, u64>,
    ) -> View {
        let joined_from = match joined_at {
            Some(at) if !self.options.history_before_join => MessageId::first_at(at),
            _ => MessageId(0),
        };
        let cleared_from = state.as_ref().map_or(MessageId(0), |s| MessageId(s.cleared_id.0.saturating_add(1)));
        View { from_id: joined_from.max(cleared_from), key, state, joined_at, removed }
    }

    /// When the user joined the group; FORBIDDEN if they are not a member.
    pub(crate) async fn member_since(&self, user: &UserId, group: &GroupId) -> Result<i64> {
        match self.stores.groups.get_member(group, user).await? {
            Some(member) => Ok(member.joined_at),
            None if self.stores.groups.get_group(group).await?.is_none() => {
                Err(Error::not_found(format!("group {group} does not exist")))
            }
            None => Err(Error::forbidden(format!("{user} is not a member of group {group}"))),
        }
    }

    /// C5: a page of what the user can see, in the asked direction.
    pub(crate) async fn history_page(&self, view: &View, query: HistoryQuery) -> Result<HistoryPage> {
        let want = query.page_size + 1;
        let below_view = view.from_id.0.checked_sub(1).map(MessageId);
        let mut cursor = match query.direction {
            Direction::Up => query.cursor,
            Direction::Down => query.cursor.max(below_view),
        };
        let mut messages = Vec::with_capacity(want);
        'read: loop {
            // Enough for the page and the deleted messages it may skip.
            let step = want - messages.len() + view.removed.len().min(STEP);
            let batch = self.stores.messages.history(&view.key, cursor, query.direction, step).await?;
            let exhausted = batch.len() < step;
            for message in batch {
                cursor = Some(message.id);
                if message.id < view.from_id {
                    break 'read;
                }
                if view.visible(&message) {
                    messages.push(message);
                    if messages.len() == want {
                        break 'read;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let more = messages.len() > query.page_size;
        messages.truncate(query.page_size);
        let cursor = if more { messages.last().map(|m| m.id) } else { None };
        Ok(HistoryPage { messages, cursor })
    }

    /// The newest counted message the user can see, at or before the head.
    pub(crate) async fn preview(&self, view: &View, head: &ConversationHead) -> Result<Option<Message>> {
        if let Some(message) = self.stores.messages.get_message(&view.key, head.last_id).await?
            && view.visible(&message)
        {
            return Ok(Some(message));
        }
        self.newest_counted(view, Some(head.last_id), |m| view.visible(m)).await
    }

    /// The newest counted message below `before` that passes `keep`.
    async fn newest_counted(
        &self,
        view: &View,
        mut before: Option<MessageId>,
        keep: impl Fn(&Message) -> bool,
    ) -> Result<Option<Message>> {
        loop {
            let batch = self.stores.messages.history(&view.key, before, Direction::Up, STEP).await?;
            let exhausted = batch.len() < STEP;
            for message in batch {
                if message.id < view.from_id {
                    return Ok(None);
                }
                before = Some(message.id);
                if message.pos > 0 && keep(&message) {
                    return Ok(Some(message));
                }
            }
            if exhausted {
                return Ok(None);
            }
        }
    }

    /// The position of the newest counted message stamped before `id`
    /// (0 if none): where a clear or a join leaves the user.
    pub(crate) async fn position_before(&self, key: &ConversationKey, id: MessageId) -> Result<u64> {
        let everything =
            View { key: key.clone(), state: None, joined_at: None, from_id: MessageId(0), removed: HashMap::new() };
        Ok(self.newest_counted(&everything, Some(id), |_| true).await?.map_or(0, |m| m.pos))
    }

    /// Other users' messages the user has not read and can still see.
    pub(crate) async fn unread(&self, view: &View, head: &ConversationHead) -> Result<u64> {
        let state = view.state.as_ref();
        let mut base = state.map_or(0, |s| s.read_pos.max(s.cleared_pos));
        if head.pos <= base {
            return Ok(0);
        }
        if let Some(joined_at) = view.joined_at
            && !self.options.history_before_join
            && head.last_time >= joined_at
        {
            base = base.max(self.position_before(&view.key, MessageId::first_at(joined_at)).await?);
        } else if view.joined_at.is_some() && !self.options.history_before_join {
            // Nothing counted since the join.
            return Ok(0);
        }
        let removed = view.removed.values().filter(|&&pos| pos > base && pos <= head.pos).count() as u64;
        Ok(head.pos.saturating_sub(base).saturating_sub(removed))
    }
}

pub(crate) fn group_of(conversation: &ConversationId) -> Result<GroupId> {
    GroupId::parse(&conversation.target, "conversation_id")
}
