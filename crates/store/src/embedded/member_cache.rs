//! Group member lists kept in memory: every group send needs its group's
//! members, and reading them is a prefix scan of `members` that parses one
//! user id per member (a thousand for a large group, on every send).
//!
//! Coherent with the keyspace because every batch that changes a group's
//! members goes through [`MemberCache::invalidate`] once it is visible to
//! readers, and a list read from the keyspace is kept only if no
//! invalidation happened while it was read (see [`MemberCache::load`]), so a
//! reader never caches a list older than a committed change. The
//! invalidation runs in the writer's job right after the commit, not after
//! the caller's await, which may be abandoned. The conformance suite reads
//! the members before and after every kind of change.

use std::sync::Arc;

use natter_types::{GroupId, Result, UserId};
use parking_lot::Mutex;

/// Member ids held at most, over all cached groups (~50 bytes each).
/// quick_cache splits it over its shards (up to 32, so 8 Ki ids each at
/// least): a group larger than a shard's share is not kept, only read.
const CAPACITY: u64 = 256 * 1024;

#[derive(Clone)]
struct ByMembers;

impl quick_cache::Weighter<GroupId, Arc<[UserId]>> for ByMembers {
    fn weight(&self, _: &GroupId, members: &Arc<[UserId]>) -> u64 {
        // An empty group still takes a slot.
        members.len() as u64 + 1
    }
}

pub(super) struct MemberCache {
    groups: quick_cache::sync::Cache<GroupId, Arc<[UserId]>, ByMembers>,
    /// Bumped by every invalidation; a load that saw another value may have
    /// read the keyspace before the change and must not be kept.
    generation: Mutex<u64>,
}

impl MemberCache {
    pub(super) fn new() -> Self {
        Self { groups: quick_cache::sync::Cache::with_weighter(1024, CAPACITY, ByMembers), generation: Mutex::new(0) }
    }

    /// The group's member ids: cached, or read by `read` and cached.
    pub(super) fn load(&self, id: &GroupId, read: impl FnOnce() -> Result<Vec<UserId>>) -> Result<Arc<[UserId]>> {
        if let Some(members) = self.groups.get(id) {
            return Ok(members);
        }
        let seen = *self.generation.lock();
        let members: Arc<[UserId]> = read()?.into();
        let generation = self.generation.lock();
        if *generation == seen {
            self.groups.insert(id.clone(), members.clone());
        }
        Ok(members)
    }

    /// The group's member ids if cached, without reading the keyspace.
    pub(super) fn cached(&self, id: &GroupId) -> Option<Arc<[UserId]>> {
        self.groups.get(id)
    }

    /// Forgets the group's members. Called after a batch that changes them
    /// is committed (readers see it from then on), whether or not it was.
    pub(super) fn invalidate(&self, id: &GroupId) {
        let mut generation = self.generation.lock();
        *generation += 1;
        self.groups.remove(id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ids(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|n| UserId::parse(n, "member").unwrap()).collect()
    }

    #[test]
    fn a_load_that_raced_an_invalidation_is_not_kept() {
        let cache = MemberCache::new();
        let group = GroupId::parse("7", "group").unwrap();
        // The change commits and invalidates while the old list is being read.
        let stale = cache.load(&group, || {
            cache.invalidate(&group);
            Ok(ids(&["alice"]))
        });
        assert_eq!(&*stale.unwrap(), &ids(&["alice"])[..], "the caller still gets what it read");
        let fresh = cache.load(&group, || Ok(ids(&["alice", "bob"]))).unwrap();
        assert_eq!(&*fresh, &ids(&["alice", "bob"])[..], "read again, not the raced list");
        let cached = cache.load(&group, || panic!("cached: not read again")).unwrap();
        assert_eq!(cached, fresh);
        cache.invalidate(&group);
        let after = cache.load(&group, || Ok(ids(&["bob"]))).unwrap();
        assert_eq!(&*after, &ids(&["bob"])[..]);
    }
}
