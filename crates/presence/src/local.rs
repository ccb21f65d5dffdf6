//! Session registry of the single-node mode: the process that holds every
//! socket also holds the registry, so memory is the truth here (a restart
//! drops every session along with the sockets).

use std::collections::HashMap;

use async_trait::async_trait;
use natter_types::{Result, SessionId, UserId};
use parking_lot::Mutex;

use crate::{SessionInfo, SessionRegistry};

#[derive(Debug, Default)]
pub struct LocalSessionRegistry {
    users: Mutex<HashMap<UserId, Vec<SessionInfo>>>,
}

impl LocalSessionRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SessionRegistry for LocalSessionRegistry {
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>> {
        let mut users = self.users.lock();
        let sessions = users.entry(info.user.clone()).or_default();
        sessions.push(info);
        let excess = sessions.len().saturating_sub(max_sessions.max(1));
        Ok(sessions.drain(..excess).collect())
    }

    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<bool> {
        let mut users = self.users.lock();
        let Some(sessions) = users.get_mut(user) else {
            return Ok(false);
        };
        let before = sessions.len();
        sessions.retain(|s| &s.session != session);
        let removed = sessions.len() < before;
        if sessions.is_empty() {
            users.remove(user);
        }
        Ok(removed)
    }

    async fn sessions(&self, user: &UserId) -> Result<Vec<SessionInfo>> {
        Ok(self.users.lock().get(user).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn session(user: &str, id: &str) -> SessionInfo {
        SessionInfo {
            user: UserId::parse(user, "user").unwrap(),
            session: SessionId(id.to_owned()),
            gateway: "g1".into(),
            platform: "Websocket".into(),
            client_addr: "127.0.0.1:1".into(),
            connected_at: 0,
        }
    }

    #[tokio::test]
    async fn oldest_session_is_kicked_past_the_limit() {
        let registry = LocalSessionRegistry::new();
        for id in ["s1", "s2"] {
            assert!(
                registry
                    .register(session("alice", id), 2)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        let kicked = registry.register(session("alice", "s3"), 2).await.unwrap();
        assert_eq!(kicked, vec![session("alice", "s1")]);
        let alice = UserId::parse("alice", "user").unwrap();
        let left: Vec<_> = registry
            .sessions(&alice)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.session.0)
            .collect();
        assert_eq!(left, ["s2", "s3"]);
        assert!(
            !registry
                .unregister(&alice, &SessionId("s1".into()))
                .await
                .unwrap(),
            "already kicked"
        );
        assert!(
            registry
                .unregister(&alice, &SessionId("s2".into()))
                .await
                .unwrap()
        );
        // Another user's sessions are separate.
        assert!(
            registry
                .register(session("bob", "s9"), 2)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
