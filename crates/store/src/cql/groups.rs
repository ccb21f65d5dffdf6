//! `GroupStore` over CQL: one partition per group (static group columns +
//! one clustering row per member), changed only by single-partition
//! conditional batches on `version`; `user_groups` as a derived index.

use std::collections::HashSet;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use natter_proto::v1;
use natter_types::{Error, ErrorCode, Group, GroupId, GroupMember, GroupRole, Result, UserId};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};

use super::{CqlStore, Inner, Lwt, backoff, cql_limit, error, new_token, now_micros};
use crate::{GroupStore, MembersAdded};

/// Attempts of a group change that keeps losing its conditional update to
/// concurrent changes of the same group.
const MAX_ATTEMPTS: u32 = 200;

/// Index writes and membership checks in flight per call.
const INDEX_CONCURRENCY: usize = 32;

type BatchValues = Vec<Box<dyn SerializeRow + Send + Sync>>;

fn group_not_found(id: &GroupId) -> Error {
    Error::not_found(format!("group {id} does not exist"))
}

fn contention(id: &GroupId) -> Error {
    Error::unavailable(format!("group {id} changed concurrently {MAX_ATTEMPTS} times in a row; try again"))
}

fn role_value(role: GroupRole) -> i32 {
    v1::GroupRole::from(role) as i32
}

fn count_value(n: usize, id: &GroupId) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::internal(format!("group {id} member count overflows")))
}

fn stored_u32(value: Option<i32>, what: &str) -> Result<u32> {
    u32::try_from(value.unwrap_or(0)).map_err(|_| Error::internal(format!("stored group {what} is negative")))
}

/// The group's row as a conditional change sees it.
#[derive(Debug, Clone, Copy)]
struct GroupState {
    version: i64,
    member_count: u32,
    max_members: u32,
    writer: Option<i64>,
}

/// Which of `members` (deduplicated, first occurrence kept) are named.
fn distinct<'a>(members: impl IntoIterator<Item = &'a GroupMember>) -> Vec<&'a GroupMember> {
    let mut seen = HashSet::new();
    members.into_iter().filter(|m| seen.insert(m.user_id.clone())).collect()
}

impl Inner {
    /// The group's version and counts, read linearizably; `None` if there
    /// is no such group.
    async fn group_state(&self, id: &GroupId) -> Result<Option<GroupState>> {
        type Row = (Option<i64>, Option<i32>, Option<i32>, Option<i64>);
        let row: Option<Row> = self.first_row("read group state", &self.st.group_state_serial, (id.as_str(),)).await?;
        match row {
            Some((Some(version), count, max, writer)) => Ok(Some(GroupState {
                version,
                member_count: stored_u32(count, "member_count")?,
                max_members: stored_u32(max, "max_members")?,
                writer,
            })),
            _ => Ok(None),
        }
    }

    /// Which of `users` are members, read linearizably.
    async fn members_among(&self, id: &GroupId, users: &[&str]) -> Result<HashSet<String>> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<(Option<String>,)> =
            self.scan("read members", &self.st.members_in_serial, (id.as_str(), users), usize::MAX).await?;
        Ok(rows.into_iter().filter_map(|(u,)| u).collect())
    }

    /// Runs a single-partition conditional batch.
    async fn conditional_batch(
        &self,
        batch: &Batch,
        values: BatchValues,
    ) -> std::result::Result<Lwt, scylla::errors::ExecutionError> {
        let result = self.session.batch(batch, values).await?;
        Ok(Lwt::from_result("group change", result))
    }

    /// Index rows `(user, group)` written with the version that makes the
    /// users members (before that change is applied).
    async fn index_put(&self, id: &GroupId, users: &[&UserId], version: i64) -> Result<()> {
        let writes: Vec<_> = users
            .iter()
            .map(|user| {
                self.execute("write user groups index", &self.st.index_insert, (user.as_str(), id.as_str(), version))
            })
            .collect();
        stream::iter(writes).buffer_unordered(INDEX_CONCURRENCY).try_for_each(|_| async { Ok(()) }).await
    }

    /// Index rows deleted with the version that removed the users (after
    /// that change). Best effort: `user_groups` ignores rows that are not
    /// backed by a member row.
    async fn index_delete(&self, id: &GroupId, users: &[String], version: i64) {
        let deletes: Vec<_> = users
            .iter()
            .map(|user| {
                self.execute("delete user groups index", &self.st.index_delete, (version, user.as_str(), id.as_str()))
            })
            .collect();
        let result = stream::iter(deletes).buffer_unordered(INDEX_CONCURRENCY).try_for_each(|_| async { Ok(()) }).await;
        if let Err(e) = result {
            tracing::warn!(group = %id, error = %e, "user groups index not cleaned; reads filter it");
        }
    }

    /// After a conditional change whose answer was lost: did our change
    /// (`token`, `version`) win?
    async fn group_change_won(&self, id: &GroupId, version: i64, token: i64) -> Result<bool> {
        Ok(self.group_state(id).await?.is_some_and(|s| s.version == version && s.writer == Some(token)))
    }

    async fn member_row(&self, id: &GroupId, user: &str) -> Result<Option<GroupMember>> {
        let row: Option<(Option<i32>, Option<i64>, Option<i64>)> =
            self.first_row("read member", &self.st.member_get, (id.as_str(), user)).await?;
        match row {
            Some((Some(role), joined_at, Some(_version))) => Ok(Some(GroupMember {
                user_id: UserId::parse(user, "member")
                    .map_err(|e| Error::internal(format!("stored member id: {}", e.message)))?,
                role: natter_proto::group_role(role)?,
                joined_at: joined_at.unwrap_or(0),
            })),
            _ => Ok(None),
        }
    }
}

type MemberRow = (Option<String>, Option<i32>, Option<i64>, Option<i64>);

/// A member row of a live group (`version` set); `None` for the static-only
/// row of a group without members and for rows of a dissolved group.
fn member_of(row: MemberRow) -> Result<Option<GroupMember>> {
    let (Some(user), Some(role), joined_at, Some(_version)) = row else {
        return Ok(None);
    };
    Ok(Some(GroupMember {
        user_id: UserId::parse(&user, "member")
            .map_err(|e| Error::internal(format!("stored member id: {}", e.message)))?,
        role: natter_proto::group_role(role)?,
        joined_at: joined_at.unwrap_or(0),
    }))
}

#[async_trait]
impl GroupStore for CqlStore {
    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<()> {
        let inner = &*self.inner;
        let members = distinct(members);
        let version = now_micros();
        let token = new_token();
        let users: Vec<&UserId> = members.iter().map(|m| &m.user_id).collect();
        inner.index_put(&group.id, &users, version).await?;

        let mut batch = Batch::new(BatchType::Logged);
        let mut values: BatchValues = Vec::with_capacity(members.len() + 1);
        batch.append_statement(inner.st.group_create.clone());
        values.push(Box::new((
            group.id.to_string(),
            group.name.clone(),
            group.description.clone(),
            group.owner.to_string(),
            group.created_at,
            count_value(members.len(), &group.id)?,
            i32::try_from(group.max_members).unwrap_or(i32::MAX),
            version,
            token,
        )));
        for m in &members {
            batch.append_statement(inner.st.member_insert.clone());
            values.push(Box::new((group.id.to_string(), m.user_id.to_string(), role_value(m.role), m.joined_at)));
        }
        match inner.conditional_batch(&batch, values).await {
            Ok(lwt) => {
                if lwt.checked()?.applied {
                    Ok(())
                } else {
                    Err(Error::new(ErrorCode::Conflict, format!("group {} exists", group.id)))
                }
            }
            Err(e) if error::outcome_unknown(&e) => {
                if inner.group_change_won(&group.id, version, token).await? {
                    Ok(())
                } else if inner.group_state(&group.id).await?.is_some() {
                    Err(Error::new(ErrorCode::Conflict, format!("group {} exists", group.id)))
                } else {
                    Err(error::execution("create group", e))
                }
            }
            Err(e) => Err(error::execution("create group", e)),
        }
    }

    async fn get_group(&self, id: &GroupId) -> Result<Option<Group>> {
        let inner = &*self.inner;
        type Row = (Option<String>, Option<String>, Option<String>, Option<i64>, Option<i32>, Option<i32>, Option<i64>);
        let row: Option<Row> = inner.first_row("get group", &inner.st.group_get, (id.as_str(),)).await?;
        let Some((name, description, owner, created_at, count, max, Some(_version))) = row else {
            return Ok(None);
        };
        Ok(Some(Group {
            id: id.clone(),
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            owner: UserId::parse(owner.as_deref().unwrap_or_default(), "owner")
                .map_err(|e| Error::internal(format!("stored group owner: {}", e.message)))?,
            created_at: created_at.unwrap_or(0),
            member_count: stored_u32(count, "member_count")?,
            max_members: stored_u32(max, "max_members")?,
        }))
    }

    async fn get_member(&self, id: &GroupId, user: &UserId) -> Result<Option<GroupMember>> {
        self.inner.member_row(id, user.as_str()).await
    }

    async fn add_members(&self, id: &GroupId, members: &[GroupMember]) -> Result<MembersAdded> {
        let inner = &*self.inner;
        let requested = distinct(members);
        let names: Vec<&str> = requested.iter().map(|m| m.user_id.as_str()).collect();
        for attempt in 0..MAX_ATTEMPTS {
            let state = inner.group_state(id).await?.ok_or_else(|| group_not_found(id))?;
            let existing = inner.members_among(id, &names).await?;
            let new: Vec<&GroupMember> =
                requested.iter().copied().filter(|m| !existing.contains(m.user_id.as_str())).collect();
            let count = state.member_count as usize + new.len();
            if count > state.max_members as usize {
                return Err(Error::limit(
                    "max_members",
                    format!(
                        "group {id} has {} members, adding {} would pass its limit of {}",
                        state.member_count,
                        new.len(),
                        state.max_members
                    ),
                ));
            }
            if new.is_empty() {
                return Ok(MembersAdded { added: Vec::new(), member_count: state.member_count });
            }
            let version = state.version + 1;
            let token = new_token();
            let users: Vec<&UserId> = new.iter().map(|m| &m.user_id).collect();
            inner.index_put(id, &users, version).await?;

            let mut batch = Batch::new(BatchType::Logged);
            let mut values: BatchValues = Vec::with_capacity(new.len() + 1);
            batch.append_statement(inner.st.group_count_cas.clone());
            values.push(Box::new((count_value(count, id)?, version, token, id.to_string(), state.version)));
            for m in &new {
                batch.append_statement(inner.st.member_insert.clone());
                values.push(Box::new((id.to_string(), m.user_id.to_string(), role_value(m.role), m.joined_at)));
            }
            let won = match inner.conditional_batch(&batch, values).await {
                Ok(lwt) => lwt.checked()?.applied,
                Err(e) if error::outcome_unknown(&e) => inner.group_change_won(id, version, token).await?,
                Err(e) => return Err(error::execution("add members", e)),
            };
            if won {
                return Ok(MembersAdded {
                    added: new.iter().map(|m| m.user_id.clone()).collect(),
                    member_count: count as u32,
                });
            }
            backoff(attempt).await;
        }
        Err(contention(id))
    }

    async fn remove_members(&self, id: &GroupId, users: &[UserId]) -> Result<Vec<UserId>> {
        let inner = &*self.inner;
        let mut seen = HashSet::new();
        let requested: Vec<&UserId> = users.iter().filter(|u| seen.insert(*u)).collect();
        let names: Vec<&str> = requested.iter().map(|u| u.as_str()).collect();
        for attempt in 0..MAX_ATTEMPTS {
            let state = inner.group_state(id).await?.ok_or_else(|| group_not_found(id))?;
            let existing = inner.members_among(id, &names).await?;
            let removed: Vec<UserId> =
                requested.iter().filter(|u| existing.contains(u.as_str())).map(|u| (*u).clone()).collect();
            if removed.is_empty() {
                return Ok(removed);
            }
            let version = state.version + 1;
            let token = new_token();
            let count = (state.member_count as usize).saturating_sub(removed.len());
            let mut batch = Batch::new(BatchType::Logged);
            let mut values: BatchValues = Vec::with_capacity(removed.len() + 1);
            batch.append_statement(inner.st.group_count_cas.clone());
            values.push(Box::new((count_value(count, id)?, version, token, id.to_string(), state.version)));
            for user in &removed {
                batch.append_statement(inner.st.member_delete.clone());
                values.push(Box::new((id.to_string(), user.to_string())));
            }
            let won = match inner.conditional_batch(&batch, values).await {
                Ok(lwt) => lwt.checked()?.applied,
                Err(e) if error::outcome_unknown(&e) => inner.group_change_won(id, version, token).await?,
                Err(e) => return Err(error::execution("remove members", e)),
            };
            if won {
                let names: Vec<String> = removed.iter().map(ToString::to_string).collect();
                inner.index_delete(id, &names, version).await;
                return Ok(removed);
            }
            backoff(attempt).await;
        }
        Err(contention(id))
    }

    async fn set_role(&self, id: &GroupId, user: &UserId, role: GroupRole) -> Result<()> {
        let inner = &*self.inner;
        for attempt in 0..MAX_ATTEMPTS {
            let row: Option<(Option<i32>, Option<i64>)> =
                inner.first_row("read member", &inner.st.member_get_serial, (id.as_str(), user.as_str())).await?;
            let Some((Some(_), Some(version))) = row else {
                return Err(Error::not_found(format!("{user} is not a member of group {id}")));
            };
            let mut batch = Batch::new(BatchType::Logged);
            let mut values: BatchValues = Vec::with_capacity(2);
            batch.append_statement(inner.st.member_role_cas.clone());
            values.push(Box::new((role_value(role), id.to_string(), user.to_string(), version)));
            if role == GroupRole::Owner {
                batch.append_statement(inner.st.group_set_owner.clone());
                values.push(Box::new((user.to_string(), id.to_string())));
            }
            match inner.conditional_batch(&batch, values).await {
                Ok(lwt) => {
                    if lwt.checked()?.applied {
                        return Ok(());
                    }
                }
                // Setting a role again is harmless: re-check and retry.
                Err(e) if error::outcome_unknown(&e) => {}
                Err(e) => return Err(error::execution("set role", e)),
            }
            backoff(attempt).await;
        }
        Err(contention(id))
    }

    async fn delete_group(&self, id: &GroupId) -> Result<()> {
        let inner = &*self.inner;
        for attempt in 0..MAX_ATTEMPTS {
            let state = inner.group_state(id).await?.ok_or_else(|| group_not_found(id))?;
            // Membership only changes with the version: if the conditional
            // delete applies, this list is exact.
            let members: Vec<String> = inner
                .scan::<MemberRow>("list members", &inner.st.members_all, (id.as_str(),), usize::MAX)
                .await?
                .into_iter()
                .filter_map(|(user, ..)| user)
                .collect();
            let won = match inner
                .conditional("dissolve group", &inner.st.group_dissolve_cas, (id.as_str(), state.version))
                .await
            {
                Ok(lwt) => lwt.checked()?.applied,
                Err(e) if error::outcome_unknown(&e) => inner.group_state(id).await?.is_none(),
                Err(e) => return Err(error::execution("dissolve group", e)),
            };
            if won {
                inner.index_delete(id, &members, state.version + 1).await;
                if let Err(e) = inner.execute("purge group", &inner.st.group_purge, (id.as_str(),)).await {
                    tracing::warn!(group = %id, error = %e, "dissolved group's rows not purged; reads ignore them");
                }
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(contention(id))
    }

    async fn list_members(&self, id: &GroupId, after: Option<&UserId>, limit: usize) -> Result<Vec<GroupMember>> {
        let inner = &*self.inner;
        let rows: Vec<MemberRow> = match after {
            Some(after) => {
                inner
                    .scan(
                        "list members",
                        &inner.st.members_after,
                        (id.as_str(), after.as_str(), cql_limit(limit)),
                        limit,
                    )
                    .await?
            }
            None => inner.scan("list members", &inner.st.members_first, (id.as_str(), cql_limit(limit)), limit).await?,
        };
        let mut members = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(m) = member_of(row)? {
                members.push(m);
            }
        }
        Ok(members)
    }

    async fn member_ids(&self, id: &GroupId) -> Result<Vec<UserId>> {
        let inner = &*self.inner;
        let rows: Vec<MemberRow> =
            inner.scan("list members", &inner.st.members_all, (id.as_str(),), usize::MAX).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(m) = member_of(row)? {
                ids.push(m.user_id);
            }
        }
        Ok(ids)
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        let inner = &*self.inner;
        let rows: Vec<(Option<String>,)> =
            inner.scan("read user groups index", &inner.st.index_scan, (user.as_str(),), usize::MAX).await?;
        let candidates = rows
            .into_iter()
            .filter_map(|(g,)| g)
            .map(|g| {
                GroupId::parse(&g, "group").map_err(|e| Error::internal(format!("stored group id: {}", e.message)))
            })
            .collect::<Result<Vec<_>>>()?;
        // The index may hold extra rows (a change that failed after writing
        // it, or a removal whose index delete was lost): keep those backed
        // by a member row.
        let checks: Vec<_> = candidates
            .into_iter()
            .map(|g| async move { Ok::<_, Error>(inner.member_row(&g, user.as_str()).await?.map(|_| g)) })
            .collect();
        let checked: Vec<Option<GroupId>> = stream::iter(checks).buffered(INDEX_CONCURRENCY).try_collect().await?;
        Ok(checked.into_iter().flatten().collect())
    }
}
