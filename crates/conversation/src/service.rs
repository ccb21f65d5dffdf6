use std::sync::Arc;

use async_trait::async_trait;
use natter_api::ConversationApi;
use natter_bus::Bus;
use natter_store::Stores;
use natter_types::{ConversationId, ConversationPage, HistoryPage, HistoryQuery, ListQuery, Removal, Result, UserId};

use crate::ConversationOptions;

/// The local implementation of [`ConversationApi`]; cheap to share behind
/// an `Arc`.
pub struct ConversationService {
    pub(crate) stores: Stores,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) options: ConversationOptions,
}

impl std::fmt::Debug for ConversationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationService").field("options", &self.options).finish_non_exhaustive()
    }
}

impl ConversationService {
    pub fn new(options: ConversationOptions, stores: Stores, bus: Arc<dyn Bus>) -> Self {
        Self { stores, bus, options }
    }
}

#[async_trait]
impl ConversationApi for ConversationService {
    async fn conversations(&self, user: &UserId, query: ListQuery) -> Result<ConversationPage> {
        self.list(user, query).await
    }

    async fn pin(&self, user: &UserId, conversation: &ConversationId, pinned: bool) -> Result<()> {
        self.pin_impl(user, conversation, pinned).await
    }

    async fn history(&self, user: &UserId, conversation: &ConversationId, query: HistoryQuery) -> Result<HistoryPage> {
        let view = self.view(user, conversation).await?;
        self.history_page(&view, query).await
    }

    async fn remove_messages(&self, user: &UserId, conversation: &ConversationId, removal: Removal) -> Result<()> {
        self.remove_impl(user, conversation, removal).await
    }

    async fn delete_conversation(&self, user: &UserId, conversation: &ConversationId, delete_roam: bool) -> Result<()> {
        self.delete_impl(user, conversation, delete_roam).await
    }

    async fn mark_read(&self, user: &UserId, conversation: &ConversationId) -> Result<()> {
        self.mark_read_impl(user, conversation).await
    }
}
