//! `SessionRegistry` over CQL, shared by every presence process.
//!
//! `sessions` holds a user's sessions in one partition (clustered by session
//! id, ordered by `seq`) with a static `version`. Every change is one
//! single-partition conditional batch `… IF version = ?` that moves the
//! version on and inserts or deletes session rows together, so the device
//! limit holds across processes and a session leaves through exactly one
//! call: the register that displaced it, the unregister that removed it, or
//! the lease expiry that took it. A new session's `seq` is the version its
//! change set, so `seq` orders sessions oldest first.
//!
//! `gateway_sessions` indexes sessions by gateway for lease expiry. Its row
//! is written *before* the session row and deleted *after* it, so an expiry
//! never misses a registered session; a stray index row (a change that
//! failed after writing it) is dropped by the next expiry of its gateway.
//!
//! `gateway_leases` holds every gateway's lease in one small partition
//! (`shard = 0`; there are tens of gateways, not millions), so expiry reads
//! one partition instead of scanning the table. An expired gateway's lease
//! row is deleted — `IF until = ?`, so a renewal that came meanwhile stands —
//! only once all its sessions were removed; an expiry that dies half-way is
//! finished by the next one.
//!
//! No TTLs here: a session lives as long as its gateway, however long that
//! is, and a lease row that vanished by TTL before some presence process
//! expired it would leave its gateway's sessions online for good.

use async_trait::async_trait;
use futures::{StreamExt, stream};
use natter_types::{Error, Result, SessionId, SessionInfo, UserId};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};

use super::{CqlStore, Inner, Lwt, backoff, error, new_token, now_micros};
use crate::SessionRegistry;

/// Attempts of a change that keeps losing its conditional update to
/// concurrent changes of the same user's sessions.
const MAX_ATTEMPTS: u32 = 200;

/// Sessions of an expired gateway removed at once.
const EXPIRE_CONCURRENCY: usize = 32;

type BatchValues = Vec<Box<dyn SerializeRow + Send + Sync>>;

type SessionRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A user's partition as a conditional change sees it.
struct UserSessions {
    version: Option<i64>,
    writer: Option<i64>,
    /// `(seq, session)`, oldest first.
    sessions: Vec<(i64, SessionInfo)>,
}

impl UserSessions {
    fn find(&self, session: &SessionId) -> Option<&(i64, SessionInfo)> {
        self.sessions.iter().find(|(_, s)| &s.session == session)
    }

    fn has(&self, seq: i64, session: &SessionId) -> bool {
        self.sessions.iter().any(|(s, info)| *s == seq && &info.session == session)
    }
}

enum Change {
    Applied,
    /// Another change came first: read again and retry.
    Conflict,
}

fn contention(user: &UserId) -> Error {
    Error::unavailable(format!("sessions of {user} changed concurrently {MAX_ATTEMPTS} times in a row; try again"))
}

impl Inner {
    async fn user_sessions(&self, user: &UserId, serial: bool) -> Result<UserSessions> {
        let st = if serial { &self.st.sessions_read_serial } else { &self.st.sessions_read };
        let rows: Vec<SessionRow> = self.scan("read sessions", st, (user.as_str(),), usize::MAX).await?;
        let mut out = UserSessions { version: None, writer: None, sessions: Vec::with_capacity(rows.len()) };
        for (session, device, gateway, platform, client_addr, connected_at, seq, version, writer) in rows {
            out.version = out.version.or(version);
            out.writer = out.writer.or(writer);
            // The static-only row of a user without sessions.
            let Some(session) = session else { continue };
            let info = SessionInfo {
                user: user.clone(),
                session: SessionId(session),
                device: device.unwrap_or_default(),
                gateway: gateway.unwrap_or_default(),
                platform: platform.unwrap_or_default(),
                client_addr: client_addr.unwrap_or_default(),
                connected_at: connected_at.unwrap_or(0),
            };
            out.sessions.push((seq.unwrap_or(0), info));
        }
        out.sessions.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.session.0.cmp(&b.1.session.0)));
        Ok(out)
    }

    /// One conditional batch on the user's partition: moves the version on
    /// from `current`'s, inserts `put` (with the new version as its seq) and
    /// deletes `deletes` (`(seq, session)` as read).
    async fn change_sessions(
        &self,
        context: &'static str,
        user: &UserId,
        current: &UserSessions,
        put: Option<&SessionInfo>,
        deletes: &[(i64, &SessionInfo)],
    ) -> Result<Change> {
        let next = current.version.map_or_else(now_micros, |v| v + 1);
        let token = new_token();
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: BatchValues = Vec::with_capacity(2 + deletes.len());
        match current.version {
            None => {
                batch.append_statement(self.st.sessions_version_init.clone());
                values.push(Box::new((next, token, user.to_string())));
            }
            Some(v) => {
                batch.append_statement(self.st.sessions_version_cas.clone());
                values.push(Box::new((next, token, user.to_string(), v)));
            }
        }
        if let Some(info) = put {
            batch.append_statement(self.st.session_insert.clone());
            values.push(Box::new((
                user.to_string(),
                info.session.0.clone(),
                info.device.clone(),
                info.gateway.clone(),
                info.platform.clone(),
                info.client_addr.clone(),
                info.connected_at,
                next,
            )));
        }
        for (_, info) in deletes {
            batch.append_statement(self.st.session_delete.clone());
            values.push(Box::new((user.to_string(), info.session.0.clone())));
        }
        match self.session.batch(&batch, values).await {
            Ok(result) => {
                let lwt = Lwt::from_result(context, result).checked()?;
                Ok(if lwt.applied { Change::Applied } else { Change::Conflict })
            }
            Err(e) if error::outcome_unknown(&e) => {
                self.resolve_unknown(context, user, current.version, next, token, put, deletes, &e).await
            }
            Err(e) => Err(error::execution(context, e)),
        }
    }

    /// After a change whose answer was lost: did it apply? A retry of an
    /// applied change would lose or duplicate sessions, so when the state
    /// cannot tell, this is an error rather than a guess.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_unknown(
        &self,
        context: &'static str,
        user: &UserId,
        before: Option<i64>,
        next: i64,
        token: i64,
        put: Option<&SessionInfo>,
        deletes: &[(i64, &SessionInfo)],
        cause: &scylla::errors::ExecutionError,
    ) -> Result<Change> {
        let now = self.user_sessions(user, true).await?;
        if now.version == Some(next) && now.writer == Some(token) {
            return Ok(Change::Applied);
        }
        // The batch deletes all of these at once: one still there means it
        // did not apply (a re-registered session would have a newer seq).
        if now.version == before || deletes.iter().any(|(seq, info)| now.has(*seq, &info.session)) {
            return Ok(Change::Conflict);
        }
        if put.is_some_and(|info| now.has(next, &info.session)) {
            return Ok(Change::Applied);
        }
        Err(error::unavailable(format!("cql {context} of {user}: outcome unknown"), cause))
    }

    /// Removes the session if it is registered (and on `gateway`, if given).
    async fn unregister_where(
        &self,
        user: &UserId,
        session: &SessionId,
        gateway: Option<&str>,
    ) -> Result<Option<SessionInfo>> {
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.user_sessions(user, true).await?;
            let Some((seq, info)) = current.find(session) else { return Ok(None) };
            if gateway.is_some_and(|g| g != info.gateway) {
                return Ok(None);
            }
            match self.change_sessions("unregister session", user, &current, None, &[(*seq, info)]).await? {
                Change::Applied => {
                    let info = info.clone();
                    self.unindex_session(&info.gateway, user.as_str(), &session.0).await;
                    return Ok(Some(info));
                }
                Change::Conflict => backoff(attempt).await,
            }
        }
        Err(contention(user))
    }

    /// Best effort: a stray index row costs the next expiry of its gateway
    /// one read.
    async fn unindex_session(&self, gateway: &str, user: &str, session: &str) -> bool {
        match self
            .execute("delete gateway sessions index", &self.st.gateway_session_delete, (gateway, user, session))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    gateway = %gateway,
                    user = %user,
                    session = %session,
                    error = %e,
                    "gateway sessions index not cleaned"
                );
                false
            }
        }
    }

    /// Removes every session of an expired gateway; returns those this call
    /// removed. Never fails as a whole: sessions already removed must be
    /// returned, so a failure is logged and leaves the lease row for the
    /// next expiry to finish.
    async fn expire_gateway(&self, gateway: &str, until: i64) -> Vec<SessionInfo> {
        let entries: Vec<(Option<String>, Option<String>)> =
            match self.scan("read gateway sessions", &self.st.gateway_sessions_scan, (gateway,), usize::MAX).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(gateway = %gateway, error = %e, "reading an expired gateway's sessions failed");
                    return Vec::new();
                }
            };
        let outcomes: Vec<(Option<SessionInfo>, bool)> = stream::iter(entries)
            .filter_map(|entry| async move {
                match entry {
                    (Some(user), Some(session)) => Some((user, session)),
                    _ => None,
                }
            })
            .map(|(user, session)| async move {
                let Ok(user_id) = UserId::parse(&user, "user") else {
                    tracing::warn!(
                        gateway = %gateway,
                        user = %user,
                        "invalid user id in gateway sessions index, dropped"
                    );
                    let cleaned = self.unindex_session(gateway, &user, &session).await;
                    return (None, cleaned);
                };
                match self.unregister_where(&user_id, &SessionId(session.clone()), Some(gateway)).await {
                    Ok(found) => {
                        // `unregister_where` unindexed what it removed.
                        let cleaned = found.is_some() || self.unindex_session(gateway, &user, &session).await;
                        (found, cleaned)
                    }
                    Err(e) => {
                        tracing::warn!(
                            gateway = %gateway,
                            user = %user,
                            session = %session,
                            error = %e,
                            "removing an expired gateway's session failed"
                        );
                        (None, false)
                    }
                }
            })
            .buffer_unordered(EXPIRE_CONCURRENCY)
            .collect()
            .await;
        let complete = outcomes.iter().all(|(_, cleaned)| *cleaned);
        let gone: Vec<SessionInfo> = outcomes.into_iter().filter_map(|(found, _)| found).collect();
        if complete {
            match self.conditional("delete gateway lease", &self.st.gateway_lease_delete_cas, (gateway, until)).await {
                Ok(lwt) => {
                    if let Err(e) = lwt.checked() {
                        tracing::warn!(gateway = %gateway, error = %e, "deleting an expired gateway lease failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        gateway = %gateway,
                        error = %e,
                        "deleting an expired gateway lease failed; the next expiry retries"
                    )
                }
            }
        }
        tracing::info!(gateway = %gateway, sessions = gone.len(), complete, "gateway lease expired");
        gone
    }
}

#[async_trait]
impl SessionRegistry for CqlStore {
    async fn register(&self, info: SessionInfo, max_sessions: usize) -> Result<Vec<SessionInfo>> {
        let inner = &*self.inner;
        let cap = max_sessions.max(1);
        inner
            .execute(
                "write gateway sessions index",
                &inner.st.gateway_session_insert,
                (info.gateway.as_str(), info.user.as_str(), info.session.0.as_str()),
            )
            .await?;
        for attempt in 0..MAX_ATTEMPTS {
            let current = inner.user_sessions(&info.user, true).await?;
            let others: Vec<(i64, &SessionInfo)> =
                current.sessions.iter().filter(|(_, s)| s.session != info.session).map(|(seq, s)| (*seq, s)).collect();
            let excess = (others.len() + 1).saturating_sub(cap);
            let displaced = &others[..excess];
            match inner.change_sessions("register session", &info.user, &current, Some(&info), displaced).await? {
                Change::Applied => {
                    for (_, old) in displaced {
                        inner.unindex_session(&old.gateway, old.user.as_str(), &old.session.0).await;
                    }
                    return Ok(displaced.iter().map(|(_, s)| (*s).clone()).collect());
                }
                Change::Conflict => backoff(attempt).await,
            }
        }
        Err(contention(&info.user))
    }

    async fn unregister(&self, user: &UserId, session: &SessionId) -> Result<Option<SessionInfo>> {
        self.inner.unregister_where(user, session, None).await
    }

    async fn sessions(&self, user: &UserId) -> Result<Vec<SessionInfo>> {
        Ok(self.inner.user_sessions(user, false).await?.sessions.into_iter().map(|(_, s)| s).collect())
    }

    async fn renew_lease(&self, gateway: &str, until: i64) -> Result<()> {
        let inner = &*self.inner;
        inner.execute("renew gateway lease", &inner.st.gateway_lease_put, (gateway, until)).await?;
        Ok(())
    }

    async fn expire_leases(&self, now: i64) -> Result<Vec<SessionInfo>> {
        let inner = &*self.inner;
        let leases: Vec<(Option<String>, Option<i64>)> =
            inner.scan("read gateway leases", &inner.st.gateway_leases_scan, (), usize::MAX).await?;
        let mut gone = Vec::new();
        for (gateway, until) in leases {
            if let (Some(gateway), Some(until)) = (gateway, until)
                && until < now
            {
                gone.extend(inner.expire_gateway(&gateway, until).await);
            }
        }
        Ok(gone)
    }
}
