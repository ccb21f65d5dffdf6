use crate::{SessionId, UserId};

/// A session status change, as the presence webhook names it (seed 001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    Online,
    /// Disconnected, kicked by a newer device, or dead (missed heartbeats).
    Offline,
    LoggedOut,
}

impl SessionStatus {
    /// The webhook's code: "0" online, "1" offline, "2" logged out.
    pub fn code(self) -> &'static str {
        match self {
            Self::Online => "0",
            Self::Offline => "1",
            Self::LoggedOut => "2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub device: String,
    pub platform: String,
    pub online: bool,
}

/// A user's presence: their online devices plus a custom description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user: UserId,
    pub devices: Vec<DeviceStatus>,
    pub description: String,
    /// Last change, ms since the epoch.
    pub time: i64,
}

impl Presence {
    pub fn online(&self) -> bool {
        self.devices.iter().any(|d| d.online)
    }
}

/// One presence subscription of a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub target: UserId,
    /// ms since the epoch.
    pub expires_at: i64,
}

/// One entry of the presence webhook's payload (seed 001).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub user: UserId,
    pub status: SessionStatus,
    /// iOS, Android, Websocket, PC, MiniProgram.
    pub os: String,
    /// ms since the epoch.
    pub time: i64,
    /// `ip:port` of the client.
    pub client_ip: String,
    pub session_id: String,
}

/// One connected device, as the session registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: UserId,
    pub session: SessionId,
    /// The client's stable device id; a reconnect of the same device within
    /// the flap window is not announced. Defaults to the session id.
    pub device: String,
    /// Id of the gateway process holding the socket (where to send a kick).
    pub gateway: String,
    /// iOS, Android, Websocket, PC, MiniProgram (as the webhook names them).
    pub platform: String,
    /// `ip:port` of the client as the gateway saw it.
    pub client_addr: String,
    pub connected_at: i64,
}

/// A page of a user's subscriptions (P6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionPage {
    pub subscriptions: Vec<Subscription>,
    pub total: usize,
}
