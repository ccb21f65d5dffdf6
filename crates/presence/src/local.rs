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
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserId, Vec<SessionInfo>>,
    /// Gateway id → lease end (ms since the epoch).
    leases: HashMap<String, i64>,
}

impl LocalSessionRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SessionRegistry for LocalSessionRegistry {
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>> {
        let mut state = self.state.lock();
        let sessions = state.users.entry(info.user.clone()).or_default();
        sessions.push(info);
        let excess = sessions.len().saturating_sub(max_sessions.max(1));
        Ok(sessions.drain(..excess).collect())
    }

    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<Option<SessionInfo>> {
        let mut state = self.state.lock();
        let Some(sessions) = state.users.get_mut(user) else { return Ok(None) };
        let removed = sessions.iter().position(|s| &s.session == session).map(|i| sessions.remove(i));
        if sessions.is_empty() {
            state.users.remove(user);
        }
        Ok(removed)
    }

    async fn sessions(&self, user: &UserId) -> Result<Vec<SessionInfo>> {
        Ok(self.state.lock().users.get(user).cloned().unwrap_or_default())
    }

    async fn renew_lease(&self, gateway: &str, until: i64) -> Result<()> {
        self.state.lock().leases.insert(gateway.to_owned(), until);
        Ok(())
    }

    async fn expire_leases(&self, now: i64) -> Result<Vec<SessionInfo>> {
        let mut state = self.state.lock();
        let dead: Vec<String> =
            state.leases.iter().filter(|(_, until)| **until < now).map(|(g, _)| g.clone()).collect();
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        for gateway in &dead {
            state.leases.remove(gateway);
        }
        let mut gone = Vec::new();
        state.users.retain(|_, sessions| {
            sessions.retain(|s| {
                let dead_gateway = dead.contains(&s.gateway);
                if dead_gateway {
                    gone.push(s.clone());
                }
                !dead_gateway
            });
            !sessions.is_empty()
        });
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn session(user: &str, id: &str, gateway: &str) -> SessionInfo {
        SessionInfo {
            user: UserId::parse(user, "user").unwrap(),
            session: SessionId(id.to_owned()),
            device: id.to_owned(),
            gateway: gateway.into(),
            platform: "Websocket".into(),
            client_addr: "127.0.0.1:1".into(),
            connected_at: 0,
        }
    }

    #[tokio::test]
    async fn oldest_session_is_kicked_past_the_limit() {
        let registry = LocalSessionRegistry::new();
        for id in ["s1", "s2"] {
            assert!(registry.register(session("alice", id, "g1"), 2).await.unwrap().is_empty());
        }
        let kicked = registry.register(session("alice", "s3", "g1"), 2).await.unwrap();
        assert_eq!(kicked, vec![session("alice", "s1", "g1")]);
        let alice = UserId::parse("alice", "user").unwrap();
        let left: Vec<_> = registry.sessions(&alice).await.unwrap().into_iter().map(|s| s.session.0).collect();
        assert_eq!(left, ["s2", "s3"]);
        assert!(registry.unregister(&alice, &SessionId("s1".into())).await.unwrap().is_none(), "already kicked");
        assert!(registry.unregister(&alice, &SessionId("s2".into())).await.unwrap().is_some());
        assert!(registry.register(session("bob", "s9", "g1"), 2).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_expired_lease_takes_its_gateways_sessions() {
        let registry = LocalSessionRegistry::new();
        registry.renew_lease("g1", 100).await.unwrap();
        registry.renew_lease("g2", 300).await.unwrap();
        registry.register(session("alice", "a1", "g1"), 4).await.unwrap();
        registry.register(session("alice", "a2", "g2"), 4).await.unwrap();
        registry.register(session("bob", "b1", "g1"), 4).await.unwrap();
        assert!(registry.expire_leases(100).await.unwrap().is_empty(), "the lease runs until its end");
        let mut gone: Vec<_> = registry.expire_leases(101).await.unwrap().into_iter().map(|s| s.session.0).collect();
        gone.sort();
        assert_eq!(gone, ["a1", "b1"]);
        let alice = UserId::parse("alice", "user").unwrap();
        assert_eq!(registry.sessions(&alice).await.unwrap().len(), 1);
        assert!(registry.expire_leases(200).await.unwrap().is_empty(), "g1 is gone, g2 still leased");
    }
}
