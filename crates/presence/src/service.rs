use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use natter_bus::{Bus, Transient};
use natter_proto::v1;
use natter_runtime::{Stage, Tasks};
use natter_store::{Leases, PresenceStore, WebhookOutbox};
use natter_types::{DeviceStatus, Error, Limits, Presence, Result, SessionStatus, UserId, WebhookEvent};
use parking_lot::Mutex;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sweeper::Sweeper;
use crate::webhook::{Webhook, WebhookOptions};
use natter_api::PresenceApi;
use natter_runtime::Clock;
use natter_types::SubscriptionPage;

use crate::{SessionInfo, SessionRegistry};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceOptions {
    /// A device back within this window after a drop is not announced
    /// offline and online again.
    pub flap_window_ms: u64,
    /// A gateway that has not renewed its lease for this long is dead; its
    /// sessions go offline.
    pub lease_ms: u64,
    pub webhook: WebhookOptions,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        Self { flap_window_ms: 2_000, lease_ms: 30_000, webhook: WebhookOptions::default() }
    }
}

impl PresenceOptions {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.lease_ms < 1_000 {
            return Err("presence.lease_ms must be at least 1000".into());
        }
        self.webhook.validate()
    }
}

/// The lease whose holder runs the background jobs when several presence
/// processes share one store.
pub const LEADER_LEASE: &str = "presence-leader";

/// How often an idle webhook worker of the leader looks for events that
/// other presence processes queued.
const WEBHOOK_POLL: Duration = Duration::from_secs(1);

/// Who may run the background jobs when several presence processes share
/// one store: the holder of [`LEADER_LEASE`] in `leases`, taken as `owner`
/// (unique per process).
pub struct LeaderLease {
    pub leases: Arc<dyn Leases>,
    pub owner: String,
}

/// What the presence service runs on.
pub struct PresenceDeps {
    pub registry: Arc<dyn SessionRegistry>,
    pub store: Arc<dyn PresenceStore>,
    pub outbox: Arc<dyn WebhookOutbox>,
    pub bus: Arc<dyn Bus>,
    /// `None`: the background jobs run in this instance unconditionally.
    pub leader: Option<LeaderLease>,
}

/// The local implementation of [`PresenceApi`]. [`start`](Self::start) runs
/// the sweeper, the lease checker and the webhook workers in the
/// [`Stage::Services`] of the given task set; the `Arc` it returns is the
/// handle.
///
/// Several instances (processes) may serve one shared registry and store:
/// every request reads and writes through them. The background jobs must
/// then run in one instance only: give each a [`LeaderLease`] and the holder
/// runs them. Flap-damping timers stay in the instance that saw the close.
pub struct PresenceService {
    options: PresenceOptions,
    limits: Limits,
    registry: Arc<dyn SessionRegistry>,
    store: Arc<dyn PresenceStore>,
    bus: Arc<dyn Bus>,
    clock: Clock,
    sweeper: Sweeper,
    webhook: Webhook,
    /// Offline announcements waiting out the flap window, by (user, device).
    pending_offline: Mutex<HashMap<(UserId, String), AbortHandle>>,
    /// For timers that outlive the call that starts them.
    me: Weak<Self>,
    /// The background jobs and timers, waited for when the service stops.
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// The process is stopping (its earlier stages, sessions among them,
    /// are draining before this service's jobs are cancelled).
    stopping: CancellationToken,
    /// Whether the background jobs run in this instance now.
    leading: AtomicBool,
}

impl std::fmt::Debug for PresenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceService").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Sessions of a dead run announced offline at once ([`PresenceService::announce_lost`]).
const LOST_ANNOUNCEMENTS_IN_FLIGHT: usize = 64;

/// `at + by`, capped far ahead instead of overflowing on an absurd lease.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn dedup(users: Vec<UserId>) -> Vec<UserId> {
    let mut users = users;
    users.sort();
    users.dedup();
    users
}

impl PresenceService {
    /// Starts the service and its background work: here and now (after
    /// loading the expiry schedule), or, with a leader lease, whenever this
    /// instance holds it. Stops when `tasks` stops its services.
    pub async fn start(
        options: PresenceOptions,
        limits: Limits,
        deps: PresenceDeps,
        tasks: &Tasks,
    ) -> Result<Arc<Self>> {
        let PresenceDeps { registry, store, outbox, bus, leader } = deps;
        let clock = Clock::new();
        let webhook = Webhook::new(options.webhook.clone(), outbox)?;
        let service = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            sweeper: Sweeper::new(store.clone(), clock),
            options,
            limits,
            registry,
            store,
            bus,
            clock,
            webhook,
            pending_offline: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            cancel: tasks.token(Stage::Services),
            stopping: tasks.stop_token(),
            leading: AtomicBool::new(false),
        });
        service.start_jobs(leader).await?;
        let this = Arc::clone(&service);
        tasks.spawn(Stage::Services, "presence", |token| async move {
            token.cancelled().await;
            this.stopped().await;
            Ok(())
        });
        Ok(service)
    }

    /// Whether the background jobs run in this instance now.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    async fn start_jobs(self: &Arc<Self>, leader: Option<LeaderLease>) -> Result<()> {
        match leader {
            None => {
                let scheduled = self.sweeper.load().await?;
                tracing::info!(subscriptions = scheduled, "presence sweeper loaded");
                self.tasks.spawn(self.sweeper.clone().run(self.cancel.clone()));
                self.webhook.spawn(&self.tasks, &self.cancel);
                let this = Arc::clone(self);
                let cancel = self.cancel.clone();
                self.tasks.spawn(async move { this.check_leases(cancel).await });
                self.leading.store(true, Ordering::Relaxed);
            }
            Some(leader) => {
                self.sweeper.set_active(false);
                let this = Arc::clone(self);
                self.tasks.spawn(async move { this.lead(leader).await });
            }
        }
        Ok(())
    }

    /// Tries for the leader lease every third of its ttl; runs the jobs
    /// while it holds it; gives it up at shutdown.
    async fn lead(self: Arc<Self>, leadership: LeaderLease) {
        let ttl = self.lease();
        let period = ttl / 3;
        let owner = leadership.owner.as_str();
        loop {
            let started = Instant::now();
            match leadership.leases.acquire(LEADER_LEASE, owner, ttl).await {
                Ok(true) => self.run_as_leader(&leadership, started).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(owner = %owner, error = %e, "taking the presence leader lease failed"),
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
        if let Err(e) = leadership.leases.release(LEADER_LEASE, owner).await {
            tracing::warn!(owner = %owner, error = %e, "releasing the presence leader lease failed; it will expire");
        }
    }

    /// Runs the background jobs from the lease taken at `acquired` until the
    /// lease is lost, lapses, or the service shuts down; returns once they
    /// stopped.
    async fn run_as_leader(self: &Arc<Self>, leadership: &LeaderLease, acquired: Instant) {
        let ttl = self.lease();
        let period = ttl / 3;
        // Stop a little before the lease ends, so the next leader's jobs do
        // not start while ours are still finishing.
        let hold = ttl - ttl / 10;
        let owner = leadership.owner.as_str();
        tracing::info!(owner = %owner, "presence leadership taken, starting background jobs");
        let jobs = self.cancel.child_token();
        let tracker = TaskTracker::new();
        self.sweeper.set_active(true);
        let this = Arc::clone(self);
        let token = jobs.clone();
        tracker.spawn(async move { this.sweep_as_leader(token).await });
        self.webhook.spawn_polling(&tracker, &jobs, WEBHOOK_POLL);
        let this = Arc::clone(self);
        let token = jobs.clone();
        tracker.spawn(async move { this.check_leases(token).await });
        self.leading.store(true, Ordering::Relaxed);

        let mut valid_until = later(acquired, hold);
        let mut next = period;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep_until(valid_until) => {
                    tracing::warn!(owner = %owner, "presence leader lease lapsed unrenewed, stopping background jobs");
                    break;
                }
                () = tokio::time::sleep(next) => {}
            }
            let started = Instant::now();
            let renewal = leadership.leases.acquire(LEADER_LEASE, owner, ttl);
            match tokio::time::timeout_at(valid_until, renewal).await {
                Ok(Ok(true)) => {
                    valid_until = later(started, hold);
                    next = period;
                }
                Ok(Ok(false)) => {
                    tracing::warn!(owner = %owner, "presence leader lease lost to another process, stopping jobs");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(owner = %owner, error = %e, "renewing the presence leader lease failed");
                    next = (period / 4).max(Duration::from_millis(10));
                }
                Err(_) => {
                    tracing::warn!(owner = %owner, "presence leader lease lapsed during renewal, stopping jobs");
                    break;
                }
            }
        }
        self.leading.store(false, Ordering::Relaxed);
        jobs.cancel();
        tracker.close();
        tracker.wait().await;
        self.sweeper.set_active(false);
        tracing::info!(owner = %owner, "presence background jobs stopped");
    }

    /// The sweeper of a new leader: the schedule is rebuilt from the store,
    /// since subscriptions made through other instances are not in it.
    async fn sweep_as_leader(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            match self.sweeper.load().await {
                Ok(scheduled) => {
                    tracing::info!(subscriptions = scheduled, "presence sweeper loaded");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "loading the presence sweeper failed, retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        self.sweeper.clone().run(cancel).await;
    }

    /// Waits for the background work to stop (after the cancel token fired).
    async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn sweeper(&self) -> &Sweeper {
        &self.sweeper
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.options.lease_ms)
    }

    async fn check_leases(self: Arc<Self>, cancel: CancellationToken) {
        let period = Duration::from_millis((self.options.lease_ms / 3).max(100));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.registry.expire_leases(self.clock.now_ms()).await {
                Ok(gone) => {
                    for session in gone {
                        tracing::info!(user = %session.user, session = %session.session, gateway = %session.gateway, "gateway lease expired, session offline");
                        self.announce(&session, SessionStatus::Offline).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checking gateway leases failed"),
            }
        }
    }

    /// The user's presence now; `changed` adds a device that just went
    /// offline, so subscribers see which one.
    async fn presence_of(&self, user: &UserId, changed: Option<&SessionInfo>) -> Result<Presence> {
        let sessions = self.registry.sessions(user).await?;
        let mut devices: Vec<DeviceStatus> = sessions
            .iter()
            .map(|s| DeviceStatus { device: s.device.clone(), platform: s.platform.clone(), online: true })
            .collect();
        if let Some(gone) = changed
            && !devices.iter().any(|d| d.device == gone.device)
        {
            devices.push(DeviceStatus { device: gone.device.clone(), platform: gone.platform.clone(), online: false });
        }
        let (description, time) = self.store.get_presence(user).await?;
        Ok(Presence { user: user.clone(), devices, description, time })
    }

    /// Sends the user's presence to their live subscribers and their own
    /// sessions, encoded once.
    async fn fan_out(&self, presence: &Presence) -> Result<()> {
        let mut recipients = self.store.subscribers(&presence.user, self.clock.now_ms()).await?;
        recipients.push(presence.user.clone());
        let frame = v1::ServerFrame { body: Some(v1::server_frame::Body::OnPresenceStatusChange(presence.into())) };
        let json = serde_json::to_vec(&frame).map_err(|e| Error::internal(format!("encoding presence: {e}")))?;
        let transient = Arc::new(Transient { proto: frame.encode_to_vec().into(), json: json.into() });
        self.bus.publish_transient(&recipients, transient).await
    }

    /// Announces offline the sessions a previous run of this node left open:
    /// it died without closing them (see [`LocalSessionRegistry::with_journal`]).
    ///
    /// [`LocalSessionRegistry::with_journal`]: crate::local::LocalSessionRegistry::with_journal
    pub async fn announce_lost(&self, sessions: &[SessionInfo]) {
        // Many at a time, so that their store writes share fsyncs: a node
        // that died with 20,000 connections must not spend a minute on them.
        futures::stream::iter(sessions)
            .for_each_concurrent(LOST_ANNOUNCEMENTS_IN_FLIGHT, |session| async move {
                tracing::debug!(user = %session.user, session = %session.session, "session of the previous run offline");
                self.announce(session, SessionStatus::Offline).await;
            })
            .await;
    }

    /// Records a session status change, tells subscribers and the webhook.
    /// Failures are logged: a status change has already happened and must
    /// not fail the connection that caused it.
    async fn announce(&self, session: &SessionInfo, status: SessionStatus) {
        let now = self.clock.now_ms();
        let result = async {
            self.store.set_presence(&session.user, None, now).await?;
            let changed = (status != SessionStatus::Online).then_some(session);
            let presence = self.presence_of(&session.user, changed).await?;
            self.fan_out(&presence).await?;
            if self.webhook.enabled() {
                let event = WebhookEvent {
                    user: session.user.clone(),
                    status,
                    os: session.platform.clone(),
                    time: now,
                    client_ip: session.client_addr.clone(),
                    session_id: session.session.to_string(),
                };
                self.webhook.enqueue(&[event]).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(user = %session.user, status = status.code(), error = %e, "announcing a presence change failed");
        }
    }

    fn check_users(&self, users: &[UserId], field: &str) -> Result<()> {
        let max = self.limits.max_presence_users_per_request;
        if users.is_empty() {
            return Err(Error::bad_request(field, "name at least one user"));
        }
        if users.len() > max {
            return Err(Error::limit(field, format!("has {} users, the limit per call is {max}", users.len())));
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceApi for PresenceService {
    async fn session_opened(&self, session: SessionInfo) -> Result<Vec<SessionInfo>> {
        let kicked = self.registry.register(session.clone(), self.limits.max_sessions_per_user).await?;
        for old in &kicked {
            // W4: a device kicked by a newer login reports "1".
            self.announce(old, SessionStatus::Offline).await;
        }
        let flapped = self.pending_offline.lock().remove(&(session.user.clone(), session.device.clone()));
        match flapped {
            // Back within the window: neither the offline nor this online is announced.
            Some(pending) => pending.abort(),
            None => self.announce(&session, SessionStatus::Online).await,
        }
        Ok(kicked)
    }

    async fn session_closed(&self, session: &SessionInfo, status: SessionStatus) -> Result<()> {
        let Some(removed) = self.registry.unregister(&session.user, &session.session).await? else {
            return Ok(());
        };
        // Shutting down: announce now. A flap timer would outlive the
        // shutdown (and hold the store open after it), and a device that
        // reconnects does so to another run.
        if status != SessionStatus::Offline
            || self.options.flap_window_ms == 0
            || self.stopping.is_cancelled()
            || self.cancel.is_cancelled()
        {
            self.announce(&removed, status).await;
            return Ok(());
        }
        // Hold the offline back for the flap window; a reconnect of the same
        // device cancels it (see session_opened).
        let key = (removed.user.clone(), removed.device.clone());
        let window = Duration::from_millis(self.options.flap_window_ms);
        let Some(service) = self.me.upgrade() else {
            // Shutting down: announce now rather than never.
            self.announce(&removed, status).await;
            return Ok(());
        };
        let key_for_task = key.clone();
        let handle = self.tasks.spawn(async move {
            tokio::time::sleep(window).await;
            let still_pending = service.pending_offline.lock().remove(&key_for_task).is_some();
            if still_pending {
                service.announce(&removed, SessionStatus::Offline).await;
            }
        });
        if let Some(previous) = self.pending_offline.lock().insert(key, handle.abort_handle()) {
            previous.abort();
        }
        Ok(())
    }

    async fn renew_lease(&self, gateway: &str) -> Result<()> {
        let until = self.clock.now_ms() + self.options.lease_ms as i64;
        self.registry.renew_lease(gateway, until).await
    }

    async fn subscribe(&self, subscriber: &UserId, targets: Vec<UserId>, expiry_secs: u64) -> Result<Vec<Presence>> {
        self.check_users(&targets, "usernames")?;
        let max = self.limits.max_presence_expiry_secs;
        if expiry_secs == 0 || expiry_secs > max {
            return Err(Error::bad_request("expiry", format!("is {expiry_secs} s; it must be 1..={max} s (30 days)")));
        }
        let targets = dedup(targets);
        let now = self.clock.now_ms();
        let expires_at = now + (expiry_secs as i64) * 1000;
        let evicted =
            self.store.subscribe(subscriber, &targets, expires_at, self.limits.max_presence_subscriptions, now).await?;
        if !evicted.is_empty() {
            tracing::debug!(user = %subscriber, evicted = evicted.len(), "subscription cap reached, evicted the shortest");
        }
        for target in &targets {
            self.sweeper.schedule(subscriber, target, expires_at);
        }
        let mut out = Vec::with_capacity(targets.len());
        for target in &targets {
            out.push(self.presence_of(target, None).await?);
        }
        Ok(out)
    }

    async fn unsubscribe(&self, subscriber: &UserId, targets: Vec<UserId>) -> Result<()> {
        self.check_users(&targets, "usernames")?;
        self.store.unsubscribe(subscriber, &dedup(targets)).await
    }

    async fn publish(&self, user: &UserId, description: String) -> Result<Presence> {
        let max = self.limits.max_presence_description_bytes;
        if description.len() > max {
            return Err(Error::limit("description", format!("is {} bytes, the limit is {max}", description.len())));
        }
        self.store.set_presence(user, Some(&description), self.clock.now_ms()).await?;
        let presence = self.presence_of(user, None).await?;
        self.fan_out(&presence).await?;
        Ok(presence)
    }

    async fn subscriptions(&self, subscriber: &UserId, page_num: u32, page_size: u32) -> Result<SubscriptionPage> {
        let size = match page_size {
            0 => 20,
            n @ 1..=100 => n as usize,
            n => return Err(Error::limit("page_size", format!("is {n}, the limit is 100"))),
        };
        let offset = (page_num as usize).saturating_mul(size);
        let (subscriptions, total) = self.store.subscriptions(subscriber, self.clock.now_ms(), offset, size).await?;
        Ok(SubscriptionPage { subscriptions, total })
    }

    async fn query(&self, users: Vec<UserId>) -> Result<Vec<Presence>> {
        self.check_users(&users, "usernames")?;
        let mut out = Vec::with_capacity(users.len());
        for user in dedup(users) {
            out.push(self.presence_of(&user, None).await?);
        }
        Ok(out)
    }
}
