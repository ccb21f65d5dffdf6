//! The process-local [`Leases`] and the node-id claim built on any backend.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use natter_types::{Error, IdGenerator, Result};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::Leases;

/// Leases held in this process's memory: right where this process is the
/// only contender (the single-node mode). Expiry follows tokio's clock, so
/// paused-time tests drive it.
#[derive(Debug, Default)]
pub struct LocalLeases {
    /// Name → (owner, end of the lease).
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalLeases {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Leases for LocalLeases {
    async fn acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut held = self.held.lock();
        if let Some((holder, until)) = held.get(name)
            && holder != owner
            && *until > now
        {
            return Ok(false);
        }
        held.insert(name.to_owned(), (owner.to_owned(), later(now, ttl)));
        Ok(true)
    }

    async fn release(&self, name: &str, owner: &str) -> Result<()> {
        let mut held = self.held.lock();
        if held.get(name).is_some_and(|(holder, _)| holder == owner) {
            held.remove(name);
        }
        Ok(())
    }
}

/// `at + by`, capped far ahead instead of overflowing on an absurd ttl.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Lease names of node ids are this prefix and the id (`node-id/17`).
pub const NODE_ID_LEASE_PREFIX: &str = "node-id/";

/// Leases one node id (`0..=IdGenerator::MAX_NODE`) for `owner` for `ttl`,
/// so no two live processes make ids with the same node bits. The caller
/// keeps it by renewing `node-id/<n>` with [`Leases::acquire`] well within
/// `ttl`. One conditional write per id tried; the search starts at a random
/// id, so processes starting together rarely try the same ones.
pub async fn claim_node_id(leases: &dyn Leases, owner: &str, ttl: Duration) -> Result<u16> {
    let count = u32::from(IdGenerator::MAX_NODE) + 1;
    let start = random_below(owner, count);
    for i in 0..count {
        let node = (start + i) % count;
        if leases.acquire(&format!("{NODE_ID_LEASE_PREFIX}{node}"), owner, ttl).await? {
            tracing::info!(node, owner = %owner, "node id claimed");
            return Ok(node as u16);
        }
    }
    Err(Error::unavailable(format!(
        "every node id (0..={}) is leased by another process; stop one or wait for a dead one's lease to expire",
        IdGenerator::MAX_NODE
    )))
}

fn random_below(owner: &str, n: u32) -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (RandomState::new().hash_one((owner, nanos, std::process::id())) % u64::from(n)) as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_free_again_after_its_ttl() {
        let leases = LocalLeases::new();
        let ttl = Duration::from_secs(10);
        assert!(leases.acquire("l", "a", ttl).await.unwrap());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!leases.acquire("l", "b", ttl).await.unwrap(), "still a's");
        assert!(leases.acquire("l", "a", ttl).await.unwrap(), "renewed by a");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!leases.acquire("l", "b", ttl).await.unwrap(), "the renewal counts from its own time");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(leases.acquire("l", "b", ttl).await.unwrap(), "expired, so b takes it");
        assert!(!leases.acquire("l", "a", ttl).await.unwrap());
    }

    /// One instance stands for every process: the leases of a single node.
    async fn local_leases() -> [Arc<dyn Leases>; 2] {
        let leases: Arc<dyn Leases> = Arc::new(LocalLeases::new());
        [leases.clone(), leases]
    }

    crate::conformance_tests!(leases: local_leases);

    #[tokio::test]
    async fn node_ids_run_out() {
        let leases = LocalLeases::new();
        let ttl = Duration::from_secs(60);
        for n in 0..=IdGenerator::MAX_NODE {
            assert!(leases.acquire(&format!("node-id/{n}"), "other", ttl).await.unwrap());
        }
        let err = claim_node_id(&leases, "me", ttl).await.unwrap_err();
        assert_eq!(err.code, natter_types::ErrorCode::Unavailable);
        assert!(err.message.contains("every node id"), "{}", err.message);
        leases.release("node-id/512", "other").await.unwrap();
        assert_eq!(claim_node_id(&leases, "me", ttl).await.unwrap(), 512);
    }
}
