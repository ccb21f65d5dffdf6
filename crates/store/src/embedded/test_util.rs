//! Helpers of the embedded store's unit tests.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use natter_runtime::Tasks;
pub(super) use natter_types::{Group, GroupId, GroupMember, GroupRole, LogEvent, Message, MessageId, UserId};

pub(super) use super::{EmbeddedOptions, EmbeddedStore, key2, seq_of};
use crate::Stores;
pub(super) use crate::{Inserted, MessageStore, UserLog};

/// A store with the task set it runs in, kept as long as the test uses it.
pub(super) struct TestStore {
    store: EmbeddedStore,
    tasks: Tasks,
}

impl std::ops::Deref for TestStore {
    type Target = EmbeddedStore;

    fn deref(&self) -> &EmbeddedStore {
        &self.store
    }
}

impl TestStore {
    /// Stops the store (as a process stop does), so that its directory can
    /// be opened again.
    pub(super) async fn close(self) {
        self.tasks.stop(Duration::from_secs(30)).await.unwrap();
    }
}

pub(super) fn open_with(dir: &Path, options: EmbeddedOptions) -> TestStore {
    let tasks = Tasks::new();
    let store = EmbeddedStore::open(dir, options, &tasks).expect("open");
    TestStore { store, tasks }
}

pub(super) fn open(dir: &Path, retention: u64) -> TestStore {
    open_with(dir, EmbeddedOptions { log_retention_events: retention, ..EmbeddedOptions::default() })
}

/// The embedded backend as the conformance suite runs it.
pub(super) struct Backend {
    store: TestStore,
    dir: tempfile::TempDir,
}

/// The log retention of [`Backend`]: small, for the retention check.
const RETENTION: u64 = 5;

/// A store in a directory of its own.
pub(super) async fn conformance_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend { store: open(dir.path(), RETENTION), dir }
}

impl crate::conformance::Backend for Backend {
    fn stores(&self) -> Stores {
        self.store.stores()
    }

    fn retention(&self) -> u64 {
        RETENTION
    }

    async fn reopen(self) -> Self {
        self.store.close().await;
        Backend { store: open(self.dir.path(), RETENTION), dir: self.dir }
    }
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
