//! C1 and C3: the list is every 1:1 conversation the user has state of and
//! every group they are a member of, ordered by activity (pins by pin time),
//! cut at `max_conversations`. Ordering needs only the heads and the states
//! (one read each); previews and unread counts are read for the page only.

use natter_store::{ConversationChange, ConversationHead, UserConversation};
use natter_types::{
    ConversationId, ConversationItem, ConversationKey, ConversationPage, Error, KeyParts, ListQuery, MessageId, Result,
    UserId,
};

use crate::ConversationService;

/// One conversation on the user's list, before its page is read.
pub(crate) struct Entry {
    id: ConversationId,
    pub(crate) key: ConversationKey,
    state: Option<UserConversation>,
    head: Option<ConversationHead>,
    joined_at: Option<i64>,
    /// Activity as an id ([`ConversationService::activity`]), or the pin time for C3.
    order: i64,
}

impl Entry {
    pub(crate) fn pinned_at(&self) -> i64 {
        self.state.as_ref().map_or(0, |s| s.pinned_at)
    }
}

/// The page cursor: the last item's order value and key.
fn cursor_of(entry: &Entry) -> String {
    format!("{}:{}", entry.order, entry.key.as_str())
}

fn parse_cursor(raw: &str) -> Result<Option<(i64, ConversationKey)>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || Error::bad_request("cursor", "is not a cursor this server returned");
    let (order, key) = raw.split_once(':').ok_or_else(bad)?;
    let key = ConversationKey::from_stored(key.to_owned());
    key.parts().ok_or_else(bad)?;
    Ok(Some((order.parse().map_err(|_| bad())?, key)))
}

impl ConversationService {
    pub(crate) async fn list(&self, user: &UserId, query: ListQuery) -> Result<ConversationPage> {
        let after = parse_cursor(&query.cursor)?;
        let mut entries = self.entries(user).await?;
        if query.pinned {
            entries.retain(|e| e.pinned_at() > 0);
            for entry in &mut entries {
                entry.order = entry.pinned_at();
            }
        }
        // Newest first; the key breaks ties so that pages never overlap.
        entries.sort_by(|a, b| b.order.cmp(&a.order).then_with(|| a.key.as_str().cmp(b.key.as_str())));
        if !query.pinned {
            self.cap(user, &mut entries).await;
        }
        let start = match &after {
            Some((order, key)) => entries
                .iter()
                .position(|e| e.order < *order || (e.order == *order && e.key.as_str() > key.as_str()))
                .unwrap_or(entries.len()),
            None => 0,
        };
        let page: Vec<Entry> = entries.drain(start..).take(query.page_size + 1).collect();
        let more = page.len() > query.page_size;
        let page = &page[..page.len().min(query.page_size)];
        let cursor = if more { page.last().map(cursor_of).unwrap_or_default() } else { String::new() };
        let items = futures::future::try_join_all(page.iter().map(|entry| self.item(user, entry))).await?;
        Ok(ConversationPage { conversations: items, cursor })
    }

    /// Everything on the user's list, with its activity, in no order.
    pub(crate) async fn entries(&self, user: &UserId) -> Result<Vec<Entry>> {
        let stores = &self.stores;
        let mut states: std::collections::HashMap<ConversationKey, UserConversation> = stores
            .conversations
            .user_conversations(user)
            .await?
            .into_iter()
            .map(|s| (s.conversation.clone(), s))
            .collect();
        let mut entries = Vec::new();
        let groups = stores.groups.user_groups(user).await?;
        // One read per group, concurrently: on CQL each is a round trip.
        let members =
            futures::future::try_join_all(groups.iter().map(|group| stores.groups.get_member(group, user))).await?;
        for (group, member) in groups.into_iter().zip(members) {
            // A group left or dissolved between the two reads is left out.
            let Some(member) = member else { continue };
            let key = ConversationKey::group(&group);
            let state = states.remove(&key);
            let id = ConversationId::group(&group);
            entries.push(Entry { id, key, state, head: None, joined_at: Some(member.joined_at), order: 0 });
        }
        for (key, state) in states {
            // A group's state outlives the membership; only members list it.
            if let Some(KeyParts::Single(..)) = key.parts()
                && let Some(id) = ConversationId::of(&key, user)
            {
                entries.push(Entry { id, key, state: Some(state), head: None, joined_at: None, order: 0 });
            }
        }
        let keys: Vec<ConversationKey> = entries.iter().map(|e| e.key.clone()).collect();
        let heads = stores.conversations.heads(&keys).await?;
        for (entry, head) in entries.iter_mut().zip(heads) {
            entry.head = head;
        }
        entries.retain(|e| e.state.as_ref().is_none_or(|s| s.listed(e.head.map_or(0, |h| h.pos))));
        for entry in &mut entries {
            entry.order = self.activity(entry);
        }
        Ok(entries)
    }

    /// Where the entry sorts: the newest message's id if the user can see
    /// that far, or the first id of when the conversation began for them.
    /// Ids, not times, so that messages of the same millisecond keep their
    /// order.
    fn activity(&self, entry: &Entry) -> i64 {
        let joined = entry.joined_at.filter(|_| !self.options.history_before_join).unwrap_or(0);
        let cleared = entry.state.as_ref().map_or(0, |s| s.cleared_id.0);
        let began = match (&entry.state, entry.joined_at) {
            (_, Some(joined_at)) => joined_at,
            (Some(state), None) => state.created_at,
            (None, None) => 0,
        };
        let id = match entry.head {
            Some(head) if head.last_time >= joined && head.last_id.0 > cleared => head.last_id,
            _ => MessageId::first_at(began),
        };
        i64::try_from(id.0).unwrap_or(i64::MAX)
    }

    /// C2: keeps the pinned conversations and the most recently active
    /// others up to `max_conversations`. A 1:1 conversation past it is taken
    /// off the list as a delete without `deleteRoam` takes it (its next
    /// message brings it back, with the history and the user's read
    /// position and deletes as they were); a group stays a member's
    /// conversation and is only left out.
    async fn cap(&self, user: &UserId, entries: &mut Vec<Entry>) {
        let max = self.options.max_conversations;
        let pinned = entries.iter().filter(|e| e.pinned_at() > 0).count();
        let mut room = max.saturating_sub(pinned);
        let mut dropped = Vec::new();
        entries.retain(|e| {
            if e.pinned_at() > 0 {
                return true;
            }
            if room > 0 {
                room -= 1;
                return true;
            }
            if e.joined_at.is_none() {
                dropped.push((e.key.clone(), e.head.map_or(0, |h| h.pos)));
            }
            false
        });
        for (key, pos) in dropped {
            let hide = ConversationChange::Hide { pos };
            if let Err(e) = self.stores.conversations.update(user, &key, hide, natter_types::now_ms()).await {
                // Left for the next listing: the list is cut either way.
                tracing::warn!(user = %user, error = %e, "taking a conversation past the cap off the list failed");
            }
        }
    }

    async fn item(&self, user: &UserId, entry: &Entry) -> Result<ConversationItem> {
        let view = self.view_of(user, entry.key.clone(), entry.state.clone(), entry.joined_at).await?;
        let (last_message, unread) = match &entry.head {
            Some(head) => (self.preview(&view, head).await?, self.unread(&view, head).await?),
            None => (None, 0),
        };
        let activity = MessageId(self.activity(entry).unsigned_abs()).timestamp_ms();
        Ok(ConversationItem { id: entry.id.clone(), pinned_at: entry.pinned_at(), last_message, unread, activity })
    }
}
