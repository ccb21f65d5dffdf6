//! Session registry of the single-node mode: the process that holds every
//! socket also holds the registry, so memory is the truth here (a restart
//! drops every session along with the sockets). With a journal, it also
//! records which sessions are open, so that a start after a crash can
//! announce them offline ([`crate::PresenceService::announce_lost`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use natter_store::SessionJournal;
use natter_types::{Result, SessionId, UserId};
use parking_lot::Mutex;

use crate::{SessionInfo, SessionRegistry};

#[derive(Default)]
pub struct LocalSessionRegistry {
    state: Mutex<State>,
    journal: Option<Arc<dyn SessionJournal>>,
}

impl std::fmt::Debug for LocalSessionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSessionRegistry").field("journal", &self.journal.is_some()).finish_non_exhaustive()
    }
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

    /// A registry that records open sessions in `journal` (durably before
    /// `register` returns, so before the session is announced online).
    pub fn with_journal(journal: Arc<dyn SessionJournal>) -> Self {
        Self { journal: Some(journal), ..Self::default() }
    }

    /// Records sessions gone from memory as closed in the journal. A
    /// failure only logs: the registry has changed already, and a close the
    /// journal misses costs one more offline announcement after a crash.
    async fn closed(&self, sessions: &[SessionInfo]) {
        if let Some(journal) = &self.journal
            && !sessions.is_empty()
            && let Err(e) = journal.closed(sessions).await
        {
            tracing::warn!(error = %e, sessions = sessions.len(), "recording closed sessions failed");
        }
    }
}

#[async_trait]
impl SessionRegistry for LocalSessionRegistry {
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>> {
        // Journal first: a session that is announced online is on disk.
        if let Some(journal) = &self.journal {
            journal.opened(&info).await?;
        }
        let kicked: Vec<SessionInfo> = {
            let mut state = self.state.lock();
            let sessions = state.users.entry(info.user.clone()).or_default();
            sessions.push(info);
            let excess = sessions.len().saturating_sub(max_sessions.max(1));
            sessions.drain(..excess).collect()
        };
        self.closed(&kicked).await;
        Ok(kicked)
    }

    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<Option<SessionInfo>> {
        let removed = {
            let mut state = self.state.lock();
            let Some(sessions) = state.users.get_mut(user) else { return Ok(None) };
            let removed = sessions.iter().position(|s| &s.session == session).map(|i| sessions.remove(i));
            if sessions.is_empty() {
                state.users.remove(user);
            }
            removed
        };
        self.closed(removed.as_slice()).await;
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
        let gone = {
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
            gone
        };
        self.closed(&gone).await;
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

    /// With a journal, the registry records every session it holds as open
    /// and every one it lets go (unregistered, kicked, expired) as closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_journal_holds_the_open_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let storage = natter_runtime::Tasks::new();
        let store =
            Arc::new(natter_store::embedded::EmbeddedStore::open(dir.path(), Default::default(), &storage).unwrap());
        let registry = LocalSessionRegistry::with_journal(store.clone());
        let open =
            || async { store.open_sessions().await.unwrap().into_iter().map(|s| s.session.0).collect::<Vec<_>>() };
        registry.renew_lease("g1", 100).await.unwrap();
        registry.register(session("alice", "a1", "g2"), 1).await.unwrap();
        assert_eq!(open().await, ["a1"]);
        let kicked = registry.register(session("alice", "a2", "g2"), 1).await.unwrap();
        assert_eq!(kicked.len(), 1);
        assert_eq!(open().await, ["a2"], "the kicked session is closed");
        registry.register(session("bob", "b1", "g1"), 1).await.unwrap();
        let alice = UserId::parse("alice", "user").unwrap();
        registry.unregister(&alice, &SessionId("a2".into())).await.unwrap();
        assert_eq!(open().await, ["b1"], "the unregistered session is closed");
        assert_eq!(registry.expire_leases(101).await.unwrap().len(), 1);
        assert!(open().await.is_empty(), "the expired gateway's sessions are closed");
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
