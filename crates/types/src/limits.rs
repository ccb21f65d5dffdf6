use serde::{Deserialize, Serialize};

/// Every product limit, configurable (the `[limits]` table of the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes of a message body plus its ext key/values.
    pub max_body_bytes: usize,
    /// Bytes of one WebSocket frame (the body plus envelope room).
    pub max_frame_bytes: usize,
    pub max_client_msg_id_len: usize,
    pub max_ext_entries: usize,
    pub max_ext_key_len: usize,
    /// Concurrent sessions (devices) per user; the oldest is kicked past it.
    pub max_sessions_per_user: usize,
    pub max_group_members: u32,
    pub max_group_name_len: usize,
    pub max_group_description_len: usize,
    /// User ids in one add/remove-members request.
    pub max_members_per_request: usize,
    /// Sustained requests per second per connection.
    pub requests_per_second: u32,
    /// Requests a connection may send in a burst above the sustained rate.
    pub request_burst: u32,
    /// Users in one presence subscribe / query call (P1, P7).
    pub max_presence_users_per_request: usize,
    /// Longest presence subscription, seconds (P1: 30 days).
    pub max_presence_expiry_secs: u64,
    /// Presence subscriptions per user; past it the shortest-remaining one
    /// is evicted (P2).
    pub max_presence_subscriptions: usize,
    /// Bytes of a custom presence description (P3).
    pub max_presence_description_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_frame_bytes: 80 * 1024,
            max_client_msg_id_len: 64,
            max_ext_entries: 32,
            max_ext_key_len: 64,
            max_sessions_per_user: 4,
            max_group_members: 3000,
            max_group_name_len: 128,
            max_group_description_len: 512,
            max_members_per_request: 500,
            requests_per_second: 50,
            request_burst: 100,
            max_presence_users_per_request: 100,
            max_presence_expiry_secs: 30 * 24 * 3600,
            max_presence_subscriptions: 3000,
            max_presence_description_bytes: 256,
        }
    }
}

impl Limits {
    /// Checks the limits are usable; errors name the setting.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("limits.max_body_bytes", self.max_body_bytes),
            ("limits.max_frame_bytes", self.max_frame_bytes),
            ("limits.max_client_msg_id_len", self.max_client_msg_id_len),
            ("limits.max_sessions_per_user", self.max_sessions_per_user),
            ("limits.max_group_members", self.max_group_members as usize),
            ("limits.max_members_per_request", self.max_members_per_request),
            ("limits.requests_per_second", self.requests_per_second as usize),
            ("limits.request_burst", self.request_burst as usize),
            ("limits.max_presence_users_per_request", self.max_presence_users_per_request),
            ("limits.max_presence_expiry_secs", self.max_presence_expiry_secs as usize),
            ("limits.max_presence_subscriptions", self.max_presence_subscriptions),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if self.max_frame_bytes < self.max_body_bytes + 1024 {
            return Err(format!(
                "limits.max_frame_bytes ({}) must be at least limits.max_body_bytes + 1024 ({})",
                self.max_frame_bytes,
                self.max_body_bytes + 1024
            ));
        }
        Ok(())
    }
}
