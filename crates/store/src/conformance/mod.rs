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

mod conversations;
mod groups;
mod log;
mod messages;
mod presence;
mod receipts;
mod registry;
mod restart;

pub use conversations::*;
pub use groups::*;
pub use log::*;
pub use messages::*;
pub use presence::*;
pub use receipts::*;
pub use registry::*;
pub use restart::*;

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

/// The same client message id sent again: a new server id.
fn retry_of(message: &Message) -> Message {
    text_message(&message.from, &UserId::parse(&message.to, "to").unwrap(), &message.client_msg_id, "retried")
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
