//! Presence subscriptions, both ways, and presence descriptions (`PresenceStore`).

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{Error, Result, Subscription, UserId};
use prost::Message as _;

use super::{EmbeddedStore, Inner, decode, key2, storage_err};
use crate::PresenceStore;

fn time_of(value: &[u8]) -> i64 {
    <[u8; 8]>::try_from(value).map(i64::from_be_bytes).unwrap_or(0)
}

fn user_after_prefix(key: &[u8], prefix_len: usize, field: &str) -> Result<UserId> {
    let raw = key.get(prefix_len..).ok_or_else(|| Error::internal("short presence key"))?;
    UserId::parse(std::str::from_utf8(raw).map_err(storage_err)?, field)
}

impl Inner {
    /// The subscriber's stored subscriptions, expired ones included.
    fn subs_of(&self, subscriber: &UserId) -> Result<Vec<Subscription>> {
        let skip = subscriber.as_str().len() + 1;
        self.subs
            .prefix(key2(subscriber.as_str(), &[]))
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                Ok(Subscription { target: user_after_prefix(&key, skip, "target")?, expires_at: time_of(&value) })
            })
            .collect()
    }

    fn put_sub(&self, batch: &mut fjall::OwnedWriteBatch, subscriber: &UserId, target: &UserId, expires_at: i64) {
        let at = expires_at.to_be_bytes().to_vec();
        batch.insert(&self.subs, key2(subscriber.as_str(), target.as_str().as_bytes()), at.clone());
        batch.insert(&self.subs_by_target, key2(target.as_str(), subscriber.as_str().as_bytes()), at);
    }

    fn delete_sub(&self, batch: &mut fjall::OwnedWriteBatch, subscriber: &UserId, target: &UserId) {
        batch.remove(&self.subs, key2(subscriber.as_str(), target.as_str().as_bytes()));
        batch.remove(&self.subs_by_target, key2(target.as_str(), subscriber.as_str().as_bytes()));
    }
}

#[async_trait]
impl PresenceStore for EmbeddedStore {
    async fn subscribe(
        &self,
        subscriber: &UserId,
        targets: &[UserId],
        expires_at: i64,
        cap: usize,
        now: i64,
    ) -> Result<Vec<Subscription>> {
        let (subscriber, targets) = (subscriber.clone(), targets.to_vec());
        self.write_batch(move |inner, batch| {
            let subscriber = &subscriber;
            let mut others = Vec::new();
            for sub in inner.subs_of(subscriber)? {
                if sub.expires_at <= now {
                    inner.delete_sub(batch, subscriber, &sub.target);
                } else if !targets.contains(&sub.target) {
                    others.push(sub);
                }
            }
            let mut fresh: Vec<&UserId> = targets.iter().collect();
            fresh.sort();
            fresh.dedup();
            for target in &fresh {
                inner.put_sub(batch, subscriber, target, expires_at);
            }
            let excess = (others.len() + fresh.len()).saturating_sub(cap);
            others.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then_with(|| a.target.cmp(&b.target)));
            let evicted: Vec<Subscription> = others.into_iter().take(excess).collect();
            for sub in &evicted {
                inner.delete_sub(batch, subscriber, &sub.target);
            }
            Ok(evicted)
        })
        .await
    }

    async fn unsubscribe(&self, subscriber: &UserId, targets: &[UserId]) -> Result<()> {
        let (subscriber, targets) = (subscriber.clone(), targets.to_vec());
        self.write_batch(move |inner, batch| {
            for target in &targets {
                inner.delete_sub(batch, &subscriber, target);
            }
            Ok(())
        })
        .await
    }

    async fn subscriptions(
        &self,
        subscriber: &UserId,
        now: i64,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Subscription>, usize)> {
        let live: Vec<Subscription> =
            self.inner.subs_of(subscriber)?.into_iter().filter(|s| s.expires_at > now).collect();
        let total = live.len();
        Ok((live.into_iter().skip(offset).take(limit).collect(), total))
    }

    async fn subscribers(&self, target: &UserId, now: i64) -> Result<Vec<UserId>> {
        let skip = target.as_str().len() + 1;
        let mut out = Vec::new();
        for item in self.inner.subs_by_target.prefix(key2(target.as_str(), &[])) {
            let (key, value) = item.into_inner().map_err(storage_err)?;
            if time_of(&value) > now {
                out.push(user_after_prefix(&key, skip, "subscriber")?);
            }
        }
        Ok(out)
    }

    async fn remove_expired(&self, subscriber: &UserId, target: &UserId, expires_at: i64) -> Result<bool> {
        let (subscriber, target) = (subscriber.clone(), target.clone());
        self.write_batch(move |inner, batch| {
            let key = key2(subscriber.as_str(), target.as_str().as_bytes());
            match inner.subs.get(&key).map_err(storage_err)? {
                Some(value) if time_of(&value) == expires_at => {
                    inner.delete_sub(batch, &subscriber, &target);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
    }

    async fn all_subscriptions(&self) -> Result<Vec<(UserId, Subscription)>> {
        self.inner
            .subs
            .iter()
            .map(|item| {
                let (key, value) = item.into_inner().map_err(storage_err)?;
                let split = key.iter().position(|b| *b == 0).ok_or_else(|| Error::internal("bad subscription key"))?;
                let subscriber = UserId::parse(std::str::from_utf8(&key[..split]).map_err(storage_err)?, "subscriber")?;
                let target = user_after_prefix(&key, split + 1, "target")?;
                Ok((subscriber, Subscription { target, expires_at: time_of(&value) }))
            })
            .collect()
    }

    async fn set_presence(&self, user: &UserId, description: Option<&str>, time: i64) -> Result<()> {
        let (user, description) = (user.clone(), description.map(str::to_owned));
        self.write_batch(move |inner, batch| {
            let description = match description {
                Some(d) => d,
                None => match inner.presence.get(user.as_str()).map_err(storage_err)? {
                    Some(bytes) => decode::<v1::PresenceRecord>(&bytes)?.description,
                    None => String::new(),
                },
            };
            batch.insert(&inner.presence, user.as_str(), v1::PresenceRecord { description, time }.encode_to_vec());
            Ok(())
        })
        .await
    }

    async fn get_presence(&self, user: &UserId) -> Result<(String, i64)> {
        match self.inner.presence.get(user.as_str()).map_err(storage_err)? {
            Some(bytes) => {
                let record: v1::PresenceRecord = decode(&bytes)?;
                Ok((record.description, record.time))
            }
            None => Ok((String::new(), 0)),
        }
    }
}
