//! The presence service. So far it holds the session registry: which devices
//! of a user are connected where, and the per-user device limit. Gateways
//! report every connect and disconnect here; the registry answers which older
//! sessions must be kicked.

pub mod local;

use async_trait::async_trait;
use natter_types::{Result, SessionId, UserId};

/// One connected device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: UserId,
    pub session: SessionId,
    /// Id of the gateway process holding the socket (where to send a kick).
    pub gateway: String,
    /// iOS, Android, Websocket, PC, MiniProgram (as the webhook names them).
    pub platform: String,
    /// `ip:port` of the client as the gateway saw it.
    pub client_addr: String,
    pub connected_at: i64,
}

#[async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    /// Records a new session. If the user then has more than `max_sessions`,
    /// the oldest ones are removed and returned: the caller kicks them.
    /// Concurrent calls for one user are serialised, so the limit holds.
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>>;

    /// Removes a session; false if it was not registered (e.g. already kicked).
    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<bool>;

    /// The user's sessions, oldest first.
    async fn sessions(&self, user: &UserId) -> Result<Vec<SessionInfo>>;
}
