//! [`MessageApi`]: sending and groups. Implemented by the message service;
//! served to other processes as `natter.v1.MessageRole` by
//! [`MessageRoleServer`] and called there through [`RemoteMessages`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::api::{self as wire, decode, field, reply, user_strings};
use natter_proto::status_from_error;
use natter_proto::v1;
use natter_proto::v1::message_role_client::MessageRoleClient;
use natter_proto::v1::message_role_server::{MessageRole, MessageRoleServer as GrpcServer};
use natter_types::{
    Actor, Error, Group, GroupId, Limits, MemberPage, NewGroup, NewMessage, ReaderPage, ReaderQuery, RecallRequest,
    ReceiptRequest, Result, SendOutcome, UserId,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::client::{RoleClient, lazy_channel};

#[async_trait]
pub trait MessageApi: Send + Sync + 'static {
    /// R1: answers once the message and every recipient's event are durable.
    async fn send(&self, from: Actor, message: NewMessage) -> Result<SendOutcome>;

    async fn create_group(&self, owner: &UserId, group: NewGroup) -> Result<Group>;
    async fn get_group(&self, actor: &Actor, group: &GroupId) -> Result<Group>;
    async fn add_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group>;
    async fn remove_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group>;
    async fn set_admin(&self, actor: &Actor, group: &GroupId, user: &UserId, admin: bool) -> Result<Group>;
    async fn leave_group(&self, user: &UserId, group: &GroupId) -> Result<()>;
    async fn dissolve_group(&self, actor: &Actor, group: &GroupId) -> Result<()>;
    /// `after` is exclusive; the service clamps `limit` to 1–1000.
    async fn list_members(
        &self,
        actor: &Actor,
        group: &GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<MemberPage>;
    async fn user_groups(&self, user: &UserId) -> Result<Vec<Group>>;

    /// R2, R4, R5: `reader`'s receipt for a message addressed to them;
    /// answers once the sender's event (or, for a group message, its read
    /// count) is durable.
    async fn receipt(&self, reader: &UserId, receipt: ReceiptRequest) -> Result<()>;
    /// R8: answers once every recipient's event is durable.
    async fn recall(&self, actor: &Actor, recall: RecallRequest) -> Result<()>;
    /// R7: who read a group message, for its sender, the group's owner and
    /// admins, or the system.
    async fn group_read_users(&self, actor: &Actor, query: ReaderQuery) -> Result<ReaderPage>;
}

/// Per-call deadline of [`RemoteMessages`] unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

// ---- server ----

/// Serves a `MessageApi` as `natter.v1.MessageRole`. Requests are decoded
/// and validated (a message to send against `limits`) before the API sees
/// them; bad input is a BAD_REQUEST naming the field.
pub struct MessageRoleServer {
    api: Arc<dyn MessageApi>,
    limits: Limits,
}

impl MessageRoleServer {
    pub fn new(api: Arc<dyn MessageApi>, limits: Limits) -> Self {
        Self { api, limits }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> GrpcServer<Self> {
        GrpcServer::new(self)
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn actor(raw: Option<v1::Actor>) -> std::result::Result<Actor, Status> {
    field(natter_proto::actor(raw, "actor"))
}

fn group_id(raw: &str) -> std::result::Result<GroupId, Status> {
    field(wire::group_id(raw, "group_id"))
}

fn required<T>(value: Option<T>, name: &str) -> std::result::Result<T, Status> {
    value.ok_or_else(|| status_from_error(&Error::bad_request(name, "is required")))
}

#[tonic::async_trait]
impl MessageRole for MessageRoleServer {
    async fn send(&self, request: Request<v1::RoleSendRequest>) -> Reply<v1::SendResult> {
        let req = request.into_inner();
        let from = field(natter_proto::actor(req.from, "from"))?;
        let mut message = field(
            natter_proto::new_message(required(req.message, "message")?, &self.limits).map_err(|e| e.within("message")),
        )?;
        message.updates_conversations = req.update_conversations;
        reply(self.api.send(from, message).await)
    }

    async fn create_group(&self, request: Request<v1::RoleCreateGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let owner = field(wire::user(&req.owner, "owner"))?;
        let group = field(wire::new_group(required(req.group, "group")?).map_err(|e| e.within("group")))?;
        reply(self.api.create_group(&owner, group).await)
    }

    async fn get_group(&self, request: Request<v1::RoleGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        reply(self.api.get_group(&actor(req.actor)?, &group_id(&req.group_id)?).await)
    }

    async fn add_members(&self, request: Request<v1::RoleMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (group, members) = field(wire::group_and_members(&req.group_id, &req.members))?;
        reply(self.api.add_members(&actor(req.actor)?, &group, members).await)
    }

    async fn remove_members(&self, request: Request<v1::RoleMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (group, members) = field(wire::group_and_members(&req.group_id, &req.members))?;
        reply(self.api.remove_members(&actor(req.actor)?, &group, members).await)
    }

    async fn set_admin(&self, request: Request<v1::RoleSetAdminRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        reply(self.api.set_admin(&actor(req.actor)?, &group_id(&req.group_id)?, &user, req.admin).await)
    }

    async fn leave_group(&self, request: Request<v1::RoleLeaveGroupRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        reply(self.api.leave_group(&user, &group_id(&req.group_id)?).await)
    }

    async fn dissolve_group(&self, request: Request<v1::RoleGroupRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        reply(self.api.dissolve_group(&actor(req.actor)?, &group_id(&req.group_id)?).await)
    }

    async fn list_members(&self, request: Request<v1::RoleListMembersRequest>) -> Reply<v1::MemberPage> {
        let req = request.into_inner();
        let after = field(wire::optional_user(&req.after, "after"))?;
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        reply(self.api.list_members(&actor(req.actor)?, &group_id(&req.group_id)?, after, limit).await)
    }

    async fn user_groups(&self, request: Request<v1::RoleUserRequest>) -> Reply<v1::GroupList> {
        let user = field(wire::user(&request.into_inner().user_id, "user_id"))?;
        reply(self.api.user_groups(&user).await)
    }

    async fn receipt(&self, request: Request<v1::RoleReceiptRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        let receipt = field(wire::receipt(&required(req.receipt, "receipt")?).map_err(|e| e.within("receipt")))?;
        reply(self.api.receipt(&user, receipt).await)
    }

    async fn recall(&self, request: Request<v1::RoleRecallRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let recall = field(wire::recall(&required(req.recall, "recall")?, &req.from).map_err(|e| e.within("recall")))?;
        reply(self.api.recall(&actor(req.actor)?, recall).await)
    }

    async fn group_read_users(&self, request: Request<v1::RoleGroupReadUsersRequest>) -> Reply<v1::GroupReadUsers> {
        let req = request.into_inner();
        let query = field(wire::reader_query(&required(req.query, "query")?).map_err(|e| e.within("query")))?;
        reply(self.api.group_read_users(&actor(req.actor)?, query).await)
    }
}

// ---- client ----

/// `MessageApi` over a gRPC channel to a message role. Cheap to clone (the
/// channel is shared); a lazy channel connects on first use and reconnects
/// by itself, so a gateway may start before the role. Every call has a
/// deadline; one that passes is UNAVAILABLE (sends are idempotent by
/// client message id, so the caller may retry).
#[derive(Clone)]
pub struct RemoteMessages {
    inner: RoleClient<MessageRoleClient<Channel>>,
}

impl RemoteMessages {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self { inner: RoleClient::new(MessageRoleClient::new(channel), "message", timeout) }
    }

    /// A client for the role at `uri` (e.g. `http://message:7002`) that
    /// connects on first use.
    pub fn connect_lazy(uri: &str, timeout: Duration) -> Result<Self> {
        Ok(Self::new(lazy_channel(uri, timeout, "message_role")?, timeout))
    }

    /// Sends the cluster's API key with every call (the role requires it).
    pub fn with_api_key(self, api_key: &str) -> Result<Self> {
        Ok(Self { inner: self.inner.with_api_key(api_key)? })
    }
}

fn group_request(actor: &Actor, group: &GroupId) -> v1::RoleGroupRequest {
    v1::RoleGroupRequest { actor: Some(actor.into()), group_id: group.to_string() }
}

fn members_request(actor: &Actor, group: &GroupId, members: &[UserId]) -> v1::RoleMembersRequest {
    v1::RoleMembersRequest { actor: Some(actor.into()), group_id: group.to_string(), members: user_strings(members) }
}

#[async_trait]
impl MessageApi for RemoteMessages {
    async fn send(&self, from: Actor, message: NewMessage) -> Result<SendOutcome> {
        let req = v1::RoleSendRequest {
            from: Some((&from).into()),
            update_conversations: message.updates_conversations,
            message: Some((&message).into()),
        };
        decode(self.inner.call(req, |mut c, r| async move { c.send(r).await }).await?)
    }

    async fn create_group(&self, owner: &UserId, group: NewGroup) -> Result<Group> {
        let req = v1::RoleCreateGroupRequest { owner: owner.to_string(), group: Some((&group).into()) };
        decode(self.inner.call(req, |mut c, r| async move { c.create_group(r).await }).await?)
    }

    async fn get_group(&self, actor: &Actor, group: &GroupId) -> Result<Group> {
        let req = group_request(actor, group);
        decode(self.inner.call(req, |mut c, r| async move { c.get_group(r).await }).await?)
    }

    async fn add_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group> {
        let req = members_request(actor, group, &members);
        decode(self.inner.call(req, |mut c, r| async move { c.add_members(r).await }).await?)
    }

    async fn remove_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group> {
        let req = members_request(actor, group, &members);
        decode(self.inner.call(req, |mut c, r| async move { c.remove_members(r).await }).await?)
    }

    async fn set_admin(&self, actor: &Actor, group: &GroupId, user: &UserId, admin: bool) -> Result<Group> {
        let req = v1::RoleSetAdminRequest {
            actor: Some(actor.into()),
            group_id: group.to_string(),
            user_id: user.to_string(),
            admin,
        };
        decode(self.inner.call(req, |mut c, r| async move { c.set_admin(r).await }).await?)
    }

    async fn leave_group(&self, user: &UserId, group: &GroupId) -> Result<()> {
        let req = v1::RoleLeaveGroupRequest { user_id: user.to_string(), group_id: group.to_string() };
        self.inner.call(req, |mut c, r| async move { c.leave_group(r).await }).await.map(drop)
    }

    async fn dissolve_group(&self, actor: &Actor, group: &GroupId) -> Result<()> {
        let req = group_request(actor, group);
        self.inner.call(req, |mut c, r| async move { c.dissolve_group(r).await }).await.map(drop)
    }

    async fn list_members(
        &self,
        actor: &Actor,
        group: &GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<MemberPage> {
        let req = v1::RoleListMembersRequest {
            actor: Some(actor.into()),
            group_id: group.to_string(),
            after: after.map(|u| u.to_string()).unwrap_or_default(),
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        };
        decode(self.inner.call(req, |mut c, r| async move { c.list_members(r).await }).await?)
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<Group>> {
        let req = v1::RoleUserRequest { user_id: user.to_string() };
        decode(self.inner.call(req, |mut c, r| async move { c.user_groups(r).await }).await?)
    }

    async fn receipt(&self, reader: &UserId, receipt: ReceiptRequest) -> Result<()> {
        let req = v1::RoleReceiptRequest { user_id: reader.to_string(), receipt: Some((&receipt).into()) };
        self.inner.call(req, |mut c, r| async move { c.receipt(r).await }).await.map(drop)
    }

    async fn recall(&self, actor: &Actor, recall: RecallRequest) -> Result<()> {
        let req = v1::RoleRecallRequest {
            actor: Some(actor.into()),
            from: recall.from.as_ref().map(ToString::to_string).unwrap_or_default(),
            recall: Some((&recall).into()),
        };
        self.inner.call(req, |mut c, r| async move { c.recall(r).await }).await.map(drop)
    }

    async fn group_read_users(&self, actor: &Actor, query: ReaderQuery) -> Result<ReaderPage> {
        let req = v1::RoleGroupReadUsersRequest { actor: Some(actor.into()), query: Some((&query).into()) };
        decode(self.inner.call(req, |mut c, r| async move { c.group_read_users(r).await }).await?)
    }
}
