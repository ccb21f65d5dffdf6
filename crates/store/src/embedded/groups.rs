//! Groups, their members and the user→groups index (`GroupStore`).

use std::ops::Bound;

use async_trait::async_trait;
use fjall::Keyspace;
use natter_proto::v1;
use natter_types::{Error, Group, GroupId, GroupMember, GroupRole, Result, UserId};
use prost::Message as _;

use super::{EmbeddedStore, Inner, decode, key2, prefix_end, storage_err};
use crate::{GroupStore, MembersAdded};

impl Inner {
    fn load_group(&self, id: &GroupId) -> Result<Option<v1::Group>> {
        let raw = self.groups.get(id.as_str()).map_err(storage_err)?;
        raw.map(|bytes| decode::<v1::GroupRecord>(&bytes).map(|r| r.group.unwrap_or_default())).transpose()
    }

    fn put_group(&self, batch: &mut fjall::OwnedWriteBatch, group: v1::Group) {
        let id = group.id.clone();
        batch.insert(&self.groups, id, v1::GroupRecord { group: Some(group) }.encode_to_vec());
    }

    fn put_member(&self, batch: &mut fjall::OwnedWriteBatch, id: &GroupId, member: &GroupMember) {
        batch.insert(
            &self.members,
            key2(id.as_str(), member.user_id.as_str().as_bytes()),
            v1::GroupMember::from(member).encode_to_vec(),
        );
        batch.insert(&self.user_groups, key2(member.user_id.as_str(), id.as_str().as_bytes()), Vec::new());
    }
}

fn decode_member(bytes: &[u8]) -> Result<GroupMember> {
    let m: v1::GroupMember = decode(bytes)?;
    Ok(GroupMember {
        user_id: UserId::parse(&m.user_id, "member")?,
        role: natter_proto::group_role(m.role)?,
        joined_at: m.joined_at,
    })
}

impl EmbeddedStore {
    /// [`write_batch`](Self::write_batch) for a batch that may change group
    /// `id`'s members. `build` also returns the members it removes: their
    /// open runs on the group's timeline are closed in the same batch, after
    /// the rows the round staged so far (which those runs may cover) are
    /// written. The cached member list is dropped once the batch is visible,
    /// whether or not the commit succeeded, in the writer's job: a caller
    /// that goes away once the job ran must not skip it.
    async fn write_members<T: Send + 'static>(
        &self,
        id: GroupId,
        build: impl FnOnce(&Inner, &mut fjall::OwnedWriteBatch) -> Result<(T, Vec<UserId>)> + Send + 'static,
    ) -> Result<T> {
        self.writer
            .write(move |round| {
                round.flush_rows()?;
                let inner = round.inner;
                let mut batch = inner.db.batch();
                let (value, leaving) = build(inner, &mut batch)?;
                let closed = inner.close_group_runs(&mut batch, &id, &leaving)?;
                let commit = round.commit(batch);
                inner.member_cache.invalidate(&id);
                commit?;
                inner.runs_closed(&closed);
                Ok(value)
            })
            .await
    }
}

fn group_not_found(id: &GroupId) -> Error {
    Error::not_found(format!("group {id} does not exist"))
}

#[async_trait]
impl GroupStore for EmbeddedStore {
    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<()> {
        let (group, members) = (group.clone(), members.to_vec());
        self.write_members(group.id.clone(), move |inner, batch| {
            if inner.load_group(&group.id)?.is_some() {
                return Err(Error::new(natter_types::ErrorCode::Conflict, format!("group {} exists", group.id)));
            }
            let mut record = v1::Group::from(&group);
            record.member_count = members.len() as u32;
            inner.put_group(batch, record);
            for m in &members {
                inner.put_member(batch, &group.id, m);
            }
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn get_group(&self, id: &GroupId) -> Result<Option<Group>> {
        self.inner.load_group(id)?.map(|g| Ok(g.try_into()?)).transpose()
    }

    async fn get_member(&self, id: &GroupId, user: &UserId) -> Result<Option<GroupMember>> {
        let raw = self.inner.members.get(key2(id.as_str(), user.as_str().as_bytes())).map_err(storage_err)?;
        raw.map(|b| decode_member(&b)).transpose()
    }

    async fn add_members(&self, id: &GroupId, members: &[GroupMember]) -> Result<MembersAdded> {
        let (id, members) = (id.clone(), members.to_vec());
        self.write_members(id.clone(), move |inner, batch| {
            let id = &id;
            let mut outcome = MembersAdded { added: Vec::new(), member_count: 0 };
            let mut group = inner.load_group(id)?.ok_or_else(|| group_not_found(id))?;
            let mut seen = std::collections::HashSet::new();
            for m in &members {
                let key = key2(id.as_str(), m.user_id.as_str().as_bytes());
                if seen.insert(&m.user_id) && !inner.members.contains_key(&key).map_err(storage_err)? {
                    outcome.added.push(m.user_id.clone());
                    inner.put_member(batch, id, m);
                }
            }
            let count = group.member_count as usize + outcome.added.len();
            if count > group.max_members as usize {
                return Err(Error::limit(
                    "max_members",
                    format!(
                        "group {id} has {} members, adding {} would pass its limit of {}",
                        group.member_count,
                        outcome.added.len(),
                        group.max_members
                    ),
                ));
            }
            group.member_count = count as u32;
            outcome.member_count = group.member_count;
            inner.put_group(batch, group);
            Ok((outcome, Vec::new()))
        })
        .await
    }

    async fn remove_members(&self, id: &GroupId, users: &[UserId]) -> Result<Vec<UserId>> {
        let (id, users) = (id.clone(), users.to_vec());
        self.write_members(id.clone(), move |inner, batch| {
            let mut removed = Vec::new();
            let mut group = inner.load_group(&id)?.ok_or_else(|| group_not_found(&id))?;
            for user in users {
                let key = key2(id.as_str(), user.as_str().as_bytes());
                if !removed.contains(&user) && inner.members.contains_key(&key).map_err(storage_err)? {
                    batch.remove(&inner.members, key);
                    batch.remove(&inner.user_groups, key2(user.as_str(), id.as_str().as_bytes()));
                    removed.push(user);
                }
            }
            group.member_count = group.member_count.saturating_sub(removed.len() as u32);
            inner.put_group(batch, group);
            Ok((removed.clone(), removed))
        })
        .await
    }

    async fn set_role(&self, id: &GroupId, user: &UserId, role: GroupRole) -> Result<()> {
        let (id, user) = (id.clone(), user.clone());
        self.write_batch(move |inner, batch| {
            let key = key2(id.as_str(), user.as_str().as_bytes());
            let raw = inner.members.get(&key).map_err(storage_err)?;
            let mut member = match raw {
                Some(bytes) => decode_member(&bytes)?,
                None => {
                    return Err(Error::not_found(format!("{user} is not a member of group {id}")));
                }
            };
            member.role = role;
            inner.put_member(batch, &id, &member);
            if role == GroupRole::Owner {
                let mut group = inner.load_group(&id)?.ok_or_else(|| group_not_found(&id))?;
                group.owner = user.to_string();
                inner.put_group(batch, group);
            }
            Ok(())
        })
        .await
    }

    async fn delete_group(&self, id: &GroupId) -> Result<()> {
        let id = id.clone();
        self.write_members(id.clone(), move |inner, batch| {
            if inner.load_group(&id)?.is_none() {
                return Err(group_not_found(&id));
            }
            let mut members = Vec::new();
            for item in inner.members.prefix(key2(id.as_str(), &[])) {
                let (key, _) = item.into_inner().map_err(storage_err)?;
                let raw = std::str::from_utf8(&key[id.as_str().len() + 1..]).map_err(storage_err)?;
                let user = UserId::parse(raw, "member")?;
                batch.remove(&inner.user_groups, key2(user.as_str(), id.as_str().as_bytes()));
                batch.remove(&inner.members, key);
                members.push(user);
            }
            batch.remove(&inner.groups, id.as_str());
            Ok(((), members))
        })
        .await
    }

    async fn list_members(&self, id: &GroupId, after: Option<&UserId>, limit: usize) -> Result<Vec<GroupMember>> {
        let lower = match after {
            Some(a) => Bound::Excluded(key2(id.as_str(), a.as_str().as_bytes())),
            None => Bound::Included(key2(id.as_str(), &[])),
        };
        self.inner
            .members
            .range::<Vec<u8>, _>((lower, Bound::Excluded(prefix_end(id.as_str()))))
            .take(limit)
            .map(|item| decode_member(&item.into_inner().map_err(storage_err)?.1))
            .collect()
    }

    async fn member_ids(&self, id: &GroupId) -> Result<Vec<UserId>> {
        let read = || suffix_ids(&self.inner.members, id.as_str(), |raw| UserId::parse(raw, "member"));
        Ok(self.inner.member_cache.load(id, read)?.to_vec())
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        suffix_ids(&self.inner.user_groups, user.as_str(), |raw| GroupId::parse(raw, "group"))
    }
}

/// The ids that follow `prefix \0` in the keys under it (an index keyspace).
fn suffix_ids<T>(keyspace: &Keyspace, prefix: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let skip = prefix.len() + 1;
    keyspace
        .prefix(key2(prefix, &[]))
        .map(|item| {
            let key = item.key().map_err(storage_err)?;
            let raw = std::str::from_utf8(key.get(skip..).unwrap_or_default()).map_err(storage_err)?;
            parse(raw)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::embedded::test_util::*;

    /// A leave in the same writer round as a send to the leaver: the send's
    /// rows are written before the leave closes the run, so the run ends
    /// with that send and not later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leave_in_the_round_of_a_send_closes_the_run_after_it() {
        use crate::conformance::{assert_log_is, group_message, send_to_group};
        let dir = tempfile::tempdir().unwrap();
        let [ann, cat] = ["ann", "cat"].map(|n| UserId::parse(n, "u").unwrap());
        let group = a_group(8, &ann);
        let (first, second) = (group_message(&ann, &group.id, 0), group_message(&ann, &group.id, 1));
        {
            let store = open(dir.path(), 1000);
            let stores = store.stores();
            stores.groups.create_group(&group, &members_of(&[&ann, &cat])).await.unwrap();
            let (release, holder) = store.writer.hold().await;
            let send = tokio::spawn({
                let (stores, first) = (stores.clone(), first.clone());
                async move { send_to_group(&stores, &first).await }
            });
            while store.writer.queued() < 1 {
                tokio::task::yield_now().await;
            }
            let leave = tokio::spawn({
                let (stores, id, cat) = (stores.clone(), group.id.clone(), cat.clone());
                async move { stores.groups.remove_members(&id, &[cat]).await }
            });
            while store.writer.queued() < 2 {
                tokio::task::yield_now().await;
            }
            release.send(()).unwrap();
            holder.await.unwrap().unwrap();
            send.await.unwrap();
            leave.await.unwrap().unwrap();
            send_to_group(&stores, &second).await;
            store.close().await;
        }
        let store = open(dir.path(), 1000);
        assert_log_is(&*store, &cat, std::slice::from_ref(&first)).await;
        assert_log_is(&*store, &ann, &[first, second]).await;
    }

    /// Deleting a group closes its members' open runs: a group made again
    /// under the same id starts its timeline where the old one ended, and a
    /// run left open would cover the new group's messages for someone who
    /// is not in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_group_closes_its_members_runs() {
        use crate::conformance::{assert_log_is, group_message, send_to_group};
        let dir = tempfile::tempdir().unwrap();
        let [ann, cat] = ["ann", "cat"].map(|n| UserId::parse(n, "u").unwrap());
        let group = a_group(9, &ann);
        let sent: Vec<Message> = (0..3).map(|n| group_message(&ann, &group.id, n)).collect();
        {
            let store = open(dir.path(), 1000);
            let stores = store.stores();
            stores.groups.create_group(&group, &members_of(&[&ann, &cat])).await.unwrap();
            send_to_group(&stores, &sent[0]).await;
            send_to_group(&stores, &sent[1]).await;
            stores.groups.delete_group(&group.id).await.unwrap();
            stores.groups.create_group(&group, &members_of(&[&ann])).await.unwrap();
            send_to_group(&stores, &sent[2]).await;
            assert_log_is(&*store, &cat, &sent[..2]).await;
            assert_log_is(&*store, &ann, &sent).await;
            store.close().await;
        }
        let store = open(dir.path(), 1000);
        assert_log_is(&*store, &cat, &sent[..2]).await;
        assert_log_is(&*store, &ann, &sent).await;
    }
}
