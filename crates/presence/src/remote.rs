//! `PresenceApi` over gRPC (`natter.v1.PresenceRole`, proto/natter/v1/internal.proto).
//!
//! [`PresenceRoleServer`] serves any `PresenceApi` (the local
//! [`PresenceService`](crate::PresenceService) in the presence role);
//! [`RemotePresence`] is the `PresenceApi` a gateway holds in the
//! distributed mode. Errors cross the wire unchanged (code, field, message).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::remote::{RoleClient, decode, user_strings};
use natter_proto::v1::presence_role_client::PresenceRoleClient;
use natter_proto::v1::presence_role_server::{PresenceRole, PresenceRoleServer as GrpcServer};
use natter_proto::{status_from_error, v1};
use natter_types::{Error, Presence, Result, SessionId, SessionStatus, Subscription, UserId};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::{PresenceApi, SessionInfo, SubscriptionPage};

/// Per-call deadline of [`RemotePresence`] unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Decodes a session; errors are BAD_REQUEST naming `field`.
fn session_info(s: v1::SessionInfo, field: &str) -> Result<SessionInfo> {
    if s.session_id.is_empty() {
        return Err(Error::bad_request(&format!("{field}.session_id"), "must not be empty"));
    }
    Ok(SessionInfo {
        user: UserId::parse(&s.user_id, &format!("{field}.user_id"))?,
        session: SessionId(s.session_id),
        device: s.device,
        gateway: s.gateway,
        platform: s.platform,
        client_addr: s.client_addr,
        connected_at: s.connected_at,
    })
}

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

fn status(e: Error) -> Status {
    status_from_error(&e)
}

fn user(raw: &str, field: &str) -> std::result::Result<UserId, Status> {
    UserId::parse(raw, field).map_err(status)
}

fn users(raw: &[String], field: &str) -> std::result::Result<Vec<UserId>, Status> {
    raw.iter().map(|u| UserId::parse(u, field)).collect::<Result<_>>().map_err(status)
}

fn presence_list(presences: &[Presence]) -> v1::PresenceList {
    v1::PresenceList { presences: presences.iter().map(Into::into).collect() }
}

#[tonic::async_trait]
impl PresenceRole for PresenceRoleServer {
    async fn session_opened(&self, request: Request<v1::SessionInfo>) -> Reply<v1::SessionList> {
        let session = session_info(request.into_inner(), "session").map_err(status)?;
        let kicked = self.api.session_opened(session).await.map_err(status)?;
        Ok(Response::new(v1::SessionList { sessions: kicked.iter().map(v1::SessionInfo::from).collect() }))
    }

    async fn session_closed(&self, request: Request<v1::RoleSessionClosedRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let wire = req.session.ok_or_else(|| status(Error::bad_request("session", "is required")))?;
        let session = session_info(wire, "session").map_err(status)?;
        let closed = natter_proto::session_status(req.status)
            .ok_or_else(|| status(Error::bad_request("status", "must be ONLINE, OFFLINE or LOGGED_OUT")))?;
        self.api.session_closed(&session, closed).await.map_err(status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn renew_lease(&self, request: Request<v1::RoleRenewLeaseRequest>) -> Reply<v1::Empty> {
        let gateway = request.into_inner().gateway;
        if gateway.is_empty() {
            return Err(status(Error::bad_request("gateway", "must not be empty")));
        }
        self.api.renew_lease(&gateway).await.map_err(status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn subscribe(&self, request: Request<v1::RoleSubscribeRequest>) -> Reply<v1::PresenceList> {
        let req = request.into_inner();
        let (subscriber, targets) = (user(&req.subscriber, "subscriber")?, users(&req.targets, "targets")?);
        let presences = self.api.subscribe(&subscriber, targets, req.expiry_secs).await.map_err(status)?;
        Ok(Response::new(presence_list(&presences)))
    }

    async fn unsubscribe(&self, request: Request<v1::RoleUnsubscribeRequest>) -> Reply<v1::Empty> {
        let req = request.into_inner();
        let (subscriber, targets) = (user(&req.subscriber, "subscriber")?, users(&req.targets, "targets")?);
        self.api.unsubscribe(&subscriber, targets).await.map_err(status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn publish(&self, request: Request<v1::RolePublishRequest>) -> Reply<v1::PresenceStatus> {
        let req = request.into_inner();
        let presence = self.api.publish(&user(&req.user_id, "user_id")?, req.description).await.map_err(status)?;
        Ok(Response::new((&presence).into()))
    }

    async fn subscriptions(&self, request: Request<v1::RoleSubscriptionsRequest>) -> Reply<v1::SubscriptionPage> {
        let req = request.into_inner();
        let subscriber = user(&req.subscriber, "subscriber")?;
        let page = self.api.subscriptions(&subscriber, req.page_num, req.page_size).await.map_err(status)?;
        Ok(Response::new(v1::SubscriptionPage {
            subscriptions: page.subscriptions.iter().map(Into::into).collect(),
            total: u32::try_from(page.total).unwrap_or(u32::MAX),
        }))
    }

    async fn query(&self, request: Request<v1::RoleQueryRequest>) -> Reply<v1::PresenceList> {
        let users = users(&request.into_inner().user_ids, "user_ids")?;
        let presences = self.api.query(users).await.map_err(status)?;
        Ok(Response::new(presence_list(&presences)))
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
        Ok(Self::new(natter_proto::remote::lazy_channel(uri, timeout, "presence_role")?, timeout))
    }

    /// Sends the cluster's API key with every call (the role requires it).
    pub fn with_api_key(self, api_key: &str) -> Result<Self> {
        Ok(Self { inner: self.inner.with_api_key(api_key)? })
    }
}

fn presences(list: v1::PresenceList) -> Result<Vec<Presence>> {
    list.presences.into_iter().map(decode::<Presence, _>).collect()
}

#[async_trait]
impl PresenceApi for RemotePresence {
    async fn session_opened(&self, session: SessionInfo) -> Result<Vec<SessionInfo>> {
        let list = self
            .inner
            .call(v1::SessionInfo::from(&session), |mut c, r| async move { c.session_opened(r).await })
            .await?;
        // A malformed answer is the role's fault, not the caller's.
        list.sessions
            .into_iter()
            .map(|s| session_info(s, "sessions").map_err(|e| Error::internal(format!("decode: {}", e.message))))
            .collect()
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
        presences(self.inner.call(req, |mut c, r| async move { c.subscribe(r).await }).await?)
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
        let page = self.inner.call(req, |mut c, r| async move { c.subscriptions(r).await }).await?;
        Ok(SubscriptionPage {
            subscriptions: page.subscriptions.into_iter().map(decode::<Subscription, _>).collect::<Result<Vec<_>>>()?,
            total: page.total as usize,
        })
    }

    async fn query(&self, users: Vec<UserId>) -> Result<Vec<Presence>> {
        let req = v1::RoleQueryRequest { user_ids: user_strings(&users) };
        presences(self.inner.call(req, |mut c, r| async move { c.query(r).await }).await?)
    }
}
