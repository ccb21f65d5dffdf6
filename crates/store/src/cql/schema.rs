//! Versioned schema migrations.
//!
//! Migration `n` is a list of idempotent DDL steps (`CREATE … IF NOT
//! EXISTS`, or a column added only when `system_schema.columns` lacks it: CQL
//! has no `ADD … IF NOT EXISTS` that Cassandra 5.0 and ScyllaDB both accept);
//! applying it ends with an `INSERT … IF NOT EXISTS` of row `n` in
//! `schema_migrations`. Applying runs under a lease (row `version = 0`,
//! written `IF NOT EXISTS USING TTL`), so two `migrate` calls — two
//! processes — never send DDL at the same time (concurrent schema changes
//! from several coordinators can disagree on a table's id in Cassandra 5.0).
//! A dead holder's lease expires after [`LEASE_TTL_SECS`]. Only the keyspace
//! and the `schema_migrations` table itself are created outside the lease;
//! both statements are idempotent.

use std::time::{Duration, Instant};

use natter_types::{Error, Result};
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimestamp;

use super::{Lwt, Replication, error, new_token, validate_keyspace};

/// The schema version this build reads and writes.
pub const LATEST_VERSION: i32 = 6;

/// How long a migration lease lives without its holder.
pub const LEASE_TTL_SECS: i32 = 120;

/// How long `migrate` waits for another process's lease.
const LEASE_WAIT: Duration = Duration::from_secs(300);

struct Migration {
    version: i32,
    description: &'static str,
    /// DDL with `{ks}` for the keyspace.
    statements: &'static [&'static str],
    /// Columns to add: `(table, column, type)`.
    add_columns: &'static [(&'static str, &'static str, &'static str)],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "messages, idempotency records, groups, user logs",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.messages (
            conversation text,
            bucket int,
            id bigint,
            message blob,
            PRIMARY KEY ((conversation, bucket), id)
        ) WITH CLUSTERING ORDER BY (id DESC)",
            "CREATE TABLE IF NOT EXISTS {ks}.conversation_buckets (
            conversation text,
            bucket int,
            PRIMARY KEY (conversation, bucket)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.message_dedup (
            sender text,
            client_msg_id text,
            conversation text,
            msg_id bigint,
            message blob,
            fanned_out boolean,
            PRIMARY KEY ((sender, client_msg_id))
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.groups (
            group_id text,
            user_id text,
            role int,
            joined_at bigint,
            name text static,
            description text static,
            owner text static,
            created_at bigint static,
            member_count int static,
            max_members int static,
            version bigint static,
            writer bigint static,
            PRIMARY KEY (group_id, user_id)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.user_groups (
            user_id text,
            group_id text,
            PRIMARY KEY (user_id, group_id)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.user_log_head (
            user_id text PRIMARY KEY,
            seq bigint,
            oldest bigint,
            event blob,
            writer bigint
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.user_log (
            user_id text,
            seq bigint,
            event blob,
            writer bigint,
            PRIMARY KEY (user_id, seq)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.user_acks (
            user_id text,
            seq bigint,
            PRIMARY KEY (user_id, seq)
        ) WITH CLUSTERING ORDER BY (seq DESC)",
        ],
        add_columns: &[],
    },
    Migration {
        version: 2,
        description: "presence subscriptions and fields, webhook outbox",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.presence_subs (
            subscriber text,
            target text,
            expires_at bigint,
            version bigint static,
            PRIMARY KEY (subscriber, target)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.presence_subscribers (
            target text,
            subscriber text,
            expires_at bigint,
            PRIMARY KEY (target, subscriber)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.presence (
            user_id text PRIMARY KEY,
            description text,
            time bigint
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.webhook_outbox_head (
            receiver text PRIMARY KEY,
            seq bigint,
            oldest bigint,
            event blob,
            writer bigint
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.webhook_outbox (
            receiver text,
            seq bigint,
            event blob,
            writer bigint,
            PRIMARY KEY (receiver, seq)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.webhook_outbox_removed (
            receiver text,
            id bigint,
            PRIMARY KEY (receiver, id)
        ) WITH CLUSTERING ORDER BY (id DESC)",
        ],
        add_columns: &[],
    },
    Migration {
        version: 3,
        description: "session registry, gateway leases, named leases",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.sessions (
            user_id text,
            session_id text,
            device text,
            gateway text,
            platform text,
            client_addr text,
            connected_at bigint,
            seq bigint,
            version bigint static,
            writer bigint static,
            PRIMARY KEY (user_id, session_id)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.gateway_sessions (
            gateway text,
            user_id text,
            session_id text,
            PRIMARY KEY (gateway, user_id, session_id)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.gateway_leases (
            shard int,
            gateway text,
            until bigint,
            PRIMARY KEY (shard, gateway)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.leases (
            name text PRIMARY KEY,
            owner text
        )",
        ],
        add_columns: &[],
    },
    Migration {
        version: 4,
        description: "log heads hold every entry of a multi-entry append",
        statements: &[],
        // The entries before `event` of the append that set the head (oldest
        // first); null for a one-entry append.
        add_columns: &[("user_log_head", "earlier", "list<blob>"), ("webhook_outbox_head", "earlier", "list<blob>")],
    },
    Migration {
        version: 5,
        description: "conversation heads, users' conversation states, one-way deleted messages",
        statements: &[
            // `recent`: the ids of the newest counted messages, oldest first,
            // the last at `pos` (see cql/mod.rs, "Conversations"). Frozen, so
            // each advance overwrites one cell instead of leaving a
            // collection tombstone on a row that changes with every message.
            "CREATE TABLE IF NOT EXISTS {ks}.conversation_heads (
            conversation text PRIMARY KEY,
            pos bigint,
            last_id bigint,
            last_time bigint,
            recent frozen<list<bigint>>
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.user_conversations (
            user_id text,
            conversation text,
            created_at bigint,
            read_pos bigint,
            cleared_pos bigint,
            cleared_id bigint,
            hidden boolean,
            hidden_pos bigint,
            pinned_at bigint,
            PRIMARY KEY (user_id, conversation)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.user_removed_messages (
            user_id text,
            conversation text,
            msg_id bigint,
            pos bigint,
            PRIMARY KEY ((user_id, conversation), msg_id)
        )",
        ],
        // Whether the record's send is counted: a counted record whose
        // message has no position yet is a send that died before it got one
        // (null in records of earlier builds, which had no positions).
        add_columns: &[("message_dedup", "counted", "boolean")],
    },
    Migration {
        version: 6,
        description: "recalled messages, group read receipts",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.recalled_messages (
            conversation text,
            msg_id bigint,
            pos bigint,
            PRIMARY KEY (conversation, msg_id)
        )",
            // One partition per group message, a row per reader: the count
            // is a `COUNT(*)` of the partition (see cql/receipts.rs).
            "CREATE TABLE IF NOT EXISTS {ks}.group_reads (
            conversation text,
            msg_id bigint,
            reader text,
            read_at bigint,
            PRIMARY KEY ((conversation, msg_id), reader)
        )",
        ],
        add_columns: &[],
    },
];

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Schema version before (0: a new keyspace).
    pub from: i32,
    /// Schema version after.
    pub to: i32,
    /// Versions this call applied (empty: nothing to do, or another process
    /// applied them meanwhile).
    pub applied: Vec<i32>,
}

fn cql_err(context: &str, e: scylla::errors::ExecutionError) -> Error {
    error::execution(context, e)
}

/// Creates the keyspace (if missing) and applies every migration newer than
/// the recorded version. Safe to run again (a no-op) and from several
/// processes at once.
pub async fn migrate(session: &Session, keyspace: &str, replication: &Replication) -> Result<Migrated> {
    validate_keyspace(keyspace)?;
    let replication = replication.to_cql()?;
    let ks = keyspace;
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} \
                 AND durable_writes = true"
            ),
            (),
        )
        .await
        .map_err(|e| cql_err("create keyspace", e))?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
                    version int PRIMARY KEY,
                    description text,
                    applied_at timestamp,
                    applied_by text
                )"
            ),
            (),
        )
        .await
        .map_err(|e| cql_err("create schema_migrations", e))?;

    let from = schema_version(session, ks).await?.unwrap_or(0);
    if from >= LATEST_VERSION {
        return Ok(Migrated { from, to: from, applied: Vec::new() });
    }

    let owner = format!("{}-{:x}", std::process::id(), new_token());
    let lease = Lease::acquire(session, ks, &owner).await?;
    let outcome = apply_pending(session, ks, &owner, from).await;
    lease.release(session).await;
    outcome
}

async fn apply_pending(session: &Session, ks: &str, owner: &str, from: i32) -> Result<Migrated> {
    // Another process may have migrated while we waited for the lease.
    let current = schema_version(session, ks).await?.unwrap_or(0);
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let started = Instant::now();
        for ddl in migration.statements {
            session
                .query_unpaged(ddl.replace("{ks}", ks), ())
                .await
                .map_err(|e| cql_err(&format!("migration {}", migration.version), e))?;
        }
        for (table, column, kind) in migration.add_columns {
            // A migration that died after some DDL is applied again.
            if !column_exists(session, ks, table, column).await? {
                session
                    .query_unpaged(format!("ALTER TABLE {ks}.{table} ADD {column} {kind}"), ())
                    .await
                    .map_err(|e| cql_err(&format!("migration {}", migration.version), e))?;
            }
        }
        session.await_schema_agreement().await.map_err(|e| error::unavailable("cql schema agreement", e))?;
        let record = Statement::new(format!(
            "INSERT INTO {ks}.schema_migrations (version, description, applied_at, applied_by) \
             VALUES (?, ?, ?, ?) IF NOT EXISTS"
        ));
        session
            .query_unpaged(
                record,
                (migration.version, migration.description, CqlTimestamp(natter_types::now_ms()), owner),
            )
            .await
            .map_err(|e| cql_err("record migration", e))?;
        tracing::info!(
            keyspace = %ks,
            version = migration.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cql migration applied"
        );
        applied.push(migration.version);
    }
    let to = schema_version(session, ks).await?.unwrap_or(0);
    Ok(Migrated { from, to, applied })
}

async fn column_exists(session: &Session, ks: &str, table: &str, column: &str) -> Result<bool> {
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (ks, table, column),
        )
        .await
        .map_err(|e| cql_err("read schema columns", e))?
        .into_rows_result()
        .map_err(|e| error::decoding("read schema columns", e))?
        .rows_num();
    Ok(rows > 0)
}

/// The highest applied migration of `keyspace`; `None` when the keyspace or
/// its `schema_migrations` table does not exist.
pub async fn schema_version(session: &Session, keyspace: &str) -> Result<Option<i32>> {
    validate_keyspace(keyspace)?;
    let exists = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables \
             WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
            (keyspace,),
        )
        .await
        .map_err(|e| cql_err("read schema tables", e))?
        .into_rows_result()
        .map_err(|e| error::decoding("read schema tables", e))?
        .rows_num()
        > 0;
    if !exists {
        return Ok(None);
    }
    let read = Statement::new(format!("SELECT version FROM {keyspace}.schema_migrations"));
    let result = session
        .query_unpaged(read, ())
        .await
        .map_err(|e| cql_err("read schema version", e))?
        .into_rows_result()
        .map_err(|e| error::decoding("read schema version", e))?;
    let mut version = 0;
    for row in result.rows::<(i32,)>().map_err(|e| error::decoding("read schema version", e))? {
        let (v,) = row.map_err(|e| error::decoding("read schema version", e))?;
        version = version.max(v);
    }
    Ok(Some(version))
}

/// The migration lease: row `version = 0` of `schema_migrations`.
struct Lease {
    ks: String,
    owner: String,
}

impl Lease {
    async fn acquire(session: &Session, ks: &str, owner: &str) -> Result<Self> {
        let take = Statement::new(format!(
            "INSERT INTO {ks}.schema_migrations (version, description, applied_at, applied_by) \
             VALUES (0, 'migration lease', ?, ?) IF NOT EXISTS USING TTL {LEASE_TTL_SECS}"
        ));
        let deadline = Instant::now() + LEASE_WAIT;
        let mut holder = String::new();
        while Instant::now() < deadline {
            let result = session
                .query_unpaged(take.clone(), (CqlTimestamp(natter_types::now_ms()), owner))
                .await
                .map_err(|e| cql_err("take migration lease", e))?;
            let lwt = Lwt::from_result("take migration lease", result).checked()?;
            if lwt.applied {
                return Ok(Self { ks: ks.to_owned(), owner: owner.to_owned() });
            }
            holder = lwt.text("applied_by").unwrap_or("another process").to_owned();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::unavailable(format!(
            "cql migration lease of keyspace {ks} is held by {holder} (waited {}s)",
            LEASE_WAIT.as_secs()
        )))
    }

    /// Best effort: the lease expires by itself otherwise.
    async fn release(self, session: &Session) {
        let give =
            Statement::new(format!("DELETE FROM {}.schema_migrations WHERE version = 0 IF applied_by = ?", self.ks));
        if let Err(e) = session.query_unpaged(give, (&self.owner,)).await {
            tracing::warn!(error = %e, "cql migration lease not released; it will expire");
        }
    }
}
