//! Helpers of the embedded store's unit tests.
#![allow(clippy::unwrap_used)]

pub(super) use natter_types::{Group, GroupId, GroupMember, GroupRole, LogEvent, Message, MessageId, UserId};

pub(super) use super::{EmbeddedOptions, EmbeddedStore, key2, seq_of};
pub(super) use crate::{Inserted, MessageStore, UserLog};
use std::path::Path;

pub(super) fn open(dir: &Path, retention: u64) -> EmbeddedStore {
    EmbeddedStore::open(dir, EmbeddedOptions { log_retention_events: retention, ..EmbeddedOptions::default() })
        .expect("open")
}

/// Any event: the log does not look inside.
pub(super) fn group_created() -> LogEvent {
    group_created_n(1)
}

/// An event told apart by `n`.
pub(super) fn group_created_n(n: u64) -> LogEvent {
    LogEvent::GroupChange(natter_types::GroupChange {
        kind: natter_types::GroupChangeKind::Created,
        group_id: GroupId::from_id(n),
        group_name: String::new(),
        operator: UserId::system(),
        members: vec![],
        time: 0,
    })
}

/// Runs the writes of `jobs` (started at once) in one writer round: the
/// writer is held in a round of its own until all of them are queued.
pub(super) async fn in_one_round<T: Send + 'static>(
    store: &EmbeddedStore,
    jobs: Vec<futures::future::BoxFuture<'static, T>>,
) -> Vec<T> {
    let (release, holder) = store.writer.hold().await;
    let n = jobs.len();
    let tasks: Vec<_> = jobs.into_iter().map(tokio::spawn).collect();
    while store.writer.queued() < n {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Appends events `from..to` (as group ids) to the users, in one round.
pub(super) async fn append_in_one_round(store: &EmbeddedStore, users: &[UserId], events: std::ops::Range<u64>) {
    let jobs = events
        .map(|n| {
            let (store, users) = (store.clone(), users.to_vec());
            Box::pin(async move { UserLog::append(&store, &users, &group_created_n(n)).await.unwrap() })
                as futures::future::BoxFuture<'static, _>
        })
        .collect();
    in_one_round(store, jobs).await;
}

pub(super) fn rows_of(store: &EmbeddedStore, user: &str) -> Vec<u64> {
    store.inner.log.prefix(key2(user, &[])).map(|g| seq_of(&g.key().unwrap())).collect()
}

pub(super) fn users(n: usize) -> Vec<UserId> {
    (0..n).map(|i| UserId::parse(&format!("u{i}"), "u").unwrap()).collect()
}

/// An event of about 1 KB.
pub(super) fn kilobyte_event() -> LogEvent {
    let mut event = group_created();
    if let LogEvent::GroupChange(change) = &mut event {
        change.group_name = "x".repeat(1000);
    }
    event
}

pub(super) fn a_group(id: u64, owner: &UserId) -> Group {
    Group {
        id: GroupId::from_id(id),
        name: "g".into(),
        description: String::new(),
        owner: owner.clone(),
        created_at: 0,
        member_count: 0,
        max_members: 10,
    }
}

pub(super) fn members_of(users: &[&UserId]) -> Vec<GroupMember> {
    users.iter().map(|u| GroupMember { user_id: (*u).clone(), role: GroupRole::Member, joined_at: 0 }).collect()
}
