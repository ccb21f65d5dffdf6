//! [`PresenceApi`]: sessions as gateways report them, and the presence
//! requests P1–P7. Implemented by the presence service; served to other
//! processes as `natter.v1.PresenceRole` by [`PresenceRoleServer`] and called
//! there through [`RemotePresence`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::api::{self as wire, decode, field, reply, user_strings};
use natter_proto::status_from_error;
use natter_proto::v1;
use natter_proto::v1::presence_role_client::PresenceRoleClient;
use natter_proto::v1::presence_role_server::{PresenceRole, PresenceRoleServer as GrpcServer};
use natter_types::{Error, Presence, Result, SessionInfo, SessionStatus, SubscriptionPage, UserId};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::client::{RoleClient, lazy_channel};

/// The presence service as the gateway and the backend API see it.
#[async_trait]
pub trait PresenceApi: Send + Sync + 'static {
    /// A device connected. Returns the sessions it displaced (already
    /// removed and announced offline): the caller closes them.
    async fn session_opened(&self, session: SessionInfo) -> Result<Vec<SessionInfo>>;

    /// A device's connection ended: `Offline` (closed, dropped, dead) or
    /// `LoggedOut`. A session that was kicked or expired is ignored.
    async fn session_closed(&self, session: &SessionInfo, status: SessionStatus) -> Result<()>;

    /// Keeps the gateway's sessions alive for another lease period.
    async fn renew_lease(&self, gateway: &str) -> Result<()>;

    /// P1: subscribe for `expiry_secs`; returns the targets' presence.
    async fn subscribe(&self, subscriber: &UserId, targets: Vec<UserId>, expiry_secs: u64) -> Result<Vec<Presence>>;

    /// P5
    async fn unsubscribe(&self, subscriber: &UserId, targets: Vec<UserId>) -> Result<()>;

    /// P3: set the custom description; returns the new presence.
    async fn publish(&self, user: &UserId, description: String) -> Result<Presence>;

    /// P6: `page_num` from 0.
    async fn subscriptions(&self, subscriber: &UserId, page_num: u32, page_size: u32) -> Result<SubscriptionPage>;

    /// P7
    async fn query(&self, users: Vec<UserId>) -> Result<Vec<Presence>>;
}

/// Per-call deadline of [`RemotePresence`] unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

// ---- server ----

/// Serves a `PresenceApi` as `natter.v1.PresenceRole`. Requests are decoded
/// and validated before the API sees them; bad input is a BAD_REQUEST
/// naming the field.
pub struct PresenceRoleServer {
    api: Arc<dyn PresenceApi>,
}

impl PresenceRoleServer {
    pub fn new(api: Arc<dyn PresenceApi>) -> Self {
        Self { api }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> GrpcServer<Self> {
        GrpcServer::new(self)
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl PresenceRole for PresenceRoleServer {
    async fn session_opened(&self, request: Request<v1::SessionInfo>) -> Reply<v1::SessionList> {
        let session = field(wire::session_info(request.into_inner(), "session"))?;
        reply(self.api.session_opened(session).await)
    }

    async fn session_closed(&self, request: Request<v1::RoleSessionClosedRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let session = req.session.ok_or_else(|| status_from_error(&Error::bad_request("session", "is required")))?;
        let session = field(wire::session_info(session, "session"))?;
        let status = field(wire::closed_status(req.status))?;
        reply(self.api.session_closed(&session, status).await)
    }

    async fn renew_lease(&self, request: Request<v1::RoleRenewLeaseRequest>) -> Reply<v1::Empty> {
        let gateway = request.into_inner().gateway;
        if gateway.is_empty() {
            return Err(status_from_error(&Error::bad_request("gateway", "must not be empty")));
        }
        reply(self.api.renew_lease(&gateway).await)
    }

    async fn subscribe(&self, request: Request<v1::RoleSubscribeRequest>) -> Reply<v1::PresenceList> {
        let req = request.into_inner();
        let subscriber = field(wire::user(&req.subscriber, "subscriber"))?;
        let targets = field(wire::users(&req.targets, "targets"))?;
        reply(self.api.subscribe(&subscriber, targets, req.expiry_secs).await)
    }

    async fn unsubscribe(&self, request: Request<v1::RoleUnsubscribeRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let subscriber = field(wire::user(&req.subscriber, "subscriber"))?;
        let targets = field(wire::users(&req.targets, "targets"))?;
        reply(self.api.unsubscribe(&subscriber, targets).await)
    }

    async fn publish(&self, request: Request<v1::RolePublishRequest>) -> Reply<v1::PresenceStatus> {
        let req = request.into_inner();
        let user = field(wire::user(&req.user_id, "user_id"))?;
        reply(self.api.publish(&user, req.description).await)
    }

    async fn subscriptions(&self, request: Request<v1::RoleSubscriptionsRequest>) -> Reply<v1::SubscriptionPage> {
        let req = request.into_inner();
        let subscriber = field(wire::user(&req.subscriber, "subscriber"))?;
        reply(self.api.subscriptions(&subscriber, req.page_num, req.page_size).await)
    }

    async fn query(&self, request: Request<v1::RoleQueryRequest>) -> Reply<v1::PresenceList> {
        let users = field(wire::users(&request.into_inner().user_ids, "user_ids"))?;
        reply(self.api.query(users).await)
    }
}

// ---- client ----

/// `PresenceApi` over a gRPC channel to a presence role. Cheap to clone
/// (the channel is shared); a lazy channel connects on first use and
/// reconnects by itself, so a gateway may start before the role. Every call
/// has a deadline; one that passes is UNAVAILABLE.
#[derive(Clone)]
pub struct RemotePresence {
    inner: RoleClient<PresenceRoleClient<Channel>>,
}

impl RemotePresence {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self { inner: RoleClient::new(PresenceRoleClient::new(channel), "presence", timeout) }
    }

    /// A client for the role at `uri` (e.g. `http://presence:7001`) that
    /// connects on first use.
    pub fn connect_lazy(uri: &str, timeout: Duration) -> Result<Self> {
        Ok(Self::new(lazy_channel(uri, timeout, "presence_role")?, timeout))
    }

    /// Sends the cluster's API key with every call (the role requires it).
    pub fn with_api_key(self, api_key: &str) -> Result<Self> {
        Ok(Self { inner: self.inner.with_api_key(api_key)? })
    }
}

#[async_trait]
impl PresenceApi for RemotePresence {
    async fn session_opened(&self, session: SessionInfo) -> Result<Vec<SessionInfo>> {
        let req = v1::SessionInfo::from(&session);
        decode(self.inner.call(req, |mut c, r| async move { c.session_opened(r).await }).await?)
    }

    async fn session_closed(&self, session: &SessionInfo, status: SessionStatus) -> Result<()> {
        let req = v1::RoleSessionClosedRequest {
            session: Some(session.into()),
            status: v1::SessionStatus::from(status) as i32,
        };
        self.inner.call(req, |mut c, r| async move { c.session_closed(r).await }).await.map(drop)
    }

    async fn renew_lease(&self, gateway: &str) -> Result<()> {
        let req = v1::RoleRenewLeaseRequest { gateway: gateway.to_owned() };
        self.inner.call(req, |mut c, r| async move { c.renew_lease(r).await }).await.map(drop)
    }

    async fn subscribe(&self, subscriber: &UserId, targets: Vec<UserId>, expiry_secs: u64) -> Result<Vec<Presence>> {
        let req = v1::RoleSubscribeRequest {
            subscriber: subscriber.to_string(),
            targets: user_strings(&targets),
            expiry_secs,
        };
        decode(self.inner.call(req, |mut c, r| async move { c.subscribe(r).await }).await?)
    }

    async fn unsubscribe(&self, subscriber: &UserId, targets: Vec<UserId>) -> Result<()> {
        let req = v1::RoleUnsubscribeRequest { subscriber: subscriber.to_string(), targets: user_strings(&targets) };
        self.inner.call(req, |mut c, r| async move { c.unsubscribe(r).await }).await.map(drop)
    }

    async fn publish(&self, user: &UserId, description: String) -> Result<Presence> {
        let req = v1::RolePublishRequest { user_id: user.to_string(), description };
        decode(self.inner.call(req, |mut c, r| async move { c.publish(r).await }).await?)
    }

    async fn subscriptions(&self, subscriber: &UserId, page_num: u32, page_size: u32) -> Result<SubscriptionPage> {
        let req = v1::RoleSubscriptionsRequest { subscriber: subscriber.to_string(), page_num, page_size };
        decode(self.inner.call(req, |mut c, r| async move { c.subscriptions(r).await }).await?)
    }

    async fn query(&self, users: Vec<UserId>) -> Result<Vec<Presence>> {
        let req = v1::RoleQueryRequest { user_ids: user_strings(&users) };
        decode(self.inner.call(req, |mut c, r| async move { c.query(r).await }).await?)
    }
}
