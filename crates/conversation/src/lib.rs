//! The conversation service (C1–C7): each user's conversation list with
//! unread counts and previews, pins, history and one-way deletes, the same on
//! every device of the user.
//!
//! Nothing here is written per message: a conversation's head and each
//! user's read position (moved by sends, in the store) are all a list needs.
//! Unread = head − the user's base position (the read position, or where a
//! clear or the user's join put them) − the messages they deleted above it;
//! one's own messages never count, because a send moves its sender's read
//! position to it. The preview is the newest message the user can still
//! see. What the user's other devices must learn (pin, unpin, delete, read)
//! is an event in the user's log.
//!
//! `list.rs`: C1, C3 and the cap; `view.rs`: what one user can see of one
//! conversation (history C5, preview, unread); `changes.rs`: C4, C6, C7 and
//! marking read.

use std::sync::Arc;

use natter_bus::{Bus, SharedEvent};
use natter_store::Stores;
use natter_types::{Error, LogEvent, Result, UserId};
use serde::{Deserialize, Serialize};

mod changes;
mod list;
mod service;
mod view;

pub use service::ConversationService;

/// The `[conversations]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationOptions {
    /// Conversations kept per user (C2); past it the least recently active
    /// (not pinned) ones are dropped from the list.
    pub max_conversations: usize,
    /// Pinned conversations per user at most (C3).
    pub max_pinned: usize,
    /// Whether a group member sees the group's history from before they
    /// joined (C5); by default from their join on.
    pub history_before_join: bool,
    /// Whether messages sent through the backend API create and update
    /// conversations (C2) when the request does not say; the backend API
    /// applies it.
    pub backend_updates: bool,
}

impl Default for ConversationOptions {
    fn default() -> Self {
        Self { max_conversations: 100, max_pinned: 50, history_before_join: false, backend_updates: false }
    }
}

impl ConversationOptions {
    /// Checks the settings are usable; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        if self.max_conversations == 0 {
            return Err(Error::bad_request("conversations.max_conversations", "must be at least 1"));
        }
        if self.max_pinned == 0 || self.max_pinned > self.max_conversations {
            return Err(Error::bad_request(
                "conversations.max_pinned",
                format!("must be 1 to max_conversations ({})", self.max_conversations),
            ));
        }
        Ok(())
    }
}

/// Appends an event to one user's log, then tells their live sessions.
pub(crate) async fn notify(stores: &Stores, bus: &Arc<dyn Bus>, user: &UserId, event: LogEvent) -> Result<()> {
    notify_all(stores, bus, std::slice::from_ref(user), event).await
}

/// [`notify`] for several users at once.
pub(crate) async fn notify_all(stores: &Stores, bus: &Arc<dyn Bus>, users: &[UserId], event: LogEvent) -> Result<()> {
    let appended = stores.log.append(users, &event).await?;
    if let Err(e) = bus.publish_event(SharedEvent::new(event), users, &appended).await {
        // Durable in the log: the sessions read it at the next event or reconnect.
        tracing::warn!(users = users.len(), error = %e, "live publish failed");
    }
    Ok(())
}
