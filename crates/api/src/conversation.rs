//! [`ConversationApi`]: a user's conversations and history (C1–C7).
//! Implemented by the conversation service; served to other processes as
//! `natter.v1.ConversationRole` by [`ConversationRoleServer`] and called there
//! through [`RemoteConversations`]. Every call acts for one user, in that
//! user's view: the gateway passes the connection's user, the backend API
//! the user it names.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::api::{self as wire, decode, field, reply};
use natter_proto::status_from_error;
use natter_proto::v1;
use natter_proto::v1::conversation_role_client::ConversationRoleClient;
use natter_proto::v1::conversation_role_server::{ConversationRole, ConversationRoleServer as GrpcServer};
use natter_types::{
    ConversationId, ConversationPage, Direction, Error, HistoryPage, HistoryQuery, ListQuery, Removal, Result, UserId,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::client::{RoleClient, lazy_channel};

#[async_trait]
pub trait ConversationApi: Send + Sync + 'static {
    /// C1 (C3 with `query.pinned`): newest activity (pin) first.
    async fn conversations(&self, user: &UserId, query: ListQuery) -> Result<ConversationPage>;

    /// C4: the user's other devices are told.
    async fn pin(&self, user: &UserId, conversation: &ConversationId, pinned: bool) -> Result<()>;

    /// C5: FORBIDDEN for a group the user is not a member of.
    async fn history(&self, user: &UserId, conversation: &ConversationId, query: HistoryQuery) -> Result<HistoryPage>;

    /// C6: only for the user; their other devices are told.
    async fn remove_messages(&self, user: &UserId, conversation: &ConversationId, removal: Removal) -> Result<()>;

    /// C7: off the user's list, with `delete_roam` the history too; their
    /// other devices are told.
    async fn delete_conversation(&self, user: &UserId, conversation: &ConversationId, delete_roam: bool) -> Result<()>;

    /// Marks the conversation read: its unread count becomes 0 and the
    /// user's other devices are told.
    async fn mark_read(&self, user: &UserId, conversation: &ConversationId) -> Result<()>;
}

/// Per-call deadline of [`RemoteConversations`] unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

// ---- server ----

/// Serves a `ConversationApi` as `natter.v1.ConversationRole`; requests are
/// decoded and validated before the API sees them.
pub struct ConversationRoleServer {
    api: Arc<dyn ConversationApi>,
}

impl ConversationRoleServer {
    pub fn new(api: Arc<dyn ConversationApi>) -> Self {
        Self { api }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> GrpcServer<Self> {
        GrpcServer::new(self)
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn user(raw: &str) -> std::result::Result<UserId, Status> {
    field(wire::user(raw, "user_id"))
}

fn required<T>(value: Option<T>, name: &str) -> std::result::Result<T, Status> {
    value.ok_or_else(|| status_from_error(&Error::bad_request(name, "is required")))
}

#[tonic::async_trait]
impl ConversationRole for ConversationRoleServer {
    async fn conversations(&self, request: Request<v1::RoleConversationsRequest>) -> Reply<v1::ConversationPage> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let query = field(wire::list_query(req.page_size, req.cursor, req.pinned))?;
        reply(self.api.conversations(&user, query).await)
    }

    async fn pin(&self, request: Request<v1::RolePinRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let (conversation, pinned) = field(wire::pin(&required(req.pin, "pin")?))?;
        reply(self.api.pin(&user, &conversation, pinned).await)
    }

    async fn history(&self, request: Request<v1::RoleHistoryRequest>) -> Reply<v1::HistoryPage> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let (conversation, query) = field(wire::history_query(&required(req.query, "query")?))?;
        reply(self.api.history(&user, &conversation, query).await)
    }

    async fn remove_messages(&self, request: Request<v1::RoleRemoveMessagesRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let (conversation, removal) = field(wire::removal(&required(req.removal, "removal")?))?;
        reply(self.api.remove_messages(&user, &conversation, removal).await)
    }

    async fn delete_conversation(&self, request: Request<v1::RoleDeleteConversationRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let (conversation, delete_roam) = field(wire::deletion(&required(req.conversation, "conversation")?))?;
        reply(self.api.delete_conversation(&user, &conversation, delete_roam).await)
    }

    async fn mark_read(&self, request: Request<v1::RoleMarkReadRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let conversation = field(wire::channel_ack(&required(req.ack, "ack")?))?;
        reply(self.api.mark_read(&user, &conversation).await)
    }
}

// ---- client ----

/// `ConversationApi` over a gRPC channel to a conversation role; as
/// [`crate::RemotePresence`]: cheap to clone, lazily connected, a deadline
/// per call.
#[derive(Clone)]
pub struct RemoteConversations {
    inner: RoleClient<ConversationRoleClient<Channel>>,
}

impl RemoteConversations {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self { inner: RoleClient::new(ConversationRoleClient::new(channel), "conversation", timeout) }
    }

    /// A client for the role at `uri` that connects on first use.
    pub fn connect_lazy(uri: &str, timeout: Duration) -> Result<Self> {
        Ok(Self::new(lazy_channel(uri, timeout, "conversation_role")?, timeout))
    }

    /// Sends the cluster's API key with every call (the role requires it).
    pub fn with_api_key(self, api_key: &str) -> Result<Self> {
        Ok(Self { inner: self.inner.with_api_key(api_key)? })
    }
}

fn wire_conversation(c: &ConversationId) -> (String, i32) {
    (c.target.clone(), v1::ChatType::from(c.chat_type) as i32)
}

#[async_trait]
impl ConversationApi for RemoteConversations {
    async fn conversations(&self, user: &UserId, query: ListQuery) -> Result<ConversationPage> {
        let req = v1::RoleConversationsRequest {
            user_id: user.to_string(),
            page_size: query.page_size as u32,
            cursor: query.cursor,
            pinned: query.pinned,
        };
        decode(self.inner.call(req, |mut c, r| async move { c.conversations(r).await }).await?)
    }

    async fn pin(&self, user: &UserId, conversation: &ConversationId, pinned: bool) -> Result<()> {
        let (conversation_id, conversation_type) = wire_conversation(conversation);
        let pin = v1::PinConversation { conversation_id, conversation_type, is_pinned: pinned };
        let req = v1::RolePinRequest { user_id: user.to_string(), pin: Some(pin) };
        self.inner.call(req, |mut c, r| async move { c.pin(r).await }).await.map(drop)
    }

    async fn history(&self, user: &UserId, conversation: &ConversationId, query: HistoryQuery) -> Result<HistoryPage> {
        let (target_id, chat_type) = wire_conversation(conversation);
        let search_direction = match query.direction {
            Direction::Up => v1::SearchDirection::Up,
            Direction::Down => v1::SearchDirection::Down,
        } as i32;
        let query = v1::GetHistoryMessages {
            target_id,
            chat_type,
            page_size: query.page_size as u32,
            cursor: query.cursor.map(|c| c.0.to_string()).unwrap_or_default(),
            search_direction,
        };
        let req = v1::RoleHistoryRequest { user_id: user.to_string(), query: Some(query) };
        decode(self.inner.call(req, |mut c, r| async move { c.history(r).await }).await?)
    }

    async fn remove_messages(&self, user: &UserId, conversation: &ConversationId, removal: Removal) -> Result<()> {
        let (target_id, chat_type) = wire_conversation(conversation);
        let (before_timestamp, message_ids) = match removal {
            Removal::Before(before) => (before, Vec::new()),
            Removal::Ids(ids) => (0, ids.into_iter().map(|id| id.0).collect()),
        };
        let removal = v1::RemoveHistoryMessages { target_id, chat_type, before_timestamp, message_ids };
        let req = v1::RoleRemoveMessagesRequest { user_id: user.to_string(), removal: Some(removal) };
        self.inner.call(req, |mut c, r| async move { c.remove_messages(r).await }).await.map(drop)
    }

    async fn delete_conversation(&self, user: &UserId, conversation: &ConversationId, delete_roam: bool) -> Result<()> {
        let (channel, chat_type) = wire_conversation(conversation);
        let conversation = v1::DeleteConversation { channel, chat_type, delete_roam };
        let req = v1::RoleDeleteConversationRequest { user_id: user.to_string(), conversation: Some(conversation) };
        self.inner.call(req, |mut c, r| async move { c.delete_conversation(r).await }).await.map(drop)
    }

    async fn mark_read(&self, user: &UserId, conversation: &ConversationId) -> Result<()> {
        let (to, chat_type) = wire_conversation(conversation);
        let req =
            v1::RoleMarkReadRequest { user_id: user.to_string(), ack: Some(v1::SendChannelAck { to, chat_type }) };
        self.inner.call(req, |mut c, r| async move { c.mark_read(r).await }).await.map(drop)
    }
}
