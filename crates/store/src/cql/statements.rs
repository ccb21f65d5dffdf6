//! Every statement the store runs, prepared once at connect.

use natter_types::Result;
use scylla::client::session::Session;
use scylla::frame::types::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::conversations::ConversationStatements;
use super::log::{LogStatements, MaxRegister};
use super::receipts::ReceiptStatements;
use super::{CqlOptions, error};

const SUBS_READ: &str = "SELECT target, expires_at, version FROM {ks}.presence_subs WHERE subscriber = ?";
const SESSIONS_READ: &str = "SELECT session_id, device, gateway, platform, client_addr, connected_at, seq, version, \
                             writer FROM {ks}.sessions WHERE user_id = ?";

pub(crate) struct Statements {
    // messages
    pub dedup_insert: PreparedStatement,
    pub dedup_get_serial: PreparedStatement,
    pub dedup_take_over: PreparedStatement,
    pub dedup_get: PreparedStatement,
    pub dedup_mark: PreparedStatement,
    pub dedup_write_time: PreparedStatement,
    pub dedup_position: PreparedStatement,
    pub bucket_insert: PreparedStatement,
    pub buckets: PreparedStatement,
    pub message_insert: PreparedStatement,
    pub message_get: PreparedStatement,
    pub history_up: PreparedStatement,
    pub history_up_before: PreparedStatement,
    pub history_down: PreparedStatement,
    pub history_down_after: PreparedStatement,

    // conversation heads and users' states
    pub conversations: ConversationStatements,

    // group read receipts
    pub receipts: ReceiptStatements,

    // groups
    pub group_create: PreparedStatement,
    pub group_get: PreparedStatement,
    pub group_state_serial: PreparedStatement,
    pub group_count_cas: PreparedStatement,
    pub group_dissolve_cas: PreparedStatement,
    pub group_purge: PreparedStatement,
    pub group_set_owner: PreparedStatement,
    pub member_insert: PreparedStatement,
    pub member_delete: PreparedStatement,
    pub member_get: PreparedStatement,
    pub member_get_serial: PreparedStatement,
    pub member_role_cas: PreparedStatement,
    pub members_in_serial: PreparedStatement,
    pub members_all: PreparedStatement,
    pub members_first: PreparedStatement,
    pub members_after: PreparedStatement,
    pub index_insert: PreparedStatement,
    pub index_delete: PreparedStatement,
    pub index_scan: PreparedStatement,

    // user logs and the webhook outbox
    pub user_log: LogStatements,
    pub acks: MaxRegister,
    pub outbox: LogStatements,
    pub outbox_removed: MaxRegister,

    // presence
    pub subs_read: PreparedStatement,
    pub subs_read_serial: PreparedStatement,
    pub sub_get_serial: PreparedStatement,
    pub subs_version_init: PreparedStatement,
    pub subs_version_cas: PreparedStatement,
    pub sub_put: PreparedStatement,
    pub sub_delete: PreparedStatement,
    pub subs_all: PreparedStatement,
    pub subscriber_put: PreparedStatement,
    pub subscriber_delete: PreparedStatement,
    pub subscribers: PreparedStatement,
    pub presence_set: PreparedStatement,
    pub presence_touch: PreparedStatement,
    pub presence_get: PreparedStatement,

    // session registry and gateway leases
    pub sessions_read: PreparedStatement,
    pub sessions_read_serial: PreparedStatement,
    pub sessions_version_init: PreparedStatement,
    pub sessions_version_cas: PreparedStatement,
    pub session_insert: PreparedStatement,
    pub session_delete: PreparedStatement,
    pub gateway_session_insert: PreparedStatement,
    pub gateway_session_delete: PreparedStatement,
    pub gateway_sessions_scan: PreparedStatement,
    pub gateway_lease_put: PreparedStatement,
    pub gateway_leases_scan: PreparedStatement,
    pub gateway_lease_delete_cas: PreparedStatement,

    // named leases
    pub lease_take: PreparedStatement,
    pub lease_renew: PreparedStatement,
    pub lease_release: PreparedStatement,
}

pub(crate) struct Preparer<'a> {
    session: &'a Session,
    ks: &'a str,
    page_size: i32,
    serial: Consistency,
}

impl Preparer<'_> {
    pub(crate) async fn prepare(&self, cql: &str, idempotent: bool) -> Result<PreparedStatement> {
        let text = cql.replace("{ks}", self.ks);
        let mut st =
            self.session.prepare(text.clone()).await.map_err(|e| error::prepare(&format!("prepare `{text}`"), e))?;
        st.set_is_idempotent(idempotent);
        st.set_page_size(self.page_size);
        Ok(st)
    }

    /// A read at the serial consistency (linearizable: sees every completed
    /// conditional write and completes one in progress).
    pub(crate) async fn serial_read(&self, cql: &str) -> Result<PreparedStatement> {
        let mut st = self.prepare(cql, true).await?;
        st.set_consistency(self.serial);
        Ok(st)
    }
}

impl Statements {
    pub async fn prepare(session: &Session, options: &CqlOptions) -> Result<Self> {
        let p = Preparer {
            session,
            ks: &options.keyspace,
            page_size: i32::try_from(options.page_size).unwrap_or(i32::MAX),
            serial: options.serial_consistency.read(),
        };
        const MESSAGE_COLS: &str = "SELECT message FROM {ks}.messages WHERE conversation = ? AND bucket = ?";

        Ok(Self {
            dedup_insert: p
                .prepare(
                    "INSERT INTO {ks}.message_dedup \
                     (sender, client_msg_id, conversation, msg_id, message, counted) \
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
                    false,
                )
                .await?,
            dedup_take_over: p
                .prepare(
                    "UPDATE {ks}.message_dedup USING TTL ? \
                     SET conversation = ?, msg_id = ?, message = ?, fanned_out = false, counted = ? \
                     WHERE sender = ? AND client_msg_id = ? IF msg_id = ?",
                    false,
                )
                .await?,
            dedup_get_serial: p
                .serial_read(
                    "SELECT message, fanned_out, counted FROM {ks}.message_dedup \
                     WHERE sender = ? AND client_msg_id = ?",
                )
                .await?,
            dedup_get: p
                .prepare(
                    "SELECT msg_id, TTL(msg_id) FROM {ks}.message_dedup WHERE sender = ? AND client_msg_id = ?",
                    true,
                )
                .await?,
            dedup_mark: p
                .prepare(
                    "UPDATE {ks}.message_dedup USING TTL ? SET fanned_out = true \
                     WHERE sender = ? AND client_msg_id = ?",
                    true,
                )
                .await?,
            dedup_write_time: p
                .prepare(
                    "SELECT msg_id, WRITETIME(message), TTL(message) FROM {ks}.message_dedup \
                     WHERE sender = ? AND client_msg_id = ?",
                    true,
                )
                .await?,
            dedup_position: p
                .prepare(
                    "UPDATE {ks}.message_dedup USING TTL ? AND TIMESTAMP ? \
                     SET conversation = ?, msg_id = ?, message = ?, counted = true \
                     WHERE sender = ? AND client_msg_id = ?",
                    true,
                )
                .await?,
            bucket_insert: p
                .prepare("INSERT INTO {ks}.conversation_buckets (conversation, bucket) VALUES (?, ?)", true)
                .await?,
            buckets: p.prepare("SELECT bucket FROM {ks}.conversation_buckets WHERE conversation = ?", true).await?,
            message_insert: p
                .prepare(
                    "INSERT INTO {ks}.messages (conversation, bucket, id, message) \
                     VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
                    true,
                )
                .await?,
            message_get: p.prepare(&format!("{MESSAGE_COLS} AND id = ?"), true).await?,
            history_up: p.prepare(&format!("{MESSAGE_COLS} LIMIT ?"), true).await?,
            history_up_before: p.prepare(&format!("{MESSAGE_COLS} AND id < ? LIMIT ?"), true).await?,
            history_down: p.prepare(&format!("{MESSAGE_COLS} ORDER BY id ASC LIMIT ?"), true).await?,
            history_down_after: p.prepare(&format!("{MESSAGE_COLS} AND id > ? ORDER BY id ASC LIMIT ?"), true).await?,

            conversations: ConversationStatements::prepare(&p).await?,

            receipts: ReceiptStatements::prepare(&p).await?,

            group_create: p
                .prepare(
                    "INSERT INTO {ks}.groups (group_id, name, description, owner, created_at, \
                     member_count, max_members, version, writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     IF NOT EXISTS",
                    false,
                )
                .await?,
            group_get: p
                .prepare(
                    "SELECT name, description, owner, created_at, member_count, max_members, \
                     version FROM {ks}.groups WHERE group_id = ? LIMIT 1",
                    true,
                )
                .await?,
            group_state_serial: p
                .serial_read(
                    "SELECT version, member_count, max_members, writer FROM {ks}.groups \
                     WHERE group_id = ? LIMIT 1",
                )
                .await?,
            group_count_cas: p
                .prepare(
                    "UPDATE {ks}.groups SET member_count = ?, version = ?, writer = ? \
                     WHERE group_id = ? IF version = ?",
                    false,
                )
                .await?,
            group_dissolve_cas: p
                .prepare(
                    "DELETE name, description, owner, created_at, member_count, max_members, \
                     version, writer FROM {ks}.groups WHERE group_id = ? IF version = ?",
                    false,
                )
                .await?,
            group_purge: p.prepare("DELETE FROM {ks}.groups WHERE group_id = ?", true).await?,
            group_set_owner: p.prepare("UPDATE {ks}.groups SET owner = ? WHERE group_id = ?", false).await?,
            member_insert: p
                .prepare(
                    "INSERT INTO {ks}.groups (group_id, user_id, role, joined_at) \
                     VALUES (?, ?, ?, ?)",
                    false,
                )
                .await?,
            member_delete: p.prepare("DELETE FROM {ks}.groups WHERE group_id = ? AND user_id = ?", false).await?,
            member_get: p
                .prepare(
                    "SELECT role, joined_at, version FROM {ks}.groups \
                     WHERE group_id = ? AND user_id = ?",
                    true,
                )
                .await?,
            member_get_serial: p
                .serial_read("SELECT role, version FROM {ks}.groups WHERE group_id = ? AND user_id = ?")
                .await?,
            member_role_cas: p
                .prepare(
                    "UPDATE {ks}.groups SET role = ? WHERE group_id = ? AND user_id = ? \
                     IF version = ?",
                    false,
                )
                .await?,
            members_in_serial: p
                .serial_read("SELECT user_id FROM {ks}.groups WHERE group_id = ? AND user_id IN ?")
                .await?,
            members_all: p
                .prepare(
                    "SELECT user_id, role, joined_at, version FROM {ks}.groups \
                     WHERE group_id = ?",
                    true,
                )
                .await?,
            members_first: p
                .prepare(
                    "SELECT user_id, role, joined_at, version FROM {ks}.groups \
                     WHERE group_id = ? LIMIT ?",
                    true,
                )
                .await?,
            members_after: p
                .prepare(
                    "SELECT user_id, role, joined_at, version FROM {ks}.groups \
                     WHERE group_id = ? AND user_id > ? LIMIT ?",
                    true,
                )
                .await?,
            index_insert: p
                .prepare(
                    "INSERT INTO {ks}.user_groups (user_id, group_id) VALUES (?, ?) \
                     USING TIMESTAMP ?",
                    true,
                )
                .await?,
            index_delete: p
                .prepare(
                    "DELETE FROM {ks}.user_groups USING TIMESTAMP ? \
                     WHERE user_id = ? AND group_id = ?",
                    true,
                )
                .await?,
            index_scan: p.prepare("SELECT group_id FROM {ks}.user_groups WHERE user_id = ?", true).await?,

            user_log: LogStatements::prepare(&p, "user_log_head", "user_log", "user_id").await?,
            acks: MaxRegister::prepare(&p, "user_acks", "user_id", "seq").await?,
            outbox: LogStatements::prepare(&p, "webhook_outbox_head", "webhook_outbox", "receiver").await?,
            outbox_removed: MaxRegister::prepare(&p, "webhook_outbox_removed", "receiver", "id").await?,

            subs_read: p.prepare(SUBS_READ, true).await?,
            subs_read_serial: p.serial_read(SUBS_READ).await?,
            sub_get_serial: p
                .serial_read("SELECT expires_at, version FROM {ks}.presence_subs WHERE subscriber = ? AND target = ?")
                .await?,
            subs_version_init: p
                .prepare("UPDATE {ks}.presence_subs SET version = ? WHERE subscriber = ? IF version = null", false)
                .await?,
            subs_version_cas: p
                .prepare("UPDATE {ks}.presence_subs SET version = ? WHERE subscriber = ? IF version = ?", false)
                .await?,
            sub_put: p
                .prepare(
                    "INSERT INTO {ks}.presence_subs (subscriber, target, expires_at) VALUES (?, ?, ?) USING TTL ?",
                    false,
                )
                .await?,
            sub_delete: p.prepare("DELETE FROM {ks}.presence_subs WHERE subscriber = ? AND target = ?", false).await?,
            subs_all: p.prepare("SELECT subscriber, target, expires_at FROM {ks}.presence_subs", true).await?,
            subscriber_put: p
                .prepare(
                    "INSERT INTO {ks}.presence_subscribers (target, subscriber, expires_at) VALUES (?, ?, ?) \
                     USING TTL ? AND TIMESTAMP ?",
                    true,
                )
                .await?,
            subscriber_delete: p
                .prepare(
                    "DELETE FROM {ks}.presence_subscribers USING TIMESTAMP ? WHERE target = ? AND subscriber = ?",
                    true,
                )
                .await?,
            subscribers: p
                .prepare("SELECT subscriber, expires_at FROM {ks}.presence_subscribers WHERE target = ?", true)
                .await?,
            presence_set: p
                .prepare("UPDATE {ks}.presence SET description = ?, time = ? WHERE user_id = ?", true)
                .await?,
            presence_touch: p.prepare("UPDATE {ks}.presence SET time = ? WHERE user_id = ?", true).await?,
            presence_get: p.prepare("SELECT description, time FROM {ks}.presence WHERE user_id = ?", true).await?,

            sessions_read: p.prepare(SESSIONS_READ, true).await?,
            sessions_read_serial: p.serial_read(SESSIONS_READ).await?,
            sessions_version_init: p
                .prepare("UPDATE {ks}.sessions SET version = ?, writer = ? WHERE user_id = ? IF version = null", false)
                .await?,
            sessions_version_cas: p
                .prepare("UPDATE {ks}.sessions SET version = ?, writer = ? WHERE user_id = ? IF version = ?", false)
                .await?,
            session_insert: p
                .prepare(
                    "INSERT INTO {ks}.sessions (user_id, session_id, device, gateway, platform, client_addr, \
                     connected_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    false,
                )
                .await?,
            session_delete: p.prepare("DELETE FROM {ks}.sessions WHERE user_id = ? AND session_id = ?", false).await?,
            gateway_session_insert: p
                .prepare("INSERT INTO {ks}.gateway_sessions (gateway, user_id, session_id) VALUES (?, ?, ?)", true)
                .await?,
            gateway_session_delete: p
                .prepare("DELETE FROM {ks}.gateway_sessions WHERE gateway = ? AND user_id = ? AND session_id = ?", true)
                .await?,
            gateway_sessions_scan: p
                .prepare("SELECT user_id, session_id FROM {ks}.gateway_sessions WHERE gateway = ?", true)
                .await?,
            gateway_lease_put: p
                .prepare("INSERT INTO {ks}.gateway_leases (shard, gateway, until) VALUES (0, ?, ?)", true)
                .await?,
            gateway_leases_scan: p
                .prepare("SELECT gateway, until FROM {ks}.gateway_leases WHERE shard = 0", true)
                .await?,
            gateway_lease_delete_cas: p
                .prepare("DELETE FROM {ks}.gateway_leases WHERE shard = 0 AND gateway = ? IF until = ?", false)
                .await?,

            lease_take: p
                .prepare("INSERT INTO {ks}.leases (name, owner) VALUES (?, ?) IF NOT EXISTS USING TTL ?", false)
                .await?,
            lease_renew: p
                .prepare("UPDATE {ks}.leases USING TTL ? SET owner = ? WHERE name = ? IF owner = ?", false)
                .await?,
            lease_release: p.prepare("DELETE FROM {ks}.leases WHERE name = ? IF owner = ?", false).await?,
        })
    }
}
