//! `PresenceStore` over CQL.
//!
//! `presence_subs` holds a subscriber's subscriptions in one partition
//! (clustered by target) with a static `version`; every change is one
//! single-partition conditional batch `… IF version = ?`, so the cap (P2)
//! and re-subscribe rules hold across processes. `presence_subscribers` is
//! the by-target index, written after each change with the change's version
//! as write timestamp (so concurrent changes of one pair resolve in version
//! order). Rows carry a TTL of their remaining time plus a day: a backstop,
//! expiry itself is decided on `expires_at` against the caller's clock.

use std::collections::HashSet;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use natter_types::{Error, Result, Subscription, UserId};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};

use super::{CqlStore, Inner, backoff, error, now_micros};
use crate::PresenceStore;

const MAX_ATTEMPTS: u32 = 200;
const INDEX_CONCURRENCY: usize = 32;
/// Seconds a subscription row outlives its expiry before the database drops it.
const TTL_GRACE_SECS: i64 = 24 * 3600;
/// Cassandra's largest TTL (20 years).
const MAX_TTL_SECS: i64 = 630_720_000;

type BatchValues = Vec<Box<dyn SerializeRow + Send + Sync>>;

fn ttl_secs(expires_at: i64, now: i64) -> i32 {
    let remaining = expires_at.saturating_sub(now).max(0) / 1000;
    remaining.saturating_add(TTL_GRACE_SECS).clamp(1, MAX_TTL_SECS) as i32
}

fn parse_user(raw: &str, what: &str) -> Result<UserId> {
    UserId::parse(raw, what).map_err(|e| Error::internal(format!("stored {what}: {}", e.message)))
}

type SubRow = (Option<String>, Option<i64>, Option<i64>);

/// A subscriber's partition as a conditional change sees it.
struct Subs {
    version: Option<i64>,
    subs: Vec<Subscription>,
}

impl Inner {
    async fn subs_of(&self, subscriber: &UserId, serial: bool) -> Result<Subs> {
        let st = if serial { &self.st.subs_read_serial } else { &self.st.subs_read };
        let rows: Vec<SubRow> = self.scan("read subscriptions", st, (subscriber.as_str(),), usize::MAX).await?;
        let mut version = None;
        let mut subs = Vec::with_capacity(rows.len());
        for (target, expires_at, v) in rows {
            version = version.or(v);
            if let (Some(target), Some(expires_at)) = (target, expires_at) {
                subs.push(Subscription { target: parse_user(&target, "subscription target")?, expires_at });
            }
        }
        Ok(Subs { version, subs })
    }

    /// One conditional batch on the subscriber's partition: bump the version,
    /// then `puts` (target, expires_at, ttl) and `deletes`. `Ok(None)` when
    /// another change came first.
    async fn change_subs(
        &self,
        subscriber: &UserId,
        version: Option<i64>,
        puts: &[(&UserId, i64, i32)],
        deletes: &[&UserId],
    ) -> Result<Option<i64>> {
        let next = version.map_or_else(now_micros, |v| v + 1);
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: BatchValues = Vec::with_capacity(1 + puts.len() + deletes.len());
        match version {
            None => {
                batch.append_statement(self.st.subs_version_init.clone());
                values.push(Box::new((next, subscriber.to_string())));
            }
            Some(v) => {
                batch.append_statement(self.st.subs_version_cas.clone());
                values.push(Box::new((next, subscriber.to_string(), v)));
            }
        }
        for (target, expires_at, ttl) in puts {
            batch.append_statement(self.st.sub_put.clone());
            values.push(Box::new((subscriber.to_string(), target.to_string(), *expires_at, *ttl)));
        }
        for target in deletes {
            batch.append_statement(self.st.sub_delete.clone());
            values.push(Box::new((subscriber.to_string(), target.to_string())));
        }
        match self.session.batch(&batch, values).await {
            Ok(result) => {
                let lwt = super::Lwt::from_result("change subscriptions", result).checked()?;
                Ok(lwt.applied.then_some(next))
            }
            // Every change here is safe to repeat: read again and redo it.
            Err(e) if error::outcome_unknown(&e) => Ok(None),
            Err(e) => Err(error::execution("change subscriptions", e)),
        }
    }

    /// The by-target index after a change at `version`.
    async fn index_subs(
        &self,
        subscriber: &UserId,
        version: i64,
        puts: &[(&UserId, i64, i32)],
        deletes: &[&UserId],
    ) -> Result<()> {
        let mut writes = Vec::with_capacity(puts.len() + deletes.len());
        for (target, expires_at, ttl) in puts {
            writes.push(self.execute(
                "write subscribers index",
                &self.st.subscriber_put,
                (target.as_str(), subscriber.as_str(), *expires_at, *ttl, version),
            ));
        }
        let mut deletes_f = Vec::with_capacity(deletes.len());
        for target in deletes {
            deletes_f.push(self.execute(
                "delete subscribers index",
                &self.st.subscriber_delete,
                (version, target.as_str(), subscriber.as_str()),
            ));
        }
        stream::iter(writes).buffer_unordered(INDEX_CONCURRENCY).try_for_each(|_| async { Ok(()) }).await?;
        stream::iter(deletes_f).buffer_unordered(INDEX_CONCURRENCY).try_for_each(|_| async { Ok(()) }).await
    }
}

#[async_trait]
impl PresenceStore for CqlStore {
    async fn subscribe(
        &self,
        subscriber: &UserId,
        targets: &[UserId],
        expires_at: i64,
        cap: usize,
        now: i64,
    ) -> Result<Vec<Subscription>> {
        let inner = &*self.inner;
        let mut fresh: Vec<&UserId> = targets.iter().collect();
        fresh.sort();
        fresh.dedup();
        let ttl = ttl_secs(expires_at, now);
        let puts: Vec<(&UserId, i64, i32)> = fresh.iter().map(|t| (*t, expires_at, ttl)).collect();
        for attempt in 0..MAX_ATTEMPTS {
            let current = inner.subs_of(subscriber, true).await?;
            let mut expired = Vec::new();
            let mut others = Vec::new();
            for sub in current.subs {
                if sub.expires_at <= now {
                    expired.push(sub.target);
                } else if !targets.contains(&sub.target) {
                    others.push(sub);
                }
            }
            let excess = (others.len() + fresh.len()).saturating_sub(cap);
            others.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then_with(|| a.target.cmp(&b.target)));
            let evicted: Vec<Subscription> = others.into_iter().take(excess).collect();
            let deletes: Vec<&UserId> = expired.iter().chain(evicted.iter().map(|s| &s.target)).collect();
            if let Some(version) = inner.change_subs(subscriber, current.version, &puts, &deletes).await? {
                inner.index_subs(subscriber, version, &puts, &deletes).await?;
                return Ok(evicted);
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!("subscriptions of {subscriber} changed concurrently; try again")))
    }

    async fn unsubscribe(&self, subscriber: &UserId, targets: &[UserId]) -> Result<()> {
        let inner = &*self.inner;
        let mut gone: Vec<&UserId> = targets.iter().collect();
        gone.sort();
        gone.dedup();
        for attempt in 0..MAX_ATTEMPTS {
            let current = inner.subs_of(subscriber, true).await?;
            if current.version.is_none() {
                return Ok(());
            }
            if let Some(version) = inner.change_subs(subscriber, current.version, &[], &gone).await? {
                // Every named target, so a retry also repairs the index.
                return inner.index_subs(subscriber, version, &[], &gone).await;
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!("subscriptions of {subscriber} changed concurrently; try again")))
    }

    async fn subscriptions(
        &self,
        subscriber: &UserId,
        now: i64,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Subscription>, usize)> {
        let live: Vec<Subscription> =
            self.inner.subs_of(subscriber, false).await?.subs.into_iter().filter(|s| s.expires_at > now).collect();
        let total = live.len();
        Ok((live.into_iter().skip(offset).take(limit).collect(), total))
    }

    async fn subscribers(&self, target: &UserId, now: i64) -> Result<Vec<UserId>> {
        let inner = &*self.inner;
        let rows: Vec<(Option<String>, Option<i64>)> =
            inner.scan("read subscribers", &inner.st.subscribers, (target.as_str(),), usize::MAX).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (subscriber, expires_at) in rows {
            if let (Some(subscriber), Some(expires_at)) = (subscriber, expires_at)
                && expires_at > now
                && seen.insert(subscriber.clone())
            {
                out.push(parse_user(&subscriber, "subscriber")?);
            }
        }
        Ok(out)
    }

    async fn remove_expired(&self, subscriber: &UserId, target: &UserId, expires_at: i64) -> Result<bool> {
        let inner = &*self.inner;
        for attempt in 0..MAX_ATTEMPTS {
            let row: Option<(Option<i64>, Option<i64>)> = inner
                .first_row("read subscription", &inner.st.sub_get_serial, (subscriber.as_str(), target.as_str()))
                .await?;
            let version = match row {
                Some((Some(at), version)) if at == expires_at => version,
                _ => return Ok(false),
            };
            if let Some(next) = inner.change_subs(subscriber, version, &[], &[target]).await? {
                inner.index_subs(subscriber, next, &[], &[target]).await?;
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!("subscriptions of {subscriber} changed concurrently; try again")))
    }

    async fn all_subscriptions(&self) -> Result<Vec<(UserId, Subscription)>> {
        let inner = &*self.inner;
        let rows: Vec<(Option<String>, Option<String>, Option<i64>)> =
            inner.scan("read all subscriptions", &inner.st.subs_all, (), usize::MAX).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if let (Some(subscriber), Some(target), Some(expires_at)) = row {
                out.push((
                    parse_user(&subscriber, "subscriber")?,
                    Subscription { target: parse_user(&target, "subscription target")?, expires_at },
                ));
            }
        }
        Ok(out)
    }

    async fn set_presence(&self, user: &UserId, description: Option<&str>, time: i64) -> Result<()> {
        let inner = &*self.inner;
        match description {
            Some(d) => inner.execute("set presence", &inner.st.presence_set, (d, time, user.as_str())).await?,
            None => inner.execute("set presence", &inner.st.presence_touch, (time, user.as_str())).await?,
        };
        Ok(())
    }

    async fn get_presence(&self, user: &UserId) -> Result<(String, i64)> {
        let inner = &*self.inner;
        let row: Option<(Option<String>, Option<i64>)> =
            inner.first_row("get presence", &inner.st.presence_get, (user.as_str(),)).await?;
        Ok(row.map_or((String::new(), 0), |(d, t)| (d.unwrap_or_default(), t.unwrap_or(0))))
    }
}
