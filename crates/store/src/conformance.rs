//! The conformance suite every storage backend must pass, unchanged. A
//! backend's tests expand [`conformance_tests!`](crate::conformance_tests),
//! which makes one test per check, each on a backend of its own setup; names
//! are unique per run so a shared database (e.g. a CQL cluster) can be reused.

#![allow(clippy::unwrap_used)] // a test suite: a failed unwrap is a failed check

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_types::{
    ChatType, ConversationKey, ErrorCode, Group, GroupChange, GroupChangeKind, GroupId, GroupMember, GroupRole,
    IdGenerator, LogEvent, Message, MessageBody, MessageId, Reader, SessionId, SessionInfo, SessionStatus,
    Subscription, UserId, WebhookEvent,
};

use crate::{
    Appended, ConversationChange, ConversationHead, Direction, Inserted, Leases, SessionRegistry, Stored, Stores,
    UserConversation, UserLog, claim_node_id,
};

static RUN: AtomicU64 = AtomicU64::new(0);

/// A prefix unique to this test run and call.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{name}{}x{}", nanos % 1_000_000_000_000, RUN.fetch_add(1, Ordering::Relaxed))
}

fn user(name: &str) -> UserId {
    UserId::parse(&unique(name), "user").expect("valid test user id")
}

fn ids() -> &'static IdGenerator {
    static IDS: std::sync::OnceLock<IdGenerator> = std::sync::OnceLock::new();
    IDS.get_or_init(|| IdGenerator::new(1))
}

pub fn text_message(from: &UserId, to: &UserId, client_msg_id: &str, text: &str) -> Message {
    let id = ids().next();
    Message {
        id,
        client_msg_id: client_msg_id.to_owned(),
        from: from.clone(),
        to: to.to_string(),
        chat_type: ChatType::Single,
        timestamp: id.timestamp_ms(),
        body: MessageBody::Text(text.to_owned()),
        ext: [("k".to_owned(), "v".to_owned())].into(),
        from_system: false,
        allow_group_ack: false,
        pos: 0,
    }
}

fn member(user: &UserId, role: GroupRole) -> GroupMember {
    GroupMember { user_id: user.clone(), role, joined_at: natter_types::now_ms() }
}

fn new_group(owner: &UserId, max_members: u32) -> Group {
    Group {
        id: GroupId::from_id(ids().next().0),
        name: "g".into(),
        description: String::new(),
        owner: owner.clone(),
        created_at: natter_types::now_ms(),
        member_count: 0,
        max_members,
    }
}

/// A store backend as the suite's setup makes one for each check.
pub trait Backend: Sized {
    fn stores(&self) -> Stores;
    /// The log retention (events per user) the backend was opened with; at
    /// most 20, for the retention check.
    fn retention(&self) -> u64;
    /// The same data opened again, as after a restart (for a shared
    /// database: as another process).
    fn reopen(self) -> impl Future<Output = Self>;
}

/// Expands to one `#[tokio::test]` per conformance check, named after the
/// check, so that one failing check does not hide the others. Each test
/// calls the setup, `async fn() -> _`, for what it checks:
///
/// - `conformance_tests!(stores: setup)`: a [`Backend`](crate::conformance::Backend);
/// - `conformance_tests!(registry: setup)`: the `SessionRegistry`s standing for
///   processes that share one registry (one instance twice for an in-process
///   registry), as a `Vec` or an array of `Arc<dyn SessionRegistry>`;
/// - `conformance_tests!(leases: setup)`: the same for `Arc<dyn Leases>`.
///
/// Checks that expire gateway leases take
/// [`EXPIRING_LEASES`](crate::conformance::EXPIRING_LEASES) while they run.
#[macro_export]
macro_rules! conformance_tests {
    (stores: $setup:path) => {
        $crate::conformance_tests!(@stores $setup;
            messages_insert_is_idempotent,
            messages_insert_and_append_fans_out_once,
            messages_idempotency_holds_for_the_window,
            messages_history_pages_both_ways,
            groups_lifecycle,
            groups_size_limit_is_all_or_nothing,
            log_appends_in_order_per_user,
            log_group_sends_follow_membership,
            log_ack_only_moves_forward,
            presence_subscriptions_expire_cap_and_page,
            presence_fields_round_trip,
            webhook_outbox_is_an_ordered_queue_per_receiver,
            conversations_counted_sends_take_dense_positions,
            conversations_duplicate_keeps_its_position,
            conversations_uncounted_send_has_no_position,
            conversations_one_to_one_send_creates_both_states,
            conversations_system_send_gives_the_system_no_state,
            conversations_group_send_writes_only_the_senders_state,
            conversations_update_applies_each_change,
            conversations_concurrent_changes_keep_each_field,
            conversations_hidden_is_listed_again_after_a_new_message,
            conversations_removed_messages_ascend_after_the_bound,
            conversations_recalls_are_per_conversation_and_idempotent,
            receipts_count_each_reader_once,
            receipts_page_readers_by_user_id,
            receipts_concurrent_readers_are_all_counted
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn log_retention_expires_old_cursors() {
            let backend = $setup().await;
            let stores = $crate::conformance::Backend::stores(&backend);
            let retention = $crate::conformance::Backend::retention(&backend);
            $crate::conformance::log_retention_expires_old_cursors(&stores, retention).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sample_survives_a_restart() {
            $crate::conformance::sample_survives_a_restart($setup().await).await;
        }
    };
    (registry: $setup:path) => {
        $crate::conformance_tests!(@one $setup; registry_keeps_the_newest_sessions);
        $crate::conformance_tests!(@one expiring $setup; registry_expired_leases_take_their_gateways_sessions);
        $crate::conformance_tests!(@all $setup;
            registry_cap_holds_under_concurrent_registers,
            registry_concurrent_changes_lose_and_duplicate_nothing
        );
        $crate::conformance_tests!(@all expiring $setup; registry_concurrent_expirers_return_each_session_once);
    };
    (leases: $setup:path) => {
        $crate::conformance_tests!(@one $setup; leases_are_exclusive_and_renewable);
        $crate::conformance_tests!(@all $setup; claim_node_id_gives_distinct_ids);
    };
    (@stores $setup:path; $($check:ident),+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let backend = $setup().await;
            $crate::conformance::$check(&$crate::conformance::Backend::stores(&backend)).await;
        }
    )+};
    (@one $setup:path; $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let instances = $setup().await;
            $crate::conformance::$check(instances[0].as_ref()).await;
        }
    };
    (@one expiring $setup:path; $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let _one_at_a_time = $crate::conformance::EXPIRING_LEASES.lock().await;
            let instances = $setup().await;
            $crate::conformance::$check(instances[0].as_ref()).await;
        }
    };
    (@all $setup:path; $($check:ident),+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let instances = $setup().await;
            $crate::conformance::$check(&instances).await;
        }
    )+};
    (@all expiring $setup:path; $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let _one_at_a_time = $crate::conformance::EXPIRING_LEASES.lock().await;
            let instances = $setup().await;
            $crate::conformance::$check(&instances).await;
        }
    };
}

/// Held by each check that expires gateway leases: they use lease times near
/// 0 and expire every lease below them, so on a shared registry they run one
/// at a time (as must any other test of that registry that expires leases).
pub static EXPIRING_LEASES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn messages_insert_is_idempotent(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let first = text_message(&a, &b, "c1", "hello");
    assert_eq!(stores.messages.insert_message(&first).await.unwrap(), Inserted::New);

    let retry = text_message(&a, &b, "c1", "hello again");
    match stores.messages.insert_message(&retry).await.unwrap() {
        Inserted::Duplicate { message, fanned_out } => {
            assert_eq!(message, first, "a retry returns the stored message");
            assert!(!fanned_out);
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
    stores.messages.mark_fanned_out(&a, "c1").await.unwrap();
    match stores.messages.insert_message(&retry).await.unwrap() {
        Inserted::Duplicate { fanned_out, .. } => assert!(fanned_out),
        other => panic!("expected duplicate, got {other:?}"),
    }
    // Same client id from another sender is another message.
    let other = text_message(&b, &a, "c1", "mine");
    assert_eq!(stores.messages.insert_message(&other).await.unwrap(), Inserted::New);

    let conv = ConversationKey::single(&a, &b);
    let got = stores.messages.get_message(&conv, first.id).await.unwrap();
    assert_eq!(got.as_ref(), Some(&first));
    let page = stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(page, vec![first, other], "retry stored once");
}

pub async fn messages_insert_and_append_fans_out_once(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let log = stores.log.as_ref();
    let message = text_message(&a, &b, "s1", "hi");
    let stored = stores.messages.insert_and_append(&message, &[a.clone(), b.clone()], false, log).await.unwrap();
    assert_eq!(stored, Stored { message: message.clone(), duplicate: false, appended: vec![at(1), at(1)] });
    for who in [&a, &b] {
        let page = stores.log.read(who, 0, 10).await.unwrap().unwrap();
        assert_eq!(page.events, vec![(1, LogEvent::Message(message.clone()))], "{who}'s log has the message once");
    }
    let conv = message.conversation();
    assert_eq!(stores.messages.get_message(&conv, message.id).await.unwrap().as_ref(), Some(&message));

    // A retry (another id, another text) returns the stored one and appends nothing.
    let retry = text_message(&a, &b, "s1", "hi again");
    let again = stores.messages.insert_and_append(&retry, &[a.clone(), b.clone()], false, log).await.unwrap();
    assert_eq!(again, Stored { message: message.clone(), duplicate: true, appended: vec![] });
    assert_eq!(stores.log.bounds(&b).await.unwrap().0, 1, "nothing appended by the retry");
    match stores.messages.insert_message(&retry).await.unwrap() {
        Inserted::Duplicate { fanned_out, .. } => assert!(fanned_out, "marked fanned out"),
        other => panic!("expected duplicate, got {other:?}"),
    }

    // Stored but never fanned out (a crash between the steps): the retry finishes it, once.
    let interrupted = text_message(&a, &b, "s2", "half");
    assert_eq!(stores.messages.insert_message(&interrupted).await.unwrap(), Inserted::New);
    let finished =
        stores.messages.insert_and_append(&retry_of(&interrupted), &[a.clone(), b.clone()], false, log).await;
    assert_eq!(
        finished.unwrap(),
        Stored { message: interrupted.clone(), duplicate: true, appended: vec![at(2), at(2)] }
    );
    let page = stores.log.read(&b, 1, 10).await.unwrap().unwrap();
    assert_eq!(page.events, vec![(2, LogEvent::Message(interrupted.clone()))]);
    let once_more = stores.messages.insert_and_append(&interrupted, &[a.clone(), b.clone()], false, log).await.unwrap();
    assert!(once_more.duplicate && once_more.appended.is_empty());
    assert_eq!(stores.log.bounds(&a).await.unwrap().0, 2);
}

/// A client message id is idempotent for the window after the stored
/// message's timestamp (the backend's default window): a send stamped at its
/// end is a duplicate, one stamped after it is a new message, and that one is
/// what later retries get. Both ways of storing a send.
pub async fn messages_idempotency_holds_for_the_window(stores: &Stores) {
    let window_ms = i64::try_from(crate::DEFAULT_IDEMPOTENCY_WINDOW.as_millis()).unwrap();
    let (a, b) = (user("a"), user("b"));
    let stamped =
        |client: &str, timestamp: i64, text: &str| Message { timestamp, ..text_message(&a, &b, client, text) };

    let first = text_message(&a, &b, "w1", "first");
    assert_eq!(stores.messages.insert_message(&first).await.unwrap(), Inserted::New);
    let at_the_end = stamped("w1", first.timestamp + window_ms, "at the end");
    match stores.messages.insert_message(&at_the_end).await.unwrap() {
        Inserted::Duplicate { message, .. } => assert_eq!(message, first, "still within the window"),
        other => panic!("expected duplicate, got {other:?}"),
    }
    let after = stamped("w1", first.timestamp + window_ms + 1, "after");
    assert_eq!(stores.messages.insert_message(&after).await.unwrap(), Inserted::New, "past the window");
    match stores.messages.insert_message(&stamped("w1", after.timestamp + 1, "retry")).await.unwrap() {
        Inserted::Duplicate { message, fanned_out } => {
            assert_eq!(message, after, "the new record answers");
            assert!(!fanned_out, "the new message is not fanned out yet");
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
    let conv = ConversationKey::single(&a, &b);
    let page = stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(page, vec![first, after], "both are in the history");

    let log = stores.log.as_ref();
    let users = [a.clone(), b.clone()];
    let sent = text_message(&a, &b, "w2", "sent");
    assert!(!stores.messages.insert_and_append(&sent, &users, false, log).await.unwrap().duplicate);
    let resent = stamped("w2", sent.timestamp + window_ms + 1, "resent");
    let stored = stores.messages.insert_and_append(&resent, &users, false, log).await.unwrap();
    assert_eq!(stored, Stored { message: resent.clone(), duplicate: false, appended: vec![at(2), at(2)] });
    let retried =
        stores.messages.insert_and_append(&stamped("w2", resent.timestamp, "again"), &users, false, log).await;
    assert_eq!(retried.unwrap(), Stored { message: resent, duplicate: true, appended: vec![] });
}

/// Seq `n` right after `n - 1`.
fn at(seq: u64) -> Appended {
    Appended { seq, prev: seq - 1 }
}

/// The same client message id sent again: a new server id.
fn retry_of(message: &Message) -> Message {
    text_message(&message.from, &UserId::parse(&message.to, "to").unwrap(), &message.client_msg_id, "retried")
}

pub async fn messages_history_pages_both_ways(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let mut sent = Vec::new();
    for i in 0..7 {
        let m = text_message(&a, &b, &format!("m{i}"), &format!("text {i}"));
        stores.messages.insert_message(&m).await.unwrap();
        sent.push(m);
    }
    // Another conversation must not leak in.
    stores.messages.insert_message(&text_message(&a, &c, "x", "other")).await.unwrap();
    let conv = ConversationKey::single(&b, &a);

    let newest = stores.messages.history(&conv, None, Direction::Up, 3).await.unwrap();
    assert_eq!(newest, sent[4..].iter().rev().cloned().collect::<Vec<_>>());
    let older = stores.messages.history(&conv, Some(newest[2].id), Direction::Up, 3).await.unwrap();
    assert_eq!(older, sent[1..4].iter().rev().cloned().collect::<Vec<_>>());
    let oldest = stores.messages.history(&conv, None, Direction::Down, 2).await.unwrap();
    assert_eq!(oldest, sent[..2].to_vec());
    let after = stores.messages.history(&conv, Some(sent[5].id), Direction::Down, 10).await.unwrap();
    assert_eq!(after, vec![sent[6].clone()]);
}

pub async fn groups_lifecycle(stores: &Stores) {
    let g = &stores.groups;
    let (owner, x, y, z) = (user("o"), user("x"), user("y"), user("z"));
    let group = new_group(&owner, 10);
    // Read before every change, so that a backend keeping member lists must
    // notice each change (create, add, remove, delete).
    assert!(g.member_ids(&group.id).await.unwrap().is_empty(), "no such group yet");
    g.create_group(&group, &[member(&owner, GroupRole::Owner), member(&x, GroupRole::Member)]).await.unwrap();
    let mut ids = g.member_ids(&group.id).await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![owner.clone(), x.clone()]);
    let err = g.create_group(&group, &[member(&owner, GroupRole::Owner)]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);

    let stored = g.get_group(&group.id).await.unwrap().expect("group exists");
    assert_eq!(stored.member_count, 2);
    assert_eq!(stored.owner, owner);

    let added = g
        .add_members(
            &group.id,
            &[member(&x, GroupRole::Member), member(&y, GroupRole::Member), member(&z, GroupRole::Member)],
        )
        .await
        .unwrap();
    assert_eq!(added.added, vec![y.clone(), z.clone()], "existing members are skipped");
    assert_eq!(added.member_count, 4);

    g.set_role(&group.id, &y, GroupRole::Admin).await.unwrap();
    assert_eq!(g.get_member(&group.id, &y).await.unwrap().map(|m| m.role), Some(GroupRole::Admin));
    let err = g.set_role(&group.id, &user("nobody"), GroupRole::Admin).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);

    let mut everyone = vec![owner.clone(), x.clone(), y.clone(), z.clone()];
    everyone.sort();
    let mut ids = g.member_ids(&group.id).await.unwrap();
    ids.sort();
    assert_eq!(ids, everyone);

    let first = g.list_members(&group.id, None, 3).await.unwrap();
    assert_eq!(first.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>(), everyone[..3].to_vec());
    let rest = g.list_members(&group.id, Some(&first[2].user_id), 3).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>(), everyone[3..].to_vec());

    assert_eq!(g.user_groups(&z).await.unwrap(), vec![group.id.clone()]);
    let removed = g.remove_members(&group.id, &[z.clone(), user("nobody")]).await.unwrap();
    assert_eq!(removed, vec![z.clone()]);
    assert!(g.user_groups(&z).await.unwrap().is_empty());
    assert_eq!(g.get_group(&group.id).await.unwrap().map(|g| g.member_count), Some(3));
    assert!(g.get_member(&group.id, &z).await.unwrap().is_none());
    let mut ids = g.member_ids(&group.id).await.unwrap();
    ids.sort();
    assert_eq!(ids, everyone[..3].to_vec(), "{z} removed");

    g.delete_group(&group.id).await.unwrap();
    assert!(g.get_group(&group.id).await.unwrap().is_none());
    assert!(g.user_groups(&x).await.unwrap().is_empty());
    assert!(g.member_ids(&group.id).await.unwrap().is_empty());
    assert_eq!(g.delete_group(&group.id).await.unwrap_err().code, ErrorCode::NotFound);
}

pub async fn groups_size_limit_is_all_or_nothing(stores: &Stores) {
    let g = &stores.groups;
    let owner = user("o");
    let group = new_group(&owner, 3);
    g.create_group(&group, &[member(&owner, GroupRole::Owner)]).await.unwrap();
    let three = [user("p"), user("q"), user("r")].map(|u| member(&u, GroupRole::Member));
    let err = g.add_members(&group.id, &three).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitExceeded);
    assert_eq!(err.field.as_deref(), Some("max_members"));
    assert_eq!(g.member_ids(&group.id).await.unwrap(), vec![owner.clone()], "nothing half-written");
    assert_eq!(g.get_group(&group.id).await.unwrap().map(|g| g.member_count), Some(1));
    g.add_members(&group.id, &three[..2]).await.unwrap();
    assert_eq!(g.get_group(&group.id).await.unwrap().map(|g| g.member_count), Some(3));
}

fn change(n: usize) -> LogEvent {
    LogEvent::GroupChange(GroupChange {
        kind: GroupChangeKind::MembersAdded,
        group_id: GroupId::from_id(n as u64 + 1),
        group_name: format!("n{n}"),
        operator: UserId::system(),
        members: vec![],
        time: n as i64,
    })
}

pub async fn log_appends_in_order_per_user(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    assert_eq!(stores.log.bounds(&a).await.unwrap(), (0, 0));
    let seqs = |appended: Vec<crate::Appended>| appended.iter().map(|a| (a.prev, a.seq)).collect::<Vec<_>>();
    assert_eq!(seqs(stores.log.append(&[a.clone(), b.clone()], &change(0)).await.unwrap()), vec![(0, 1), (0, 1)]);
    assert_eq!(seqs(stores.log.append(std::slice::from_ref(&a), &change(1)).await.unwrap()), vec![(1, 2)]);
    assert_eq!(seqs(stores.log.append(&[b.clone(), a.clone()], &change(2)).await.unwrap()), vec![(1, 2), (2, 3)]);
    let page = stores.log.read(&a, 0, 10).await.unwrap().unwrap();
    assert_eq!(page.head, 3);
    assert_eq!(page.events, vec![(1, change(0)), (2, change(1)), (3, change(2))]);
    let page = stores.log.read(&a, 1, 1).await.unwrap().unwrap();
    assert_eq!(page.events, vec![(2, change(1))], "limit and cursor respected");
    let page = stores.log.read(&b, 2, 10).await.unwrap().unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.head, 2);
    let message = LogEvent::Message(text_message(&a, &b, "c", "in the log"));
    let seq = stores.log.append(std::slice::from_ref(&b), &message).await.unwrap();
    assert_eq!(stores.log.read(&b, 2, 10).await.unwrap().unwrap().events, vec![(seq[0].seq, message)]);
    // A cursor ahead of the head means the client knows a log we do not.
    let ahead = stores.log.read(&a, 99, 10).await.unwrap().unwrap_err();
    assert_eq!(ahead.head, 3);
}

/// A message to group `group` from `from`, the `n`th.
pub fn group_message(from: &UserId, group: &GroupId, n: usize) -> Message {
    let id = ids().next();
    Message {
        id,
        client_msg_id: unique(&format!("g{n}")),
        from: from.clone(),
        to: group.to_string(),
        chat_type: ChatType::Group,
        timestamp: id.timestamp_ms(),
        body: MessageBody::Text(format!("group message {n}")),
        ext: Default::default(),
        from_system: false,
        allow_group_ack: false,
        pos: 0,
    }
}

/// Sends `message` to its group's members as they are now.
pub async fn send_to_group(stores: &Stores, message: &Message) {
    let group = GroupId::parse(&message.to, "to").unwrap();
    let members = stores.groups.member_ids(&group).await.unwrap();
    stores.messages.insert_and_append(message, &members, false, stores.log.as_ref()).await.unwrap();
}

/// `user`'s log holds `want` as its newest entries (retention may have
/// dropped older ones), and every cursor from the oldest kept reads the same
/// entries, a page at a time.
pub async fn assert_log_is(log: &dyn UserLog, user: &UserId, want: &[Message]) {
    let (head, oldest) = log.bounds(user).await.unwrap();
    assert_eq!(head, want.len() as u64, "{user}'s head");
    let all: Vec<_> = (1..).zip(want.iter().map(|m| LogEvent::Message(m.clone()))).collect();
    for after in oldest.saturating_sub(1)..=head {
        for limit in 1..=3 {
            let page = log.read(user, after, limit).await.unwrap().unwrap();
            let expected: Vec<_> = all.iter().skip(after as usize).take(limit).cloned().collect();
            assert_eq!(page.events, expected, "{user}'s log after {after}, limit {limit}");
        }
    }
}

/// Group sends reach every member's log in the order they were sent, mixed
/// with other entries; a member who leaves gets nothing sent after.
pub async fn log_group_sends_follow_membership(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let group = new_group(&a, 10);
    let members = [member(&a, GroupRole::Owner), member(&b, GroupRole::Member), member(&c, GroupRole::Member)];
    stores.groups.create_group(&group, &members).await.unwrap();
    let mut sent = Vec::new();
    for (n, from) in [&a, &b, &c].into_iter().enumerate() {
        sent.push(group_message(from, &group.id, n));
        send_to_group(stores, &sent[n]).await;
    }
    let direct = text_message(&b, &a, &unique("d"), "between the group's messages");
    stores.messages.insert_and_append(&direct, &[b.clone(), a.clone()], false, stores.log.as_ref()).await.unwrap();
    for n in 3..5 {
        sent.push(group_message(&a, &group.id, n));
        send_to_group(stores, &sent[n]).await;
    }
    assert_eq!(stores.groups.remove_members(&group.id, std::slice::from_ref(&c)).await.unwrap(), vec![c.clone()]);
    for n in 5..7 {
        sent.push(group_message(&b, &group.id, n));
        send_to_group(stores, &sent[n]).await;
    }
    let mut with_direct = sent[..3].to_vec();
    with_direct.push(direct);
    with_direct.extend_from_slice(&sent[3..]);
    assert_log_is(stores.log.as_ref(), &a, &with_direct).await;
    assert_log_is(stores.log.as_ref(), &b, &with_direct).await;
    assert_log_is(stores.log.as_ref(), &c, &sent[..5]).await;
}

pub async fn log_retention_expires_old_cursors(stores: &Stores, retention: u64) {
    assert!(retention <= 20, "use a small retention for the conformance run");
    let a = user("a");
    let total = retention + 3;
    for n in 0..total {
        stores.log.append(std::slice::from_ref(&a), &change(n as usize)).await.unwrap();
    }
    let (head, oldest) = stores.log.bounds(&a).await.unwrap();
    assert_eq!(head, total);
    assert_eq!(oldest, total - retention + 1);
    let expired = stores.log.read(&a, 0, 100).await.unwrap().unwrap_err();
    assert_eq!((expired.requested, expired.oldest, expired.head), (0, oldest, head));
    let page = stores.log.read(&a, oldest - 1, 100).await.unwrap().unwrap();
    assert_eq!(page.events.len() as u64, retention);
    assert_eq!(page.events.first().map(|e| e.0), Some(oldest));
    // A cursor at the head is fine even if everything before it is gone.
    assert!(stores.log.read(&a, head, 10).await.unwrap().unwrap().events.is_empty());
}

pub async fn log_ack_only_moves_forward(stores: &Stores) {
    let a = user("a");
    assert_eq!(stores.log.acked(&a).await.unwrap(), 0);
    stores.log.ack(&a, 5).await.unwrap();
    stores.log.ack(&a, 3).await.unwrap();
    assert_eq!(stores.log.acked(&a).await.unwrap(), 5);
}

pub async fn presence_subscriptions_expire_cap_and_page(stores: &Stores) {
    let p = &stores.presence;
    let me = user("me");
    let (a, b, c, d) = (user("a"), user("b"), user("c"), user("d"));
    let now = 1_000_000;
    assert!(p.subscribe(&me, &[a.clone(), b.clone()], now + 100, 3, now).await.unwrap().is_empty());
    assert!(p.subscribe(&me, std::slice::from_ref(&c), now + 50, 3, now).await.unwrap().is_empty());
    // Re-subscribing replaces the expiry (P1).
    assert!(p.subscribe(&me, std::slice::from_ref(&a), now + 300, 3, now).await.unwrap().is_empty());
    // Past the cap the shortest-remaining other subscription goes (P2).
    let evicted = p.subscribe(&me, std::slice::from_ref(&d), now + 200, 3, now).await.unwrap();
    assert_eq!(evicted, vec![Subscription { target: c.clone(), expires_at: now + 50 }]);
    let (page, total) = p.subscriptions(&me, now, 0, 10).await.unwrap();
    assert_eq!(total, 3);
    let mut expected = vec![
        Subscription { target: a.clone(), expires_at: now + 300 },
        Subscription { target: b.clone(), expires_at: now + 100 },
        Subscription { target: d.clone(), expires_at: now + 200 },
    ];
    expected.sort_by(|x, y| x.target.cmp(&y.target));
    assert_eq!(page, expected);
    let (second, _) = p.subscriptions(&me, now, 2, 10).await.unwrap();
    assert_eq!(second, expected[2..].to_vec());
    assert_eq!(p.subscribers(&a, now).await.unwrap(), vec![me.clone()]);
    // Expired subscriptions stop counting at their expiry, before any sweep (P8).
    assert!(p.subscribers(&b, now + 100).await.unwrap().is_empty());
    assert_eq!(p.subscriptions(&me, now + 150, 0, 10).await.unwrap().1, 2);
    // The sweeper removes only what did not move.
    assert!(!p.remove_expired(&me, &a, now + 100).await.unwrap(), "a was extended");
    assert!(p.remove_expired(&me, &b, now + 100).await.unwrap());
    let all: Vec<_> = p.all_subscriptions().await.unwrap().into_iter().filter(|(s, _)| *s == me).collect();
    assert_eq!(all.len(), 2);
    p.unsubscribe(&me, std::slice::from_ref(&a)).await.unwrap();
    assert!(p.subscribers(&a, now).await.unwrap().is_empty());
    assert_eq!(p.subscriptions(&me, now, 0, 10).await.unwrap().1, 1);
}

pub async fn presence_fields_round_trip(stores: &Stores) {
    let p = &stores.presence;
    let me = user("me");
    assert_eq!(p.get_presence(&me).await.unwrap(), (String::new(), 0));
    p.set_presence(&me, Some("in a meeting"), 5).await.unwrap();
    p.set_presence(&me, None, 9).await.unwrap();
    assert_eq!(p.get_presence(&me).await.unwrap(), ("in a meeting".to_owned(), 9), "time moves, text stays");
}

pub async fn webhook_outbox_is_an_ordered_queue_per_receiver(stores: &Stores) {
    let o = &stores.outbox;
    let (r1, r2) = (unique("r1"), unique("r2"));
    let event = |n: i64| WebhookEvent {
        user: UserId::parse("u", "u").unwrap(),
        status: if n % 2 == 0 { SessionStatus::Online } else { SessionStatus::Offline },
        os: "iOS".into(),
        time: n,
        client_ip: "127.0.0.1:1".into(),
        session_id: format!("s{n}"),
    };
    o.push(&r1, &[event(1), event(2)]).await.unwrap();
    o.push(&r1, &[event(3)]).await.unwrap();
    o.push(&r2, &[event(9)]).await.unwrap();
    let queued = o.peek(&r1, 10).await.unwrap();
    assert_eq!(queued.iter().map(|(_, e)| e.time).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(queued.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    o.remove(&r1, queued[1].0).await.unwrap();
    assert_eq!(o.peek(&r1, 10).await.unwrap().iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), vec![event(3)]);
    assert_eq!(o.peek(&r2, 10).await.unwrap().len(), 1, "receivers are independent");
    o.push(&r1, &[event(4)]).await.unwrap();
    let ids: Vec<u64> = o.peek(&r1, 10).await.unwrap().iter().map(|(id, _)| *id).collect();
    assert!(ids[1] > queued[2].0, "ids are not reused after a removal");
}

// ---------------------------------------------------------- conversations

/// Sends `message` counted to `recipients` (C2).
async fn send_counted(stores: &Stores, message: &Message, recipients: &[UserId]) -> Stored {
    stores.messages.insert_and_append(message, recipients, true, stores.log.as_ref()).await.unwrap()
}

fn positioned(message: &Message, pos: u64) -> Message {
    Message { pos, ..message.clone() }
}

async fn head_of(stores: &Stores, conversation: &ConversationKey) -> Option<ConversationHead> {
    stores.conversations.heads(std::slice::from_ref(conversation)).await.unwrap().remove(0)
}

async fn state_of(stores: &Stores, user: &UserId, conversation: &ConversationKey) -> Option<UserConversation> {
    stores.conversations.user_conversation(user, conversation).await.unwrap()
}

/// Counted messages take positions 1, 2, 3 in their conversation, stored
/// with them (history, the log) and in the conversation's head; another
/// conversation counts on its own.
pub async fn conversations_counted_sends_take_dense_positions(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let conv = ConversationKey::single(&a, &b);
    assert_eq!(head_of(stores, &conv).await, None, "no counted message yet");
    let mut sent = Vec::new();
    for (n, (from, to)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        let message = text_message(from, to, &unique("p"), &format!("n{n}"));
        let stored = send_counted(stores, &message, &[a.clone(), b.clone()]).await;
        assert_eq!(stored.message, positioned(&message, n as u64 + 1));
        assert!(!stored.duplicate);
        sent.push(stored.message);
    }
    let other = text_message(&a, &c, &unique("p"), "elsewhere");
    assert_eq!(send_counted(stores, &other, &[a.clone(), c.clone()]).await.message.pos, 1, "per conversation");

    let last = &sent[2];
    let head = ConversationHead { pos: 3, last_id: last.id, last_time: last.timestamp };
    let none = ConversationKey::single(&b, &c);
    let heads = stores.conversations.heads(&[conv.clone(), none, other.conversation()]).await.unwrap();
    assert_eq!(
        heads,
        vec![Some(head), None, Some(ConversationHead { pos: 1, last_id: other.id, last_time: other.timestamp })]
    );
    assert_eq!(stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap(), sent);
    assert_eq!(stores.messages.get_message(&conv, last.id).await.unwrap().as_ref(), Some(last));
    let page = stores.log.read(&b, 0, 10).await.unwrap().unwrap();
    let logged: Vec<LogEvent> = sent.iter().cloned().map(LogEvent::Message).collect();
    assert_eq!(page.events.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), logged, "the log has the positions");
}

/// A retry of a counted send returns the message with its position, takes
/// no second one and leaves the head where it was; so does a retry after
/// later messages.
pub async fn conversations_duplicate_keeps_its_position(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    let first = text_message(&a, &b, "d1", "first");
    assert_eq!(send_counted(stores, &first, &users).await.message.pos, 1);
    let second = text_message(&a, &b, "d2", "second");
    assert_eq!(send_counted(stores, &second, &users).await.message.pos, 2);
    let conv = first.conversation();
    for (original, pos) in [(&second, 2), (&first, 1), (&first, 1)] {
        let again = send_counted(stores, &retry_of(original), &users).await;
        assert_eq!(again, Stored { message: positioned(original, pos), duplicate: true, appended: vec![] });
    }
    assert_eq!(head_of(stores, &conv).await.map(|h| (h.pos, h.last_id)), Some((2, second.id)), "the head stays");
    match stores.messages.insert_message(&retry_of(&second)).await.unwrap() {
        Inserted::Duplicate { message, .. } => assert_eq!(message, positioned(&second, 2), "the record has it too"),
        other => panic!("expected duplicate, got {other:?}"),
    }
    let third = text_message(&a, &b, "d3", "third");
    assert_eq!(send_counted(stores, &third, &users).await.message.pos, 3, "no position was lost or taken twice");
}

/// A message that does not count has position 0, moves no head and writes
/// no state; the next counted one goes on from the head.
pub async fn conversations_uncounted_send_has_no_position(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    let quiet = text_message(&a, &b, "u1", "from the backend");
    let stored = stores.messages.insert_and_append(&quiet, &users, false, stores.log.as_ref()).await.unwrap();
    assert_eq!(stored.message, quiet);
    assert_eq!(stored.message.pos, 0);
    let conv = quiet.conversation();
    assert_eq!(head_of(stores, &conv).await, None);
    assert_eq!(state_of(stores, &a, &conv).await, None, "no state for the sender");
    assert_eq!(state_of(stores, &b, &conv).await, None, "nor for the peer");
    let counted = text_message(&a, &b, "u2", "from a device");
    assert_eq!(send_counted(stores, &counted, &users).await.message.pos, 1);
    let quiet_again = text_message(&b, &a, "u3", "again from the backend");
    let stored = stores.messages.insert_and_append(&quiet_again, &users, false, stores.log.as_ref()).await.unwrap();
    assert_eq!(stored.message.pos, 0);
    assert_eq!(head_of(stores, &conv).await.map(|h| (h.pos, h.last_id)), Some((1, counted.id)), "the head stays");
    assert_eq!(state_of(stores, &b, &conv).await.map(|s| s.read_pos), Some(0), "an uncounted send reads nothing");
    let page = stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(page.iter().map(|m| m.pos).collect::<Vec<_>>(), [0, 1, 0], "all in the history");
}

/// A 1:1 message gives both users their state (created at the message's
/// time) and moves the sender's read position to it, never back.
pub async fn conversations_one_to_one_send_creates_both_states(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    let first = text_message(&a, &b, &unique("o"), "hello");
    send_counted(stores, &first, &users).await;
    let conv = first.conversation();
    let mut a_state = UserConversation::new(conv.clone(), first.timestamp);
    a_state.read_pos = 1;
    assert_eq!(state_of(stores, &a, &conv).await, Some(a_state.clone()));
    assert_eq!(state_of(stores, &b, &conv).await, Some(UserConversation::new(conv.clone(), first.timestamp)));

    let reply = text_message(&b, &a, &unique("o"), "hi");
    send_counted(stores, &reply, &users).await;
    assert_eq!(state_of(stores, &a, &conv).await, Some(a_state.clone()), "the peer's read position stays");
    let b_state = state_of(stores, &b, &conv).await.unwrap();
    assert_eq!((b_state.created_at, b_state.read_pos), (first.timestamp, 2), "created once, read up to its own");

    // A sender whose read position is ahead of its message keeps it.
    stores.conversations.update(&a, &conv, ConversationChange::Read { pos: 9 }, 0).await.unwrap();
    send_counted(stores, &text_message(&a, &b, &unique("o"), "after reading ahead"), &users).await;
    assert_eq!(state_of(stores, &a, &conv).await.map(|s| s.read_pos), Some(9));
    let listed: Vec<ConversationKey> =
        stores.conversations.user_conversations(&b).await.unwrap().into_iter().map(|s| s.conversation).collect();
    assert_eq!(listed, vec![conv]);
}

/// The system user is no party: its messages give the peer a state, the
/// system none.
pub async fn conversations_system_send_gives_the_system_no_state(stores: &Stores) {
    let b = user("b");
    let system = UserId::system();
    let notice = Message { from_system: true, ..text_message(&system, &b, &unique("sys"), "notice") };
    let stored = send_counted(stores, &notice, std::slice::from_ref(&b)).await;
    assert_eq!(stored.message.pos, 1);
    let conv = notice.conversation();
    assert_eq!(state_of(stores, &system, &conv).await, None);
    assert_eq!(state_of(stores, &b, &conv).await, Some(UserConversation::new(conv.clone(), notice.timestamp)));
    assert_eq!(head_of(stores, &conv).await.map(|h| h.pos), Some(1));
}

/// A group message moves the group's head and its sender's state only:
/// no row per member.
pub async fn conversations_group_send_writes_only_the_senders_state(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let group = new_group(&a, 10);
    let members = [member(&a, GroupRole::Owner), member(&b, GroupRole::Member), member(&c, GroupRole::Member)];
    stores.groups.create_group(&group, &members).await.unwrap();
    let ids = stores.groups.member_ids(&group.id).await.unwrap();
    let first = group_message(&a, &group.id, 0);
    assert_eq!(send_counted(stores, &first, &ids).await.message.pos, 1);
    let second = group_message(&b, &group.id, 1);
    assert_eq!(send_counted(stores, &second, &ids).await.message.pos, 2);
    let conv = first.conversation();
    assert_eq!(
        head_of(stores, &conv).await,
        Some(ConversationHead { pos: 2, last_id: second.id, last_time: second.timestamp })
    );
    let mut a_state = UserConversation::new(conv.clone(), first.timestamp);
    a_state.read_pos = 1;
    assert_eq!(state_of(stores, &a, &conv).await, Some(a_state));
    let mut b_state = UserConversation::new(conv.clone(), second.timestamp);
    b_state.read_pos = 2;
    assert_eq!(state_of(stores, &b, &conv).await, Some(b_state));
    assert_eq!(state_of(stores, &c, &conv).await, None, "a member who did nothing has no state");
    assert!(stores.conversations.user_conversations(&c).await.unwrap().is_empty());
}

/// Each change does what `UserConversation::apply` does, on a state made at
/// `now` by the first one, and the stored state is the one returned.
pub async fn conversations_update_applies_each_change(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let cleared: Vec<MessageId> = (0..3).map(|_| ids().next()).collect();
    let changes = [
        ConversationChange::Read { pos: 5 },
        ConversationChange::Read { pos: 3 },
        ConversationChange::Pin { at: 100 },
        ConversationChange::Clear { pos: 4, id: cleared[1] },
        ConversationChange::Clear { pos: 2, id: cleared[2] },
        ConversationChange::Clear { pos: 3, id: cleared[0] },
        ConversationChange::Read { pos: 6 },
        ConversationChange::Unpin,
        ConversationChange::Pin { at: 200 },
        ConversationChange::Hide { pos: 8 },
        ConversationChange::Read { pos: 7 },
        ConversationChange::Hide { pos: 9 },
    ];
    let mut model = UserConversation::new(conv.clone(), 1_000);
    for (n, change) in changes.iter().enumerate() {
        model.apply(change);
        let now = 1_000 + n as i64;
        let got = stores.conversations.update(&a, &conv, *change, now).await.unwrap();
        assert_eq!(got, model, "after {change:?}");
        assert_eq!(state_of(stores, &a, &conv).await.as_ref(), Some(&model), "stored after {change:?}");
    }
    assert_eq!((model.read_pos, model.cleared_pos, model.cleared_id), (9, 4, cleared[2]), "never moved back");
    assert_eq!((model.hidden_pos, model.pinned_at), (Some(9), 0));
    assert_eq!(state_of(stores, &b, &conv).await, None, "the other user's state is their own");
}

/// Concurrent changes to different fields all stay: a pin does not undo a
/// read, a hide does not undo a clear, reads keep the highest.
pub async fn conversations_concurrent_changes_keep_each_field(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let id = ids().next();
    stores.conversations.update(&a, &conv, ConversationChange::Read { pos: 1 }, 10).await.unwrap();
    let c = &stores.conversations;
    let (x, y, z, w, v) = tokio::join!(
        c.update(&a, &conv, ConversationChange::Pin { at: 50 }, 11),
        c.update(&a, &conv, ConversationChange::Read { pos: 7 }, 11),
        c.update(&a, &conv, ConversationChange::Clear { pos: 3, id }, 11),
        c.update(&a, &conv, ConversationChange::Read { pos: 4 }, 11),
        c.update(&a, &conv, ConversationChange::Read { pos: 6 }, 11),
    );
    for result in [x, y, z, w, v] {
        result.unwrap();
    }
    let state = state_of(stores, &a, &conv).await.unwrap();
    assert_eq!(
        (state.created_at, state.read_pos, state.pinned_at, state.cleared_pos, state.cleared_id),
        (10, 7, 50, 3, id)
    );
}

/// C7: a hidden conversation is off the list until its head passes the
/// hide; a new message brings it back without writing the state.
pub async fn conversations_hidden_is_listed_again_after_a_new_message(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    for n in 0..2 {
        send_counted(stores, &text_message(&a, &b, &unique("h"), &format!("n{n}")), &users).await;
    }
    let conv = ConversationKey::single(&a, &b);
    let head = head_of(stores, &conv).await.unwrap().pos;
    let hidden = stores.conversations.update(&b, &conv, ConversationChange::Hide { pos: head }, 5).await.unwrap();
    assert!(!hidden.listed(head), "hidden");
    assert_eq!(hidden.read_pos, head, "hiding reads it");
    send_counted(stores, &text_message(&a, &b, &unique("h"), "again"), &users).await;
    let head = head_of(stores, &conv).await.unwrap().pos;
    let state = state_of(stores, &b, &conv).await.unwrap();
    assert_eq!(state.hidden_pos, Some(2));
    assert!(state.listed(head), "listed again at head {head}");
    assert_eq!(state.read_pos, 2, "the new message is unread");
}

/// C6: removed messages come back ascending by id, strictly after the
/// bound, with their positions; per user and conversation.
pub async fn conversations_removed_messages_ascend_after_the_bound(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let sent: Vec<MessageId> = (0..4).map(|_| ids().next()).collect();
    let c = &stores.conversations;
    c.remove_messages(&a, &conv, &[(sent[3], 40), (sent[0], 10)]).await.unwrap();
    c.remove_messages(&a, &conv, &[(sent[2], 30), (sent[0], 10)]).await.unwrap();
    c.remove_messages(&a, &conv, &[]).await.unwrap();
    let all = vec![(sent[0], 10), (sent[2], 30), (sent[3], 40)];
    assert_eq!(c.removed_messages(&a, &conv, MessageId(0)).await.unwrap(), all);
    assert_eq!(c.removed_messages(&a, &conv, sent[0]).await.unwrap(), all[1..].to_vec(), "strictly after");
    assert_eq!(c.removed_messages(&a, &conv, sent[1]).await.unwrap(), all[1..].to_vec());
    assert!(c.removed_messages(&a, &conv, sent[3]).await.unwrap().is_empty());
    assert!(c.removed_messages(&b, &conv, MessageId(0)).await.unwrap().is_empty(), "per user");
    let other = ConversationKey::single(&a, &user("c"));
    assert!(c.removed_messages(&a, &other, MessageId(0)).await.unwrap().is_empty(), "per conversation");
    let many: Vec<(MessageId, u64)> = (0..120).map(|n| (ids().next(), n)).collect();
    c.remove_messages(&b, &conv, &many).await.unwrap();
    assert_eq!(c.removed_messages(&b, &conv, MessageId(0)).await.unwrap(), many, "more than one batch");
    assert_eq!(state_of(stores, &a, &conv).await, None, "removing writes no state");
}

pub async fn conversations_recalls_are_per_conversation_and_idempotent(stores: &Stores) {
    let c = &stores.conversations;
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let (first, second) = (ids().next(), ids().next());
    assert!(c.recalled(&conv, MessageId(0)).await.unwrap().is_empty());
    c.recall(&conv, second, 7).await.unwrap();
    c.recall(&conv, first, 3).await.unwrap();
    c.recall(&conv, second, 7).await.unwrap();
    assert_eq!(c.recalled(&conv, MessageId(0)).await.unwrap(), vec![(first, 3), (second, 7)], "once each, by id");
    assert_eq!(c.recalled(&conv, first).await.unwrap(), vec![(second, 7)], "strictly after the bound");
    let other = ConversationKey::single(&a, &user("c"));
    assert!(c.recalled(&other, MessageId(0)).await.unwrap().is_empty(), "per conversation");
}

fn group_conversation() -> (ConversationKey, MessageId) {
    (ConversationKey::group(&GroupId::from_id(ids().next().0)), ids().next())
}

pub async fn receipts_count_each_reader_once(stores: &Stores) {
    let r = &stores.receipts;
    let (conv, message) = group_conversation();
    let (a, b) = (user("a"), user("b"));
    assert_eq!(r.read_count(&conv, message).await.unwrap(), 0);
    r.record_read(&conv, message, &a, 100).await.unwrap();
    r.record_read(&conv, message, &a, 200).await.unwrap();
    r.record_read(&conv, message, &b, 150).await.unwrap();
    assert_eq!(r.read_count(&conv, message).await.unwrap(), 2, "a repeat is not counted again");
    let readers = r.readers(&conv, message, None, 10).await.unwrap();
    let mut want = vec![Reader { user: a.clone(), time: 100 }, Reader { user: b.clone(), time: 150 }];
    want.sort_by(|x, y| x.user.cmp(&y.user));
    assert_eq!(readers, want, "the first time is kept");
    let other = ids().next();
    assert_eq!(r.read_count(&conv, other).await.unwrap(), 0, "per message");
    assert!(r.readers(&conv, other, None, 10).await.unwrap().is_empty());
}

pub async fn receipts_page_readers_by_user_id(stores: &Stores) {
    let r = &stores.receipts;
    let (conv, message) = group_conversation();
    let prefix = unique("p");
    let mut users: Vec<UserId> = (0..25).map(|n| UserId::parse(&format!("{prefix}-{n:02}"), "user").unwrap()).collect();
    for (n, u) in users.iter().enumerate().rev() {
        r.record_read(&conv, message, u, n as i64).await.unwrap();
    }
    users.sort();
    let mut seen = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = r.readers(&conv, message, after.as_ref(), 10).await.unwrap();
        seen.extend(page.iter().map(|x| x.user.clone()));
        match page.last() {
            Some(last) if page.len() == 10 => after = Some(last.user.clone()),
            _ => break,
        }
    }
    assert_eq!(seen, users, "every reader once, in user id order");
    assert_eq!(r.read_count(&conv, message).await.unwrap(), 25);
}

pub async fn receipts_concurrent_readers_are_all_counted(stores: &Stores) {
    let (conv, message) = group_conversation();
    let readers: Vec<UserId> = (0..40).map(|n| user(&format!("r{n}"))).collect();
    let writes = readers.iter().flat_map(|u| [u.clone(), u.clone()]).map(|u| {
        let (stores, conv) = (stores.clone(), conv.clone());
        async move { stores.receipts.record_read(&conv, message, &u, 1).await }
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(stores.receipts.read_count(&conv, message).await.unwrap(), 40, "each reader once, none lost");
}

/// What one instance writes, the same data opened again reads, and its log
/// goes on from where it was.
pub async fn sample_survives_a_restart(backend: impl Backend) {
    let sample = write_sample(&backend.stores()).await;
    let backend = backend.reopen().await;
    check_sample(&backend.stores(), &sample).await;
}

/// What [`write_sample`] wrote, for [`check_sample`] after a reopen.
#[derive(Debug)]
pub struct Sample {
    message: Message,
    group: Group,
    user: UserId,
    head: u64,
}

/// Writes one of everything, for a restart test.
pub async fn write_sample(stores: &Stores) -> Sample {
    let (a, b) = (user("a"), user("b"));
    let message = text_message(&a, &b, "durable", "kept across restarts");
    stores.messages.insert_message(&message).await.unwrap();
    let group = new_group(&a, 5);
    stores.groups.create_group(&group, &[member(&a, GroupRole::Owner), member(&b, GroupRole::Member)]).await.unwrap();
    for n in 0..3 {
        stores.log.append(std::slice::from_ref(&b), &change(n)).await.unwrap();
    }
    Sample { message, group, user: b, head: 3 }
}

/// Checks what [`write_sample`] wrote is all there and the log continues.
pub async fn check_sample(stores: &Stores, sample: &Sample) {
    let conv = sample.message.conversation();
    assert_eq!(stores.messages.get_message(&conv, sample.message.id).await.unwrap().as_ref(), Some(&sample.message));
    match stores.messages.insert_message(&sample.message).await.unwrap() {
        Inserted::Duplicate { message, .. } => assert_eq!(message, sample.message),
        Inserted::New => panic!("idempotency record lost across restart"),
    }
    let group = stores.groups.get_group(&sample.group.id).await.unwrap().expect("group kept");
    assert_eq!(group.member_count, 2);
    assert_eq!(stores.log.bounds(&sample.user).await.unwrap().0, sample.head);
    let next = stores.log.append(std::slice::from_ref(&sample.user), &change(9)).await.unwrap();
    assert_eq!(next[0].seq, sample.head + 1, "seqs continue after a restart");
}

// ------------------------------------------------------- session registry

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
