//! Several presence instances on one registry and store (standing for
//! presence processes): only the holder of the leader lease runs the
//! background jobs, and another takes over when it stops or cannot renew.
//! Paused tokio time; the instances share one `LocalLeases`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use natter_api::PresenceApi;
use natter_bus::local::LocalBus;
use natter_presence::local::LocalSessionRegistry;
use natter_presence::webhook::WebhookOptions;
use natter_presence::{LeaderLease, PresenceDeps, PresenceOptions, PresenceService, SessionInfo, SessionRegistry};
use natter_runtime::Tasks;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_store::{Leases, LocalLeases, Stores, WebhookOutbox};
use natter_types::{Error, Limits, Result, SessionId, UserId, WebhookEvent};

const LEASE_MS: u64 = 3_000;

fn user(name: &str) -> UserId {
    UserId::parse(name, "user").unwrap()
}

fn session(name: &str, id: &str, gateway: &str) -> SessionInfo {
    SessionInfo {
        user: user(name),
        session: SessionId(id.into()),
        device: id.into(),
        gateway: gateway.into(),
        platform: "iOS".into(),
        client_addr: "127.0.0.1:5555".into(),
        connected_at: 0,
    }
}

/// The shared registry, counting this instance's expiry runs.
struct CountingRegistry {
    inner: Arc<LocalSessionRegistry>,
    expiries: AtomicUsize,
}

#[async_trait]
impl SessionRegistry for CountingRegistry {
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>> {
        self.inner.register(info, max_sessions).await
    }

    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<Option<SessionInfo>> {
        self.inner.unregister(user, session).await
    }

    async fn sessions(&self, user: &UserId) -> Result<Vec<SessionInfo>> {
        self.inner.sessions(user).await
    }

    async fn renew_lease(&self, gateway: &str, until: i64) -> Result<()> {
        self.inner.renew_lease(gateway, until).await
    }

    async fn expire_leases(&self, now: i64) -> Result<Vec<SessionInfo>> {
        self.expiries.fetch_add(1, Ordering::Relaxed);
        self.inner.expire_leases(now).await
    }
}

/// The shared outbox, counting this instance's reads (only webhook workers
/// read it).
struct CountingOutbox {
    inner: Arc<dyn WebhookOutbox>,
    peeks: AtomicUsize,
}

#[async_trait]
impl WebhookOutbox for CountingOutbox {
    async fn push(&self, receiver: &str, events: &[WebhookEvent]) -> Result<()> {
        self.inner.push(receiver, events).await
    }

    async fn peek(&self, receiver: &str, limit: usize) -> Result<Vec<(u64, WebhookEvent)>> {
        self.peeks.fetch_add(1, Ordering::Relaxed);
        self.inner.peek(receiver, limit).await
    }

    async fn remove(&self, receiver: &str, up_to: u64) -> Result<()> {
        self.inner.remove(receiver, up_to).await
    }
}

/// The shared leases, unreachable from this instance while `down`.
struct FlakyLeases {
    inner: Arc<LocalLeases>,
    down: AtomicBool,
}

#[async_trait]
impl Leases for FlakyLeases {
    async fn acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        if self.down.load(Ordering::Relaxed) {
            return Err(Error::unavailable("lease store unreachable"));
        }
        self.inner.acquire(name, owner, ttl).await
    }

    async fn release(&self, name: &str, owner: &str) -> Result<()> {
        if self.down.load(Ordering::Relaxed) {
            return Err(Error::unavailable("lease store unreachable"));
        }
        self.inner.release(name, owner).await
    }
}

struct Shared {
    stores: Stores,
    registry: Arc<LocalSessionRegistry>,
    leases: Arc<LocalLeases>,
    bus: LocalBus,
    _dir: tempfile::TempDir,
    _storage: natter_runtime::Tasks,
}

fn shared() -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let storage = natter_runtime::Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
    Shared {
        stores,
        registry: Arc::new(LocalSessionRegistry::new()),
        leases: Arc::new(LocalLeases::new()),
        bus: LocalBus::new(),
        _dir: dir,
        _storage: storage,
    }
}

struct Node {
    service: Arc<PresenceService>,
    registry: Arc<CountingRegistry>,
    outbox: Arc<CountingOutbox>,
    leases: Arc<FlakyLeases>,
    tasks: Tasks,
}

impl Node {
    fn expiries(&self) -> usize {
        self.registry.expiries.load(Ordering::Relaxed)
    }

    fn peeks(&self) -> usize {
        self.outbox.peeks.load(Ordering::Relaxed)
    }

    async fn stop(&self) {
        self.tasks.stop(Duration::from_secs(60)).await.unwrap();
    }
}

async fn node(shared: &Shared, owner: &str, webhook: bool) -> Node {
    let registry = Arc::new(CountingRegistry { inner: shared.registry.clone(), expiries: AtomicUsize::new(0) });
    let outbox = Arc::new(CountingOutbox { inner: shared.stores.outbox.clone(), peeks: AtomicUsize::new(0) });
    let leases = Arc::new(FlakyLeases { inner: shared.leases.clone(), down: AtomicBool::new(false) });
    let webhook = if webhook {
        // Nothing is queued in these tests, so nothing is ever posted.
        WebhookOptions {
            urls: vec!["http://127.0.0.1:9/hook".into()],
            app_secret: "secret".into(),
            ..WebhookOptions::default()
        }
    } else {
        WebhookOptions::default()
    };
    let options = PresenceOptions { lease_ms: LEASE_MS, flap_window_ms: 0, webhook };
    let tasks = Tasks::new();
    let deps = PresenceDeps {
        registry: registry.clone(),
        store: shared.stores.presence.clone(),
        outbox: outbox.clone(),
        bus: Arc::new(shared.bus.clone()),
        leader: Some(LeaderLease { leases: leases.clone(), owner: owner.into() }),
    };
    let service = PresenceService::start(options, Limits::default(), deps, &tasks).await.unwrap();
    // Its first try for the lease.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Node { service, registry, outbox, leases, tasks }
}

/// Long enough for a gateway lease to run out and a check to notice.
const EXPIRY: Duration = Duration::from_millis(LEASE_MS + LEASE_MS / 3 + 100);

#[tokio::test(start_paused = true)]
async fn only_the_leader_expires_gateway_leases_and_another_takes_over() {
    let shared = shared();
    let a = node(&shared, "a", false).await;
    let b = node(&shared, "b", false).await;
    assert!(a.service.is_leader(), "the first to start leads");
    assert!(!b.service.is_leader());

    // Any instance serves requests: this gateway talks to b, then dies.
    b.service.renew_lease("g1").await.unwrap();
    b.service.session_opened(session("bob", "s1", "g1")).await.unwrap();
    tokio::time::sleep(EXPIRY).await;
    assert!(shared.registry.sessions(&user("bob")).await.unwrap().is_empty(), "the leader expired g1");
    assert!(a.expiries() > 0);
    assert_eq!(b.expiries(), 0, "a follower does not check gateway leases");

    // The leader shuts down (releasing the lease): b leads within the ttl.
    a.stop().await;
    assert!(!a.service.is_leader());
    let expiries_of_a = a.expiries();
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
    assert!(b.service.is_leader(), "b took over");
    b.service.renew_lease("g2").await.unwrap();
    b.service.session_opened(session("carol", "s2", "g2")).await.unwrap();
    tokio::time::sleep(EXPIRY).await;
    assert!(shared.registry.sessions(&user("carol")).await.unwrap().is_empty(), "the new leader expired g2");
    assert!(b.expiries() > 0);
    assert_eq!(a.expiries(), expiries_of_a);
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_dispatches_webhooks() {
    let shared = shared();
    let a = node(&shared, "a", true).await;
    let b = node(&shared, "b", true).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(a.peeks() > 0, "the leader's webhook worker polls the outbox");
    assert_eq!(b.peeks(), 0, "a follower runs no webhook worker");

    a.stop().await;
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
    assert!(b.service.is_leader());
    assert!(b.peeks() > 0, "the new leader's worker runs");
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_stops_before_another_takes_over() {
    let shared = shared();
    let a = node(&shared, "a", false).await;
    let b = node(&shared, "b", false).await;
    assert!(a.service.is_leader());

    // a loses the lease store; it must stop before its lease runs out, and
    // b must not start before that.
    a.leases.down.store(true, Ordering::Relaxed);
    let mut took_over = None;
    for step in 1..=(2 * LEASE_MS / 50) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!(a.service.is_leader() && b.service.is_leader()), "two leaders at {} ms", step * 50);
        if b.service.is_leader() {
            took_over = Some(step * 50);
            break;
        }
    }
    let took_over = took_over.expect("b leads within two ttls");
    assert!(took_over <= LEASE_MS + LEASE_MS / 3 + 50, "b took over after {took_over} ms");
    assert!(!a.service.is_leader());
    let expiries_of_a = a.expiries();
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    assert_eq!(a.expiries(), expiries_of_a, "the old leader's lease checker stopped");
    assert!(b.expiries() > 0);

    // Back in touch, a stays a follower: b holds the lease.
    a.leases.down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    assert!(!a.service.is_leader());
    assert!(b.service.is_leader());
    a.stop().await;
    b.stop().await;
}
