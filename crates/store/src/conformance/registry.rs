//! The session registry (`SessionRegistry`) and leases (`Leases`).

use super::*;

fn session_info(user: &UserId, session: &str, gateway: &str) -> SessionInfo {
    SessionInfo {
        user: user.clone(),
        session: SessionId(session.to_owned()),
        device: format!("device-{session}"),
        gateway: gateway.to_owned(),
        platform: "Android".into(),
        client_addr: "10.0.0.1:4242".into(),
        connected_at: 1_700_000_000_000,
    }
}

fn session_ids(sessions: &[SessionInfo]) -> Vec<String> {
    sessions.iter().map(|s| s.session.0.clone()).collect()
}

pub async fn registry_keeps_the_newest_sessions(registry: &dyn SessionRegistry) {
    let (alice, bob) = (user("alice"), user("bob"));
    let gw = unique("gw");
    for id in ["s1", "s2"] {
        assert!(registry.register(session_info(&alice, id, &gw), 2).await.unwrap().is_empty());
    }
    let kicked = registry.register(session_info(&alice, "s3", &gw), 2).await.unwrap();
    assert_eq!(kicked, vec![session_info(&alice, "s1", &gw)], "the oldest goes, every field kept");
    let left = registry.sessions(&alice).await.unwrap();
    assert_eq!(left, vec![session_info(&alice, "s2", &gw), session_info(&alice, "s3", &gw)], "oldest first");
    assert_eq!(registry.unregister(&alice, &SessionId("s1".into())).await.unwrap(), None, "already kicked");
    assert_eq!(
        registry.unregister(&alice, &SessionId("s2".into())).await.unwrap(),
        Some(session_info(&alice, "s2", &gw))
    );
    assert_eq!(registry.unregister(&alice, &SessionId("s2".into())).await.unwrap(), None, "only once");
    assert!(registry.register(session_info(&bob, "s9", &gw), 2).await.unwrap().is_empty(), "users are separate");
    // A limit of 0 still lets the newest session in.
    let kicked = registry.register(session_info(&alice, "s4", &gw), 0).await.unwrap();
    assert_eq!(session_ids(&kicked), ["s3"]);
    assert_eq!(session_ids(&registry.sessions(&alice).await.unwrap()), ["s4"]);
    assert_eq!(session_ids(&registry.sessions(&bob).await.unwrap()), ["s9"]);
    assert!(registry.sessions(&user("nobody")).await.unwrap().is_empty());
}

pub async fn registry_expired_leases_take_their_gateways_sessions(registry: &dyn SessionRegistry) {
    let (g1, g2) = (unique("gw"), unique("gw"));
    let mine = |sessions: Vec<SessionInfo>| -> BTreeSet<String> {
        sessions.into_iter().filter(|s| s.gateway == g1 || s.gateway == g2).map(|s| s.session.0).collect()
    };
    let (alice, bob) = (user("alice"), user("bob"));
    registry.renew_lease(&g1, 100).await.unwrap();
    registry.renew_lease(&g2, 300).await.unwrap();
    registry.register(session_info(&alice, "a1", &g1), 4).await.unwrap();
    registry.register(session_info(&alice, "a2", &g2), 4).await.unwrap();
    registry.register(session_info(&bob, "b1", &g1), 4).await.unwrap();
    assert!(mine(registry.expire_leases(100).await.unwrap()).is_empty(), "a lease runs until its end");
    assert_eq!(mine(registry.expire_leases(101).await.unwrap()), ["a1".to_owned(), "b1".to_owned()].into());
    assert_eq!(session_ids(&registry.sessions(&alice).await.unwrap()), ["a2"]);
    assert!(registry.sessions(&bob).await.unwrap().is_empty());
    assert!(mine(registry.expire_leases(200).await.unwrap()).is_empty(), "g1 is gone, g2 still leased");
    // A renewal moves the end; the gateway's sessions go with the later one.
    registry.renew_lease(&g2, 400).await.unwrap();
    assert!(mine(registry.expire_leases(350).await.unwrap()).is_empty());
    assert_eq!(mine(registry.expire_leases(401).await.unwrap()), ["a2".to_owned()].into());
    assert!(registry.sessions(&alice).await.unwrap().is_empty());
    assert!(mine(registry.expire_leases(1_000).await.unwrap()).is_empty(), "nothing is returned twice");
}

pub async fn registry_cap_holds_under_concurrent_registers(registries: &[Arc<dyn SessionRegistry>]) {
    const CAP: usize = 4;
    const N: usize = 20;
    let u = user("busy");
    let gw = unique("gw");
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let registry = registries[i % registries.len()].clone();
            let info = session_info(&u, &format!("s{i}"), &gw);
            tokio::spawn(async move { registry.register(info, CAP).await.unwrap() })
        })
        .collect();
    let mut displaced = Vec::new();
    for task in tasks {
        displaced.extend(session_ids(&task.await.unwrap()));
    }
    let unique_displaced: BTreeSet<String> = displaced.iter().cloned().collect();
    assert_eq!(unique_displaced.len(), displaced.len(), "no session displaced twice: {displaced:?}");
    assert_eq!(displaced.len(), N - CAP);
    let left: BTreeSet<String> = session_ids(&registries[0].sessions(&u).await.unwrap()).into_iter().collect();
    assert_eq!(left.len(), CAP, "the cap holds");
    assert!(left.is_disjoint(&unique_displaced));
    let all: BTreeSet<String> = (0..N).map(|i| format!("s{i}")).collect();
    assert_eq!(left.union(&unique_displaced).cloned().collect::<BTreeSet<_>>(), all, "none lost");
}

pub async fn registry_concurrent_changes_lose_and_duplicate_nothing(registries: &[Arc<dyn SessionRegistry>]) {
    const CAP: usize = 4;
    let u = user("churn");
    let gw = unique("gw");
    for i in 0..10 {
        registries[0].register(session_info(&u, &format!("old{i}"), &gw), 10).await.unwrap();
    }
    // Every old session is unregistered while ten new ones push in with a
    // lower limit: each old one leaves through exactly one of the calls.
    let mut unregisters = Vec::new();
    let mut registers = Vec::new();
    for i in 0..10 {
        let registry = registries[i % registries.len()].clone();
        let (owner, id) = (u.clone(), SessionId(format!("old{i}")));
        unregisters.push(tokio::spawn(async move { registry.unregister(&owner, &id).await.unwrap() }));
        let registry = registries[(i + 1) % registries.len()].clone();
        let info = session_info(&u, &format!("new{i}"), &gw);
        registers.push(tokio::spawn(async move { registry.register(info, CAP).await.unwrap() }));
    }
    let mut gone = Vec::new();
    for task in unregisters {
        gone.extend(task.await.unwrap().map(|s| s.session.0));
    }
    for task in registers {
        gone.extend(session_ids(&task.await.unwrap()));
    }
    let unique_gone: HashSet<&String> = gone.iter().collect();
    assert_eq!(unique_gone.len(), gone.len(), "each session leaves once: {gone:?}");
    let left = session_ids(&registries[1 % registries.len()].sessions(&u).await.unwrap());
    assert_eq!(left.len(), CAP, "old sessions are older than every new one, so four new ones stay: {left:?}");
    assert!(left.iter().all(|s| s.starts_with("new")));
    let mut everything: Vec<String> = gone.into_iter().chain(left).collect();
    everything.sort();
    let mut expected: Vec<String> = (0..10).flat_map(|i| [format!("new{i}"), format!("old{i}")]).collect();
    expected.sort();
    assert_eq!(everything, expected, "none lost");
}

/// Uses lease times near 0 (see [`EXPIRING_LEASES`]).
pub async fn registry_concurrent_expirers_return_each_session_once(registries: &[Arc<dyn SessionRegistry>]) {
    let dead: Vec<String> = (0..3).map(|_| unique("dead")).collect();
    let live = unique("live");
    let users: Vec<UserId> = (0..6).map(|_| user("u")).collect();
    let mut expected = BTreeSet::new();
    for (i, u) in users.iter().enumerate() {
        for (g, gateway) in dead.iter().enumerate() {
            let id = format!("d{i}g{g}");
            registries[0].register(session_info(u, &id, gateway), 10).await.unwrap();
            expected.insert(id);
        }
        registries[0].register(session_info(u, &format!("l{i}"), &live), 10).await.unwrap();
    }
    for gateway in &dead {
        registries[0].renew_lease(gateway, 10).await.unwrap();
    }
    registries[0].renew_lease(&live, 1_000).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let registry = registries[i % registries.len()].clone();
            tokio::spawn(async move { registry.expire_leases(20).await.unwrap() })
        })
        .collect();
    let mut returned = Vec::new();
    for task in tasks {
        returned.extend(task.await.unwrap().into_iter().filter(|s| dead.contains(&s.gateway)).map(|s| s.session.0));
    }
    let unique_returned: BTreeSet<String> = returned.iter().cloned().collect();
    assert_eq!(unique_returned.len(), returned.len(), "no session returned twice: {returned:?}");
    assert_eq!(unique_returned, expected, "every session of a dead gateway returned");
    for (i, u) in users.iter().enumerate() {
        assert_eq!(session_ids(&registries[0].sessions(u).await.unwrap()), [format!("l{i}")], "the live one stays");
    }
    let again = registries[0].expire_leases(20).await.unwrap();
    assert!(again.iter().all(|s| !dead.contains(&s.gateway)), "nothing left to expire");
}

// ----------------------------------------------------------------- leases

pub async fn leases_are_exclusive_and_renewable(leases: &dyn Leases) {
    let name = unique("lease");
    let ttl = Duration::from_secs(60);
    leases.release(&name, "a").await.unwrap();
    assert!(leases.acquire(&name, "a", ttl).await.unwrap(), "a free lease is taken");
    assert!(!leases.acquire(&name, "b", ttl).await.unwrap(), "a held lease is exclusive");
    assert!(leases.acquire(&name, "a", ttl).await.unwrap(), "the holder renews");
    leases.release(&name, "b").await.unwrap();
    assert!(!leases.acquire(&name, "b", ttl).await.unwrap(), "only the holder releases");
    leases.release(&name, "a").await.unwrap();
    assert!(leases.acquire(&name, "b", ttl).await.unwrap(), "a released lease is free");
    assert!(!leases.acquire(&name, "a", ttl).await.unwrap());
    let other = unique("lease");
    assert!(leases.acquire(&other, "a", ttl).await.unwrap(), "names are independent");
    leases.release(&name, "b").await.unwrap();
    leases.release(&other, "a").await.unwrap();
}

/// Claims node ids concurrently through `leases` (instances standing for
/// processes), then releases them.
pub async fn claim_node_id_gives_distinct_ids(leases: &[Arc<dyn Leases>]) {
    const CLAIMERS: usize = 8;
    let ttl = Duration::from_secs(60);
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|i| {
            let leases = leases[i % leases.len()].clone();
            let owner = unique("node");
            tokio::spawn(async move {
                let id = claim_node_id(leases.as_ref(), &owner, ttl).await.unwrap();
                (owner, id)
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.push(task.await.unwrap());
    }
    let ids: BTreeSet<u16> = claimed.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), CLAIMERS, "distinct ids: {claimed:?}");
    assert!(ids.iter().all(|id| *id <= IdGenerator::MAX_NODE));
    for (owner, id) in &claimed {
        let name = format!("{}{id}", crate::NODE_ID_LEASE_PREFIX);
        assert!(leases[0].acquire(&name, owner, ttl).await.unwrap(), "the claimer renews its id");
        assert!(!leases[0].acquire(&name, "someone else", ttl).await.unwrap());
        leases[0].release(&name, owner).await.unwrap();
    }
}
