//! The backend gRPC API (`natter.v1.Backend`) for the app's own servers,
//! behind an API key, with grpc.health.v1 and server reflection. A thin map
//! onto the service APIs; the conversions are `natter_proto::api`'s.

use std::sync::Arc;

use natter_api::{ConversationApi, MessageApi, PresenceApi};
use natter_gateway::Tokens;
use natter_proto::api::{self as wire, field, reply};
use natter_proto::status_from_error;
use natter_proto::v1::{self, backend_server::Backend};
use natter_types::{Actor, Error, ErrorCode};
use tonic::{Request, Response, Status};

pub struct BackendApi {
    pub messages: Arc<dyn MessageApi>,
    pub presence: Arc<dyn PresenceApi>,
    pub conversations: Arc<dyn ConversationApi>,
    pub tokens: Tokens,
    pub limits: natter_types::Limits,
    /// `conversations.backend_updates`: whether a send updates conversations
    /// when the request does not say.
    pub backend_updates: bool,
}

fn required<T>(value: Option<T>, name: &str) -> Result<T, Status> {
    value.ok_or_else(|| status(Error::bad_request(name, "is required")))
}

type Reply<T> = Result<Response<T>, Status>;

fn status(e: Error) -> Status {
    status_from_error(&e)
}

#[tonic::async_trait]
impl Backend for BackendApi {
    async fn mint_token(&self, request: Request<v1::MintTokenRequest>) -> Reply<v1::MintTokenResponse> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let (token, expires_at) = self.tokens.mint(&user, req.ttl_seconds).map_err(status)?;
        Ok(Response::new(v1::MintTokenResponse { token, expires_at: expires_at as i64 }))
    }

    async fn send_message(&self, request: Request<v1::BackendSendRequest>) -> Reply<v1::SendResult> {
        let req = request.into_inner();
        let from = field(wire::operator(&req.from))?;
        let message = req.message.ok_or_else(|| status(Error::bad_request("message", "is required")))?;
        let mut new = field(natter_proto::new_message(message, &self.limits).map_err(|e| e.within("message")))?;
        new.updates_conversations = req.update_conversations.unwrap_or(self.backend_updates);
        reply(self.messages.send(from, new).await)
    }

    async fn create_group(&self, request: Request<v1::BackendCreateGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let owner = field(wire::user(&req.owner, "owner"))?;
        let new = field(wire::new_group(req.group.unwrap_or_default()).map_err(|e| e.within("group")))?;
        reply(self.messages.create_group(&owner, new).await.map_err(|e| e.within("group")))
    }

    async fn get_group(&self, request: Request<v1::BackendGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (operator, group) =
            (field(wire::operator(&req.operator))?, field(wire::group_id(&req.group_id, "group_id"))?);
        reply(self.messages.get_group(&operator, &group).await)
    }

    async fn add_members(&self, request: Request<v1::BackendMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (group, members) = field(wire::group_and_members(&req.group_id, &req.members))?;
        reply(self.messages.add_members(&field(wire::operator(&req.operator))?, &group, members).await)
    }

    async fn remove_members(&self, request: Request<v1::BackendMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (group, members) = field(wire::group_and_members(&req.group_id, &req.members))?;
        reply(self.messages.remove_members(&field(wire::operator(&req.operator))?, &group, members).await)
    }

    async fn set_admin(&self, request: Request<v1::BackendSetAdminRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let (operator, group) =
            (field(wire::operator(&req.operator))?, field(wire::group_id(&req.group_id, "group_id"))?);
        reply(self.messages.set_admin(&operator, &group, &user, req.admin).await)
    }

    async fn dissolve_group(&self, request: Request<v1::BackendGroupRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let (operator, group) =
            (field(wire::operator(&req.operator))?, field(wire::group_id(&req.group_id, "group_id"))?);
        reply(self.messages.dissolve_group(&operator, &group).await)
    }

    async fn list_members(&self, request: Request<v1::BackendListMembersRequest>) -> Reply<v1::MemberPage> {
        let req = request.into_inner();
        let (after, limit) = field(wire::member_page(&req.cursor, req.page_size))?;
        let group = field(wire::group_id(&req.group_id, "group_id"))?;
        reply(self.messages.list_members(&Actor::System, &group, after, limit).await)
    }

    async fn list_user_groups(&self, request: Request<v1::BackendUserRequest>) -> Reply<v1::GroupList> {
        let user = field(wire::user(&request.into_inner().user_id, "user_id"))?;
        reply(self.messages.user_groups(&user).await)
    }

    async fn query_presence(&self, request: Request<v1::BackendPresenceRequest>) -> Reply<v1::PresenceList> {
        let users = field(wire::users(&request.into_inner().user_ids, "user_ids"))?;
        reply(self.presence.query(users).await)
    }

    async fn list_presence_subscriptions(
        &self,
        request: Request<v1::BackendSubscriptionsRequest>,
    ) -> Reply<v1::SubscriptionPage> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        reply(self.presence.subscriptions(&user, req.page_num, req.page_size).await)
    }

    async fn get_conversations(
        &self,
        request: Request<v1::BackendConversationsRequest>,
    ) -> Reply<v1::ConversationPage> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let query = field(wire::list_query(req.page_size, req.cursor, req.pinned))?;
        reply(self.conversations.conversations(&user, query).await)
    }

    async fn get_history_messages(&self, request: Request<v1::BackendHistoryRequest>) -> Reply<v1::HistoryPage> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let query = required(req.query, "query")?;
        let (conversation, query) = field(wire::history_query(&query).map_err(|e| e.within("query")))?;
        reply(self.conversations.history(&user, &conversation, query).await)
    }

    async fn remove_history_messages(&self, request: Request<v1::BackendRemoveHistoryRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let removal = required(req.removal, "removal")?;
        let (conversation, removal) = field(wire::removal(&removal).map_err(|e| e.within("removal")))?;
        reply(self.conversations.remove_messages(&user, &conversation, removal).await)
    }

    async fn delete_conversation(&self, request: Request<v1::BackendDeleteConversationRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let deletion = required(req.conversation, "conversation")?;
        let (conversation, delete_roam) = field(wire::deletion(&deletion).map_err(|e| e.within("conversation")))?;
        reply(self.conversations.delete_conversation(&user, &conversation, delete_roam).await)
    }

    async fn pin_conversation(&self, request: Request<v1::BackendPinConversationRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let (conversation, pinned) = field(wire::pin(&required(req.pin, "pin")?).map_err(|e| e.within("pin")))?;
        reply(self.conversations.pin(&user, &conversation, pinned).await)
    }

    async fn mark_conversation_read(&self, request: Request<v1::BackendMarkReadRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let conversation = field(wire::channel_ack(&required(req.ack, "ack")?).map_err(|e| e.within("ack")))?;
        reply(self.conversations.mark_read(&user, &conversation).await)
    }

    async fn send_receipt(&self, request: Request<v1::BackendReceiptRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let receipt = field(wire::receipt(&required(req.receipt, "receipt")?).map_err(|e| e.within("receipt")))?;
        reply(self.messages.receipt(&user, receipt).await.map_err(|e| e.within("receipt")))
    }

    async fn recall_message(&self, request: Request<v1::BackendRecallRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let operator = field(wire::operator(&req.operator))?;
        let recall = field(wire::recall(&required(req.recall, "recall")?, &req.from).map_err(|e| e.within("recall")))?;
        reply(self.messages.recall(&operator, recall).await.map_err(|e| e.within("recall")))
    }

    async fn get_group_msg_read_user(
        &self,
        request: Request<v1::BackendGroupReadUsersRequest>,
    ) -> Reply<v1::GroupReadUsers> {
        let req = request.into_inner();
        let operator = field(wire::operator(&req.operator))?;
        let query = field(wire::reader_query(&required(req.query, "query")?).map_err(|e| e.within("query")))?;
        reply(self.messages.group_read_users(&operator, query).await.map_err(|e| e.within("query")))
    }
}

/// Rejects calls without `authorization: Bearer <api key>`.
#[derive(Clone)]
pub struct ApiKeyCheck {
    expected: Arc<str>,
}

impl ApiKeyCheck {
    pub fn new(key: &str) -> Self {
        Self { expected: Arc::from(format!("Bearer {key}")) }
    }
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match given {
            Some(value) if constant_time_eq(value.as_bytes(), self.expected.as_bytes()) => Ok(request),
            Some(_) => Err(status(Error::new(ErrorCode::Unauthenticated, "api key is wrong"))),
            None => Err(status(Error::new(
                ErrorCode::Unauthenticated,
                "an api key is required: authorization: Bearer <api key>",
            ))),
        }
    }
}

/// Compares without an early exit, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
