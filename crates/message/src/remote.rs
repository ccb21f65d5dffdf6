//! `MessageApi` over gRPC (`natter.v1.MessageRole`, proto/natter/v1/internal.proto).
//!
//! [`MessageRoleServer`] serves any `MessageApi` (the local
//! [`MessageService`](crate::MessageService) in the message role);
//! [`RemoteMessages`] is the `MessageApi` a gateway holds in the distributed
//! mode. Errors cross the wire unchanged (code, field, message).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::remote::{RoleClient, decode, user_strings};
use natter_proto::v1::message_role_client::MessageRoleClient;
use natter_proto::v1::message_role_server::{MessageRole, MessageRoleServer as GrpcServer};
use natter_proto::{status_from_error, v1};
use natter_types::{Actor, Error, Group, GroupId, GroupMember, Limits, MessageId, NewMessage, Result, UserId};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::{MemberPage, MessageApi, NewGroup, SendOutcome};

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

fn status(e: Error) -> Status {
    status_from_error(&e)
}

fn user(raw: &str, field: &str) -> std::result::Result<UserId, Status> {
    UserId::parse(raw, field).map_err(status)
}

fn users(raw: &[String], field: &str) -> std::result::Result<Vec<UserId>, Status> {
    raw.iter().map(|u| UserId::parse(u, field)).collect::<Result<_>>().map_err(status)
}

fn group_id(raw: &str) -> std::result::Result<GroupId, Status> {
    GroupId::parse(raw, "group_id").map_err(status)
}

fn actor(raw: Option<v1::Actor>) -> std::result::Result<Actor, Status> {
    natter_proto::actor(raw, "actor").map_err(status)
}

fn group_reply(g: Result<Group>) -> Reply<v1::Group> {
    g.map(|g| Response::new((&g).into())).map_err(status)
}

#[tonic::async_trait]
impl MessageRole for MessageRoleServer {
    async fn send(&self, request: Request<v1::RoleSendRequest>) -> Reply<v1::SendResult> {
        let req = request.into_inner();
        let from = natter_proto::actor(req.from, "from").map_err(status)?;
        let message = req.message.ok_or_else(|| status(Error::bad_request("message", "is required")))?;
        let new = natter_proto::new_message(message, &self.limits).map_err(|e| status(e.within("message")))?;
        let sent = self.api.send(from, new).await.map_err(status)?;
        Ok(Response::new(v1::SendResult {
            client_msg_id: sent.client_msg_id,
            server_msg_id: sent.id.0,
            timestamp: sent.timestamp,
            duplicate: sent.duplicate,
        }))
    }

    async fn create_group(&self, request: Request<v1::RoleCreateGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let owner = user(&req.owner, "owner")?;
        let g = req.group.ok_or_else(|| status(Error::bad_request("group", "is required")))?;
        let members = users(&g.members, "group.members")?;
        let new = NewGroup { name: g.name, description: g.description, members, max_members: g.max_members };
        group_reply(self.api.create_group(&owner, new).await)
    }

    async fn get_group(&self, request: Request<v1::RoleGroupRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        group_reply(self.api.get_group(&actor(req.actor)?, &group_id(&req.group_id)?).await)
    }

    async fn add_members(&self, request: Request<v1::RoleMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (actor, group, members) = (actor(req.actor)?, group_id(&req.group_id)?, users(&req.members, "members")?);
        group_reply(self.api.add_members(&actor, &group, members).await)
    }

    async fn remove_members(&self, request: Request<v1::RoleMembersRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (actor, group, members) = (actor(req.actor)?, group_id(&req.group_id)?, users(&req.members, "members")?);
        group_reply(self.api.remove_members(&actor, &group, members).await)
    }

    async fn set_admin(&self, request: Request<v1::RoleSetAdminRequest>) -> Reply<v1::Group> {
        let req = request.into_inner();
        let (actor, group, target) = (actor(req.actor)?, group_id(&req.group_id)?, user(&req.user_id, "user_id")?);
        group_reply(self.api.set_admin(&actor, &group, &target, req.admin).await)
    }

    async fn leave_group(&self, request: Request<v1::RoleLeaveGroupRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        self.api.leave_group(&user(&req.user_id, "user_id")?, &group_id(&req.group_id)?).await.map_err(status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn dissolve_group(&self, request: Request<v1::RoleGroupRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        self.api.dissolve_group(&actor(req.actor)?, &group_id(&req.group_id)?).await.map_err(status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_members(&self, request: Request<v1::RoleListMembersRequest>) -> Reply<v1::MemberPage> {
        let req = request.into_inner();
        let after = if req.after.is_empty() { None } else { Some(user(&req.after, "after")?) };
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let page =
            self.api.list_members(&actor(req.actor)?, &group_id(&req.group_id)?, after, limit).await.map_err(status)?;
        Ok(Response::new(v1::MemberPage {
            members: page.members.iter().map(Into::into).collect(),
            next_cursor: page.next.map(|u| u.to_string()).unwrap_or_default(),
        }))
    }

    async fn user_groups(&self, request: Request<v1::RoleUserRequest>) -> Reply<v1::GroupList> {
        let user = user(&request.into_inner().user_id, "user_id")?;
        let groups = self.api.user_groups(&user).await.map_err(status)?;
        Ok(Response::new(v1::GroupList { groups: groups.iter().map(Into::into).collect() }))
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
        Ok(Self::new(natter_proto::remote::lazy_channel(uri, timeout, "message_role")?, timeout))
    }

    /// Sends the cluster's API key with every call (the role requires it).
    pub fn with_api_key(self, api_key: &str) -> Result<Self> {
        Ok(Self { inner: self.inner.with_api_key(api_key)? })
    }
}

#[async_trait]
impl MessageApi for RemoteMessages {
    async fn send(&self, from: Actor, message: NewMessage) -> Result<SendOutcome> {
        let req = v1::RoleSendRequest { from: Some((&from).into()), message: Some((&message).into()) };
        let r = self.inner.call(req, |mut c, r| async move { c.send(r).await }).await?;
        Ok(SendOutcome {
            client_msg_id: r.client_msg_id,
            id: MessageId(r.server_msg_id),
            timestamp: r.timestamp,
            duplicate: r.duplicate,
        })
    }

    async fn create_group(&self, owner: &UserId, group: NewGroup) -> Result<Group> {
        let req = v1::RoleCreateGroupRequest {
            owner: owner.to_string(),
            group: Some(v1::CreateGroup {
                name: group.name,
                description: group.description,
                members: user_strings(&group.members),
                max_members: group.max_members,
            }),
        };
        decode(self.inner.call(req, |mut c, r| async move { c.create_group(r).await }).await?)
    }

    async fn get_group(&self, actor: &Actor, group: &GroupId) -> Result<Group> {
        let req = v1::RoleGroupRequest { actor: Some(actor.into()), group_id: group.to_string() };
        decode(self.inner.call(req, |mut c, r| async move { c.get_group(r).await }).await?)
    }

    async fn add_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group> {
        let req = v1::RoleMembersRequest {
            actor: Some(actor.into()),
            group_id: group.to_string(),
            members: user_strings(&members),
        };
        decode(self.inner.call(req, |mut c, r| async move { c.add_members(r).await }).await?)
    }

    async fn remove_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group> {
        let req = v1::RoleMembersRequest {
            actor: Some(actor.into()),
            group_id: group.to_string(),
            members: user_strings(&members),
        };
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
        let req = v1::RoleGroupRequest { actor: Some(actor.into()), group_id: group.to_string() };
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
        let page = self.inner.call(req, |mut c, r| async move { c.list_members(r).await }).await?;
        let members = page.members.into_iter().map(decode::<GroupMember, _>).collect::<Result<Vec<_>>>()?;
        let next = if page.next_cursor.is_empty() {
            None
        } else {
            Some(UserId::parse(&page.next_cursor, "next_cursor").map_err(|e| Error::internal(e.message))?)
        };
        Ok(MemberPage { members, next })
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<Group>> {
        let req = v1::RoleUserRequest { user_id: user.to_string() };
        let list = self.inner.call(req, |mut c, r| async move { c.user_groups(r).await }).await?;
        list.groups.into_iter().map(decode::<Group, _>).collect()
    }
}
