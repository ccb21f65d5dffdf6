//! The backend gRPC API (`natter.v1.Backend`) for the app's own servers,
//! behind an API key, with grpc.health.v1 and server reflection.

use std::collections::BTreeMap;
use std::sync::Arc;

use natter_gateway::Tokens;
use natter_message::{MessageApi, NewGroup};
use natter_presence::PresenceApi;
use natter_proto::status_from_error;
use natter_proto::v1::{self, backend_server::Backend};
use natter_types::{Actor, Error, ErrorCode, GroupId, NewMessage, UserId};
use tonic::{Request, Response, Status};

pub struct BackendApi {
    pub messages: Arc<dyn MessageApi>,
    pub presence: Arc<dyn PresenceApi>,
    pub tokens: Tokens,
    pub limits: natter_types::Limits,
}

type Reply<T> = Result<Response<T>, Status>;

fn status(e: Error) -> Status {
    status_from_error(&e)
}

/// Empty operator: the system, which may do anything.
fn operator(raw: &str) -> Result<Actor, Status> {
    if raw.is_empty() { Ok(Actor::System) } else { UserId::parse(raw, "operator").map(Actor::User).map_err(status) }
}

fn group_id(raw: &str) -> Result<GroupId, Status> {
    GroupId::parse(raw, "group_id").map_err(status)
}

#[tonic::async_trait]
impl Backend for BackendApi {
    async fn mint_token(&self, request: Request<v1::MintTokenRequest>) -> Reply<v1::MintTokenResponse> {
        let req = request.into_inner();
        let user = UserId::parse(&req.user_id, "user_id").map_err(status)?;
        let (token, expires_at) = self.tokens.mint(&user, req.ttl_seconds).map_err(status)?;
        Ok(Response::new(v1::MintTokenResponse { token, expires_at: expires_at as i64 }))
    }

    async fn send_message(&self, request: Request<v1::BackendSendRequest>) -> Reply<v1::SendResult> {
        let req = request.into_inner();
        let from = operator(&req.from)?;
        let Some(m) = req.message else {
            return Err(status(Error::bad_request("message", "is required")));
        };
        let new = NewMessage::validate(
            m.client_msg_id,
            natter_proto::chat_type(m.chat_type),
            &m.to,
            natter_proto::send_body(m.body),
            m.ext.into_iter().collect::<BTreeMap<_, _>>(),
            &self.limits,
        )
        .map_err(|e| status(e.within("message")))?;
        let sent = self.messages.send(from, new).await.map_err(status)?;
        Ok(Response::new(v1::SendResult {
            client_msg_id: sent.client_msg_id,
            server_msg_id: sent.id.0,
            timestamp: sent.timestamp,
            duplicate: sent.duplicate,
        }))
    }

    async fn create_group(&self, request: Request<v1::BackendCreateGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let owner = UserId::parse(&req.owner, "owner").map_err(status)?;
        let g = req.group.unwrap_or_default();
        let members = g
            .members
            .iter()
            .map(|m| UserId::parse(m, "group.members"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        let new = NewGroup { name: g.name, description: g.description, members, max_members: g.max_members };
        let group = self.messages.create_group(&owner, new).await.map_err(|e| status(e.within("group")))?;
        Ok(Response::new((&group).into()))
    }

    async fn get_group(&self, request: Request<v1::BackendGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let group =
            self.messages.get_group(&operator(&req.operator)?, &group_id(&req.group_id)?).await.map_err(status)?;
        Ok(Response::new((&group).into()))
    }

    async fn add_members(&self, request: Request<v1::BackendMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (group, members) = natter_gateway::group_and_members(&req.group_id, &req.members).map_err(status)?;
        let group = self.messages.add_members(&operator(&req.operator)?, &group, members).await.map_err(status)?;
        Ok(Response::new((&group).into()))
    }

    async fn remove_members(&self, request: Request<v1::BackendMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (group, members) = natter_gateway::group_and_members(&req.group_id, &req.members).map_err(status)?;
        let group = self.messages.remove_members(&operator(&req.operator)?, &group, members).await.map_err(status)?;
        Ok(Response::new((&group).into()))
    }

    async fn set_admin(&self, request: Request<v1::BackendSetAdminRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let user = UserId::parse(&req.user_id, "user_id").map_err(status)?;
        let group = self
            .messages
            .set_admin(&operator(&req.operator)?, &group_id(&req.group_id)?, &user, req.admin)
            .await
            .map_err(status)?;
        Ok(Response::new((&group).into()))
    }

    async fn dissolve_group(&self, request: Request<v1::BackendGroupRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        self.messages.dissolve_group(&operator(&req.operator)?, &group_id(&req.group_id)?).await.map_err(status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_members(&self, request: Request<v1::BackendListMembersRequest>) -> Reply<v1::MemberPage> {
        let req = request.into_inner();
        let (after, limit) = natter_gateway::member_page(&req.cursor, req.page_size).map_err(status)?;
        let page = self
            .messages
            .list_members(&Actor::System, &group_id(&req.group_id)?, after, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(natter_gateway::member_page_to_wire(page)))
    }

    async fn list_user_groups(&self, request: Request<v1::BackendUserRequest>) -> Reply<v1::GroupList> {
        let user = UserId::parse(&request.into_inner().user_id, "user_id").map_err(status)?;
        let groups = self.messages.user_groups(&user).await.map_err(status)?;
        Ok(Response::new(v1::GroupList { groups: groups.iter().map(Into::into).collect() }))
    }

    async fn query_presence(&self, request: Request<v1::BackendPresenceRequest>) -> Reply<v1::PresenceList> {
        let users = request
            .into_inner()
            .user_ids
            .iter()
            .map(|u| UserId::parse(u, "user_ids"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        let presences = self.presence.query(users).await.map_err(status)?;
        Ok(Response::new(natter_gateway::presence_list(&presences)))
    }

    async fn list_presence_subscriptions(
        &self,
        request: Request<v1::BackendSubscriptionsRequest>,
    ) -> Reply<v1::SubscriptionPage> {
        let req = request.into_inner();
        let user = UserId::parse(&req.user_id, "user_id").map_err(status)?;
        let page = self.presence.subscriptions(&user, req.page_num, req.page_size).await.map_err(status)?;
        Ok(Response::new(natter_gateway::subscription_page_to_wire(&page)))
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
