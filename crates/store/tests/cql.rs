//! The CQL backend against a real database: the conformance suite (one test per check),
//! and checks of what only a shared database can get wrong (concurrency
//! across connections standing for processes, migrations, leftovers of a
//! dead writer).
//!
//! Needs the `cql-tests` feature (opt-in: a plain `cargo test` does not build
//! this) and a database at `NATTER_CQL` (default
//! `127.0.0.1:9042`): `deploy/cassandra.sh install && deploy/cassandra.sh start`,
//! or `make test-cql`. These tests never skip: without a database they fail
//! (with `NATTER_REQUIRE_CQL=1`, as CI runs them, the message says so).
//!
//! All tests share one keyspace per run (`natter_test_<secs>_<pid>`), created
//! by whichever test migrates first; keyspaces of runs older than an hour are
//! dropped at start. The migration test uses keyspaces of its own.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use natter_store::cql::{CqlOptions, CqlStore, LATEST_VERSION, Replication, migrate, open_session, schema_version};
use natter_store::{Direction, Inserted, claim_node_id, conformance};
use natter_types::{
    ChatType, ConversationKey, ErrorCode, Group, GroupChange, GroupChangeKind, GroupId, GroupMember, GroupRole,
    LogEvent, Message, MessageBody, MessageId, UserId,
};
use scylla::client::session::Session;

/// The retention the conformance run is configured with (it must be small).
const RETENTION: u64 = 5;

fn address() -> String {
    std::env::var("NATTER_CQL").ok().filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "127.0.0.1:9042".to_owned())
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// This run's shared keyspace.
fn shared_keyspace() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("natter_test_{}_{}", unix_secs(), std::process::id()))
}

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{name}{}x{nanos}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn user(name: &str) -> UserId {
    UserId::parse(&unique(name), "user").unwrap()
}

fn options(keyspace: &str, retention: u64) -> CqlOptions {
    CqlOptions {
        contact_points: vec![address()],
        keyspace: keyspace.to_owned(),
        replication: Replication::Simple { replication_factor: 1 },
        log_retention_events: retention,
        request_timeout: Duration::from_secs(30),
        ..CqlOptions::default()
    }
}

/// A session, or a loud failure that says how to get a database.
async fn session(options: &CqlOptions) -> Arc<Session> {
    match open_session(options).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let required = std::env::var("NATTER_REQUIRE_CQL").is_ok_and(|v| v == "1");
            panic!(
                "{}no CQL database at {} ({e}). Start one with `deploy/cassandra.sh install && \
                 deploy/cassandra.sh start` (or run `make test-cql`), or point NATTER_CQL at one. \
                 These tests do not skip.",
                if required { "NATTER_REQUIRE_CQL=1 and " } else { "" },
                address()
            )
        }
    }
}

/// Drops keyspaces of earlier test runs (older than an hour), once per run.
async fn drop_stale_keyspaces(session: &Session) {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.set(()).is_err() {
        return;
    }
    let rows = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let now = unix_secs();
    for row in rows.rows::<(String,)>().unwrap() {
        let (name,) = row.unwrap();
        let Some(rest) = name.strip_prefix("natter_test_") else { continue };
        let secs = rest.split('_').find_map(|part| part.parse::<u64>().ok().filter(|s| *s > 1_000_000_000));
        if secs.is_some_and(|s| s + 3600 < now) {
            eprintln!("dropping stale test keyspace {name}");
            let _ = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ()).await;
        }
    }
}

/// A store on this run's shared keyspace (migrated on first use).
async fn shared_store(retention: u64) -> CqlStore {
    let options = options(shared_keyspace(), retention);
    let session = session(&options).await;
    drop_stale_keyspaces(&session).await;
    migrate(&session, &options.keyspace, &options.replication).await.unwrap();
    CqlStore::with_session(session, options).await.unwrap()
}

fn change(tag: &str) -> LogEvent {
    LogEvent::GroupChange(GroupChange {
        kind: GroupChangeKind::MembersAdded,
        group_id: GroupId::from_id(1),
        group_name: tag.to_owned(),
        operator: UserId::system(),
        members: vec![],
        time: 0,
    })
}

/// The stored bytes of `change(tag)`, for rows written by hand.
fn encoded(tag: &str) -> Vec<u8> {
    natter_proto::ProstMessage::encode_to_vec(&natter_proto::v1::LogEvent::from(&change(tag)))
}

/// A page as (seq, tag) pairs.
fn seen(page: &natter_store::LogPage) -> Vec<(u64, String)> {
    page.events.iter().map(|(s, e)| (*s, tag_of(e))).collect()
}

fn tag_of(event: &LogEvent) -> String {
    match event {
        LogEvent::GroupChange(c) => c.group_name.clone(),
        LogEvent::Message(m) => m.client_msg_id.clone(),
        other => format!("{other:?}"),
    }
}

/// An id made at `ms` (ms since the Unix epoch), like `IdGenerator` makes them.
fn id_at(ms: i64, seq: u64) -> MessageId {
    let epoch = MessageId(0).timestamp_ms();
    MessageId((((ms - epoch) as u64) << 22) | (1 << 12) | seq)
}

fn message(id: MessageId, from: &UserId, to: &UserId, client_msg_id: &str) -> Message {
    Message {
        id,
        client_msg_id: client_msg_id.to_owned(),
        from: from.clone(),
        to: to.to_string(),
        chat_type: ChatType::Single,
        timestamp: id.timestamp_ms(),
        body: MessageBody::Text(format!("text of {client_msg_id}")),
        ext: Default::default(),
        from_system: false,
        allow_group_ack: false,
        pos: 0,
    }
}

// ------------------------------------------------------------------ suite

/// This run's shared keyspace as the conformance suite runs it; reopened, it
/// is a new connection (another process) that reads and continues.
struct Cql(CqlStore);

impl conformance::Backend for Cql {
    fn stores(&self) -> natter_store::Stores {
        self.0.stores()
    }

    fn retention(&self) -> u64 {
        RETENTION
    }

    async fn reopen(self) -> Self {
        Cql(shared_store(RETENTION).await)
    }
}

async fn cql_backend() -> Cql {
    Cql(shared_store(RETENTION).await)
}

/// Two connections stand for two presence processes.
async fn registries() -> [Arc<dyn natter_store::SessionRegistry>; 2] {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    [stores[0].sessions(), stores[1].sessions()]
}

/// Two connections stand for two processes.
async fn leases() -> [Arc<dyn natter_store::Leases>; 2] {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    [stores[0].leases(), stores[1].leases()]
}

natter_store::conformance_tests!(stores: cql_backend);
natter_store::conformance_tests!(registry: registries);
natter_store::conformance_tests!(leases: leases);

// -------------------------------------------------------------- migration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_is_versioned_idempotent_and_safe_to_run_concurrently() {
    let keyspace = format!("natter_test_mig_{}_{}", unix_secs(), std::process::id());
    let opts = options(&keyspace, RETENTION);
    let (a, b) = (session(&opts).await, session(&opts).await);
    drop_stale_keyspaces(&a).await;
    assert_eq!(schema_version(&a, &keyspace).await.unwrap(), None);
    let err = CqlStore::with_session(a.clone(), opts.clone()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("natter migrate"), "{}", err.message);

    // Two processes migrate the same new keyspace at once.
    let started = Instant::now();
    let (ra, rb) = tokio::join!(migrate(&a, &keyspace, &opts.replication), migrate(&b, &keyspace, &opts.replication));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    eprintln!("concurrent first migration: {:?} ({ra:?} / {rb:?})", started.elapsed());
    let all: Vec<i32> = (1..=LATEST_VERSION).collect();
    let mut applied = [ra.applied.clone(), rb.applied.clone()];
    applied.sort();
    assert_eq!(applied, [vec![], all.clone()], "exactly one of them applied every migration");
    assert_eq!((ra.to, rb.to), (LATEST_VERSION, LATEST_VERSION));

    // Again: a no-op.
    let started = Instant::now();
    let again = migrate(&a, &keyspace, &opts.replication).await.unwrap();
    eprintln!("second migration (no-op): {:?}", started.elapsed());
    assert_eq!((again.from, again.to, again.applied), (LATEST_VERSION, LATEST_VERSION, vec![]));
    assert_eq!(schema_version(&b, &keyspace).await.unwrap(), Some(LATEST_VERSION));

    // A migration that died after its DDL and before its record runs again
    // cleanly (versions 4 and 5 add columns, which CQL cannot add "if not exists").
    a.query_unpaged(format!("DELETE FROM {keyspace}.schema_migrations WHERE version = {LATEST_VERSION}"), ())
        .await
        .unwrap();
    let redo = migrate(&a, &keyspace, &opts.replication).await.unwrap();
    assert_eq!((redo.from, redo.to, redo.applied), (LATEST_VERSION - 1, LATEST_VERSION, vec![LATEST_VERSION]));

    // One row per migration, and the lease (version 0) is gone.
    let rows = a
        .query_unpaged(format!("SELECT version FROM {keyspace}.schema_migrations"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut versions: Vec<i32> = rows.rows::<(i32,)>().unwrap().map(|r| r.unwrap().0).collect();
    versions.sort();
    assert_eq!(versions, all);

    // And the store works on it.
    let store = CqlStore::with_session(b, opts).await.unwrap();
    assert_eq!(store.stores().log.bounds(&user("m")).await.unwrap(), (0, 0));
    a.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await.unwrap();
}

// -------------------------------------------------------------- user logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_connections_get_seqs_1_to_n() {
    // Two stores with their own sessions stand for two processes.
    let stores = [shared_store(100_000).await, shared_store(100_000).await];
    let target = user("hot");
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let started = Instant::now();
    let mut handles = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let log = store.stores().log;
            let target = target.clone();
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let tag = format!("s{s}t{t}i{i}");
                    let appended = log.append(std::slice::from_ref(&target), &change(&tag)).await.unwrap();
                    assert_eq!(appended[0].prev + 1, appended[0].seq);
                    got.push((appended[0].seq, tag));
                }
                got
            }));
        }
    }
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for handle in handles {
        for (seq, tag) in handle.await.unwrap() {
            assert!(by_seq.insert(seq, tag).is_none(), "seq {seq} handed out twice");
        }
    }
    let elapsed = started.elapsed();
    let n = (2 * TASKS * EACH) as u64;
    eprintln!(
        "{n} contended appends to one user from {} tasks on 2 connections: {elapsed:?} ({:.0} appends/s)",
        2 * TASKS,
        n as f64 / elapsed.as_secs_f64()
    );
    let seqs: BTreeSet<u64> = by_seq.keys().copied().collect();
    assert_eq!(seqs, (1..=n).collect::<BTreeSet<_>>(), "seqs are exactly 1..=N");

    // The log holds each event once, at the seq its append returned.
    let page = stores[1].stores().log.read(&target, 0, n as usize + 10).await.unwrap().unwrap();
    assert_eq!(page.head, n);
    assert_eq!(page.events.len() as u64, n);
    for (seq, event) in &page.events {
        assert_eq!(by_seq.get(seq), Some(&tag_of(event)), "event at seq {seq}");
    }

    // Uncontended: one task, one user, sequential appends.
    let solo = user("solo");
    let log = stores[0].stores().log;
    let started = Instant::now();
    for i in 0..100 {
        log.append(std::slice::from_ref(&solo), &change(&format!("solo{i}"))).await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!("100 sequential appends to one user: {elapsed:?} ({:.0} appends/s)", 100.0 / elapsed.as_secs_f64());

    // Group fan-out: one event to many users, appended concurrently.
    let users: Vec<UserId> = (0..300).map(|_| user("fan")).collect();
    let started = Instant::now();
    let appended = log.append(&users, &change("fanout")).await.unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "fan-out of one event to {} users: {elapsed:?} ({:.0} appends/s)",
        users.len(),
        300.0 / elapsed.as_secs_f64()
    );
    assert!(appended.iter().all(|a| (a.prev, a.seq) == (0, 1)));
    let again = stores[1].stores().log.append(&users[..3], &change("fanout2")).await.unwrap();
    assert!(again.iter().all(|a| (a.prev, a.seq) == (1, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_appenders_leftovers_are_never_read_and_are_overwritten() {
    let store = shared_store(100).await;
    let log = store.stores().log;
    let ks = shared_keyspace();
    let session = store.session().clone();
    let u = user("crash");
    for i in 1..=3 {
        log.append(std::slice::from_ref(&u), &change(&format!("e{i}"))).await.unwrap();
    }
    // The appender of seq 3 died after its head update, before copying the
    // event to its row: readers take it from the head.
    session
        .query_unpaged(format!("DELETE FROM {ks}.user_log WHERE user_id = ? AND seq = 3"), (u.as_str(),))
        .await
        .unwrap();
    // A row beyond the head (as an appender that wrote first and died before
    // advancing the head would leave): never read.
    let stray = encoded("stray");
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.user_log (user_id, seq, event, writer) VALUES (?, 4, ?, 0)"),
            (u.as_str(), stray),
        )
        .await
        .unwrap();
    let page = log.read(&u, 0, 10).await.unwrap().unwrap();
    assert_eq!(page.head, 3);
    assert_eq!(seen(&page), [(1, "e1".to_owned()), (2, "e2".to_owned()), (3, "e3".to_owned())]);
    assert_eq!(log.bounds(&u).await.unwrap(), (3, 1));

    // The next append (from another connection, without this one's cache)
    // restores row 3 and overwrites the stray row 4.
    let other = shared_store(100).await;
    let appended = other.stores().log.append(std::slice::from_ref(&u), &change("e4")).await.unwrap();
    assert_eq!((appended[0].prev, appended[0].seq), (3, 4));
    let page = log.read(&u, 0, 10).await.unwrap().unwrap();
    assert_eq!(seen(&page), [(1, "e1".to_owned()), (2, "e2".to_owned()), (3, "e3".to_owned()), (4, "e4".to_owned())]);
    let row3 = session
        .query_unpaged(format!("SELECT seq FROM {ks}.user_log WHERE user_id = ? AND seq = 3"), (u.as_str(),))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(row3, 1, "row 3 was copied from the head before the head moved on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_in_one_process_share_conditional_updates() {
    let store = shared_store(100_000).await;
    let log = store.stores().log;
    let target = user("busy");
    const N: usize = 200;
    let started = Instant::now();
    let results = join_all((0..N).map(|i| {
        let (log, target) = (log.clone(), target.clone());
        async move { (i, log.append(std::slice::from_ref(&target), &change(&format!("b{i}"))).await) }
    }))
    .await;
    eprintln!("{N} concurrent appends to one user from one process: {:?}", started.elapsed());
    let mut by_seq = HashMap::new();
    for (i, result) in results {
        let appended = result.unwrap();
        assert_eq!(appended[0].prev + 1, appended[0].seq);
        assert!(by_seq.insert(appended[0].seq, format!("b{i}")).is_none(), "seq {} handed out twice", appended[0].seq);
    }
    assert_eq!(by_seq.keys().copied().collect::<BTreeSet<_>>(), (1..=N as u64).collect());
    let page = log.read(&target, 0, N + 10).await.unwrap().unwrap();
    assert_eq!(page.head, N as u64);
    for (seq, event) in &page.events {
        assert_eq!(by_seq.get(seq), Some(&tag_of(event)), "event at seq {seq}");
    }
    // Each row names the conditional update that appended it: the waiting
    // appends went in together, a few batches instead of 200 Paxos rounds.
    let rows = store
        .session()
        .query_unpaged(
            format!("SELECT writer FROM {}.user_log WHERE user_id = ?", shared_keyspace()),
            (target.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let writers: BTreeSet<i64> = rows.rows::<(i64,)>().unwrap().map(|r| r.unwrap().0).collect();
    eprintln!("{N} appends in {} conditional updates", writers.len());
    assert!(writers.len() <= 10, "{} conditional updates for {N} waiting appends", writers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_append_hands_its_turn_on() {
    let store = shared_store(100_000).await;
    let log = store.stores().log;
    let u = user("cancel");
    let append = |tag: &'static str| {
        let (log, u) = (log.clone(), u.clone());
        async move { log.append(std::slice::from_ref(&u), &change(tag)).await }
    };
    let (mut a, mut c, mut d) = (Box::pin(append("a")), Box::pin(append("c")), Box::pin(append("d")));
    // `a` takes the log's turn; `c` and `d` wait behind it.
    assert!(futures::poll!(&mut a).is_pending());
    assert!(futures::poll!(&mut c).is_pending());
    assert!(futures::poll!(&mut d).is_pending());
    assert_eq!(a.await.unwrap()[0].seq, 1);
    // The turn went to `c`, which takes `d` along; `c` is cancelled mid-update.
    assert!(futures::poll!(&mut c).is_pending());
    drop(c);
    let d = tokio::time::timeout(Duration::from_secs(30), d).await.expect("a waiter of a cancelled turn hangs");
    assert_eq!(d.unwrap_err().code, ErrorCode::Unavailable, "d's outcome is unknown");
    // The log is not wedged: the next append gets the turn at once.
    let e = tokio::time::timeout(Duration::from_secs(30), append("e")).await.expect("the next append hangs");
    let seq = e.unwrap()[0].seq;
    let page = log.read(&u, 0, 10).await.unwrap().unwrap();
    assert_eq!(page.head, seq);
    let tags: Vec<String> = page.events.iter().map(|(_, e)| tag_of(e)).collect();
    assert_eq!(tags.first().map(String::as_str), Some("a"));
    assert_eq!(tags.last().map(String::as_str), Some("e"));
    // `c` and `d` went in together or not at all.
    assert!(matches!(tags.len(), 2 | 4), "{tags:?}");
    assert_eq!(page.events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=seq).collect::<Vec<_>>());

    // A waiter dropped after the turn was handed to it, before it ran, hands it on.
    let (mut f, mut g) = (Box::pin(append("f")), Box::pin(append("g")));
    assert!(futures::poll!(&mut f).is_pending());
    assert!(futures::poll!(&mut g).is_pending());
    assert_eq!(f.await.unwrap()[0].seq, seq + 1);
    drop(g);
    let h = tokio::time::timeout(Duration::from_secs(30), append("h")).await.expect("a dropped waiter wedged the log");
    assert_eq!(h.unwrap()[0].seq, seq + 2, "g was never appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_entry_head_is_read_before_its_rows_exist_and_copied_on() {
    let store = shared_store(100).await;
    let log = store.stores().log;
    let ks = shared_keyspace();
    let session = store.session().clone();
    let u = user("batchhead");
    // An appender that set the head to entries 1..=3 in one update and died
    // before writing any row.
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.user_log_head (user_id, seq, oldest, event, earlier, writer) VALUES (?, 3, 1, ?, ?, 7)"
            ),
            (u.as_str(), encoded("e3"), vec![encoded("e1"), encoded("e2")]),
        )
        .await
        .unwrap();
    let page = log.read(&u, 0, 10).await.unwrap().unwrap();
    assert_eq!(seen(&page), [(1, "e1".to_owned()), (2, "e2".to_owned()), (3, "e3".to_owned())]);
    assert_eq!(seen(&log.read(&u, 1, 1).await.unwrap().unwrap()), [(2, "e2".to_owned())]);

    // The next append (another connection, no cache) copies all three rows first.
    let other = shared_store(100).await;
    let appended = other.stores().log.append(std::slice::from_ref(&u), &change("e4")).await.unwrap();
    assert_eq!((appended[0].prev, appended[0].seq), (3, 4));
    let rows = session
        .query_unpaged(format!("SELECT seq, writer FROM {ks}.user_log WHERE user_id = ? AND seq <= 3"), (u.as_str(),))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let rows: Vec<(i64, i64)> = rows.rows::<(i64, i64)>().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(rows, [(1, 7), (2, 7), (3, 7)], "rows copied from the head, with its writer");
    let page = log.read(&u, 0, 10).await.unwrap().unwrap();
    assert_eq!(seen(&page), [(1, "e1".to_owned()), (2, "e2".to_owned()), (3, "e3".to_owned()), (4, "e4".to_owned())]);
}

// --------------------------------------------------------------- messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_sends_store_once() {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    let (a, b) = (user("a"), user("b"));
    // Each attempt gets its own id, as the message service assigns them.
    let now = natter_types::now_ms();
    let attempts: Vec<Message> = (0..16).map(|i| message(id_at(now, i), &a, &b, "same-client-id")).collect();
    let started = Instant::now();
    let results = join_all(attempts.iter().enumerate().map(|(i, m)| {
        let messages = stores[i % 2].stores().messages;
        let m = m.clone();
        async move { messages.insert_message(&m).await.unwrap() }
    }))
    .await;
    eprintln!("16 concurrent identical inserts on 2 connections: {:?}", started.elapsed());
    let winner = one_winner(&attempts, &results);
    let history = stores[0]
        .stores()
        .messages
        .history(&ConversationKey::single(&a, &b), None, Direction::Down, 100)
        .await
        .unwrap();
    assert_eq!(history, vec![winner.clone()], "stored once");
}

/// Idempotency records carry the window as their TTL, the fanned-out mark
/// no more than what is left of it; past the window, of concurrent sends
/// with the same client message id exactly one replaces the record; a row
/// left with only its mark is replaced too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_expire_with_the_window() {
    let mut options = options(shared_keyspace(), RETENTION);
    options.idempotency_window = Duration::from_secs(3600);
    let session = session(&options).await;
    migrate(&session, &options.keyspace, &options.replication).await.unwrap();
    let stores = [
        CqlStore::with_session(session.clone(), options.clone()).await.unwrap(),
        CqlStore::with_session(session.clone(), options.clone()).await.unwrap(),
    ];
    let messages = stores[0].stores().messages;
    let (a, b) = (user("a"), user("b"));
    let now = natter_types::now_ms();
    let first = message(id_at(now, 0), &a, &b, "ttl");
    assert_eq!(messages.insert_message(&first).await.unwrap(), Inserted::New);
    let ttls = || {
        let session = session.clone();
        let cql = format!(
            "SELECT TTL(msg_id), TTL(fanned_out) FROM {}.message_dedup WHERE sender = ? AND client_msg_id = 'ttl'",
            options.keyspace
        );
        let sender = a.to_string();
        async move {
            let rows = session.query_unpaged(cql, (sender,)).await.unwrap().into_rows_result().unwrap();
            rows.first_row::<(Option<i32>, Option<i32>)>().unwrap()
        }
    };
    let (record, mark) = ttls().await;
    assert!(record.is_some_and(|t| (3500..=3600).contains(&t)), "the record's TTL is the window: {record:?}");
    assert_eq!(mark, None, "not marked yet");
    messages.mark_fanned_out(&a, "ttl").await.unwrap();
    let (record, mark) = ttls().await;
    let (record, mark) = (record.unwrap(), mark.expect("the mark has a TTL"));
    // TTLs are whole seconds: the mark may end in the record's last second.
    assert!(mark > 0 && mark <= record, "the mark ({mark} s) does not outlive the record ({record} s)");

    // Past the window: eight concurrent sends, one new record.
    let later = now + 3_600_001;
    let attempts: Vec<Message> =
        (1..=8).map(|i| Message { timestamp: later, ..message(id_at(now, i), &a, &b, "ttl") }).collect();
    let results = join_all(attempts.iter().enumerate().map(|(i, m)| {
        let messages = stores[i % 2].stores().messages;
        let m = m.clone();
        async move { messages.insert_message(&m).await.unwrap() }
    }))
    .await;
    // The mark of the replaced record is not carried over (`one_winner`).
    one_winner(&attempts, &results);

    // A row left with only its mark (a build before the idempotency window,
    // 32a432b, marked it without the record's TTL, and the record expired)
    // holds nothing: it is replaced. Goes with that compatibility path.
    let cql = format!(
        "UPDATE {}.message_dedup SET fanned_out = true WHERE sender = ? AND client_msg_id = 'orphan'",
        options.keyspace
    );
    session.query_unpaged(cql, (a.to_string(),)).await.unwrap();
    let orphaned = message(id_at(now, 20), &a, &b, "orphan");
    assert_eq!(messages.insert_message(&orphaned).await.unwrap(), Inserted::New, "a row without its message");
    match messages.insert_message(&message(id_at(now, 21), &a, &b, "orphan")).await.unwrap() {
        Inserted::Duplicate { message, fanned_out } => {
            assert_eq!(message, orphaned, "the new record answers");
            assert!(!fanned_out, "the orphan's mark is gone");
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
}

/// The one attempt of concurrent inserts that stored its message; every other
/// one got that message back as a duplicate, not fanned out yet.
fn one_winner<'a>(attempts: &'a [Message], results: &[Inserted]) -> &'a Message {
    let new: Vec<usize> = results.iter().enumerate().filter(|(_, r)| **r == Inserted::New).map(|(i, _)| i).collect();
    assert_eq!(new.len(), 1, "exactly one insert wins: {results:?}");
    let winner = &attempts[new[0]];
    for r in results {
        if let Inserted::Duplicate { message, fanned_out } = r {
            assert_eq!(message, winner, "losers get the winner's message");
            assert!(!fanned_out);
        }
    }
    winner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_walks_buckets_both_ways() {
    let store = shared_store(RETENTION).await;
    let messages = store.stores().messages;
    let (a, b) = (user("a"), user("b"));
    let day = 24 * 3600 * 1000;
    let now = natter_types::now_ms();
    // Three messages in each of five buckets, with empty buckets between.
    let mut sent = Vec::new();
    for days_ago in [95, 61, 33, 12, 0] {
        for i in 0..3 {
            let m = message(id_at(now - days_ago * day, i), &a, &b, &format!("d{days_ago}i{i}"));
            sent.push(m);
        }
    }
    // Stored out of order.
    for m in sent.iter().rev() {
        assert_eq!(messages.insert_message(m).await.unwrap(), Inserted::New);
    }
    let conv = ConversationKey::single(&a, &b);
    let ids = |page: &[Message]| page.iter().map(|m| m.id).collect::<Vec<_>>();

    // Newest first, in pages of 4, across buckets.
    let mut up = Vec::new();
    let mut cursor = None;
    loop {
        let page = messages.history(&conv, cursor, Direction::Up, 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|m| m.id);
        up.extend(page);
    }
    assert_eq!(ids(&up), ids(&sent.iter().rev().cloned().collect::<Vec<_>>()));

    // Oldest first, in pages of 5.
    let mut down = Vec::new();
    let mut cursor = None;
    loop {
        let page = messages.history(&conv, cursor, Direction::Down, 5).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|m| m.id);
        down.extend(page);
    }
    assert_eq!(ids(&down), ids(&sent));

    // A cursor at a bucket's edge, and one page spanning all buckets.
    let after = messages.history(&conv, Some(sent[2].id), Direction::Down, 2).await.unwrap();
    assert_eq!(ids(&after), ids(&sent[3..5]));
    let all = messages.history(&conv, None, Direction::Up, 100).await.unwrap();
    assert_eq!(all.len(), sent.len());
    for m in &sent {
        assert_eq!(messages.get_message(&conv, m.id).await.unwrap().as_ref(), Some(m));
    }
}

// ---------------------------------------------------------- conversations

/// Writes the idempotency record of a counted send as a send that died
/// right after it leaves it: no position yet, no history row.
async fn pending_record(store: &CqlStore, message: &Message) {
    let blob = natter_proto::ProstMessage::encode_to_vec(&natter_proto::v1::Message::from(message));
    let cql = format!(
        "INSERT INTO {}.message_dedup (sender, client_msg_id, conversation, msg_id, message, counted) \
         VALUES (?, ?, ?, ?, ?, true) USING TTL 3600",
        shared_keyspace()
    );
    let conversation = message.conversation();
    let values = (message.from.as_str(), &message.client_msg_id, conversation.as_str(), message.id.0 as i64, blob);
    store.session().query_unpaged(cql, values).await.unwrap();
}

/// The head's `(pos, recent)`.
async fn head_row(store: &CqlStore, conversation: &ConversationKey) -> (i64, Vec<i64>) {
    let cql = format!("SELECT pos, recent FROM {}.conversation_heads WHERE conversation = ?", shared_keyspace());
    let rows = store.session().query_unpaged(cql, (conversation.as_str(),)).await.unwrap().into_rows_result().unwrap();
    let (pos, recent) = rows.first_row::<(i64, Option<Vec<i64>>)>().unwrap();
    (pos, recent.unwrap_or_default())
}

async fn send_counted(store: &CqlStore, message: &Message) -> natter_store::Stored {
    let users = [message.from.clone(), UserId::parse(&message.to, "to").unwrap()];
    let stores = store.stores();
    stores.messages.insert_and_append(message, &users, true, stores.log.as_ref()).await.unwrap()
}

/// A send that died after its idempotency record and before its position:
/// the retry gives it the next position, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_died_before_its_position_takes_one_on_retry() {
    let store = shared_store(RETENTION).await;
    let (a, b) = (user("a"), user("b"));
    let now = natter_types::now_ms();
    send_counted(&store, &message(id_at(now, 0), &a, &b, "c0")).await;
    let died = message(id_at(now, 1), &a, &b, "c1");
    pending_record(&store, &died).await;
    assert_eq!(send_counted(&store, &message(id_at(now, 2), &b, &a, "c2")).await.message.pos, 2);

    let retried = send_counted(&store, &message(id_at(now, 3), &a, &b, "c1")).await;
    assert!(retried.duplicate);
    assert_eq!(retried.message, Message { pos: 3, ..died.clone() }, "the stored message, positioned now");
    assert_eq!(retried.appended.len(), 2, "and fanned out");
    let again = send_counted(&store, &message(id_at(now, 4), &a, &b, "c1")).await;
    assert_eq!((again.message.pos, again.appended.len()), (3, 0), "once");
    let conv = died.conversation();
    assert_eq!(head_row(&store, &conv).await.0, 3);
    let history = store.stores().messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(history.iter().map(|m| m.pos).collect::<Vec<_>>(), [1, 3, 2], "in id order, each with its position");
    let state = store.stores().conversations.user_conversation(&a, &conv).await.unwrap().unwrap();
    assert_eq!(state.read_pos, 3, "the sender's read position moved with it");
}

/// A send that died after taking its position and before recording it: the
/// retry finds the position among the head's recent ids, on another
/// connection and after later messages, and takes no second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_died_after_taking_its_position_keeps_it() {
    let store = shared_store(RETENTION).await;
    let (a, b) = (user("a"), user("b"));
    let now = natter_types::now_ms();
    let first = send_counted(&store, &message(id_at(now, 0), &a, &b, "k0")).await.message;
    let died = message(id_at(now, 1), &a, &b, "k1");
    pending_record(&store, &died).await;
    let conv = died.conversation();
    let cql = format!(
        "UPDATE {}.conversation_heads SET pos = 2, last_id = ?, last_time = ?, recent = ? WHERE conversation = ?",
        shared_keyspace()
    );
    let recent = vec![first.id.0 as i64, died.id.0 as i64];
    store.session().query_unpaged(cql, (died.id.0 as i64, died.timestamp, recent, conv.as_str())).await.unwrap();
    for i in 2..12 {
        let later = send_counted(&store, &message(id_at(now, i), &b, &a, &format!("k{i}"))).await;
        assert_eq!(later.message.pos, i + 1);
    }

    let other = shared_store(RETENTION).await;
    let retried = send_counted(&other, &message(id_at(now, 20), &a, &b, "k1")).await;
    assert_eq!(retried.message, Message { pos: 2, ..died.clone() }, "the position it took");
    assert_eq!(head_row(&store, &conv).await.0, 12, "no second position");
    let stored = other.stores().messages.get_message(&conv, died.id).await.unwrap().unwrap();
    assert_eq!(stored.pos, 2, "history has it");
    match other.stores().messages.insert_message(&message(id_at(now, 21), &a, &b, "k1")).await.unwrap() {
        Inserted::Duplicate { message, fanned_out } => {
            assert_eq!((message.pos, fanned_out), (2, true), "and so does the record");
        }
        Inserted::New => panic!("the record is gone"),
    }
}

/// Identical counted sends racing on two connections: one position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_counted_sends_take_one_position() {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    let (a, b) = (user("a"), user("b"));
    let now = natter_types::now_ms();
    let results = join_all((0..8u64).map(|i| {
        let store = stores[i as usize % 2].clone();
        let m = message(id_at(now, i), &a, &b, "twin");
        async move { send_counted(&store, &m).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1, "one wins the record");
    let winner = results.iter().find(|r| !r.duplicate).unwrap().message.clone();
    assert_eq!(winner.pos, 1);
    assert!(results.iter().all(|r| r.message == winner), "every attempt answers with the winner, positioned");
    let conv = winner.conversation();
    assert_eq!(head_row(&stores[0], &conv).await, (1, vec![winner.id.0 as i64]));
}

/// Concurrent counted sends to one group from two connections (standing for
/// two message processes): dense positions, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_sends_from_two_connections_get_positions_1_to_n() {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    let owner = user("o");
    let group = Group {
        id: GroupId::from_id(id_at(natter_types::now_ms(), 9).0 ^ (std::process::id() as u64)),
        name: "busy".into(),
        description: String::new(),
        owner: owner.clone(),
        created_at: natter_types::now_ms(),
        member_count: 0,
        max_members: 10,
    };
    let members: Vec<GroupMember> = std::iter::once(owner.clone())
        .chain((0..3).map(|_| user("m")))
        .map(|u| member(&u, GroupRole::Member))
        .collect();
    stores[0].stores().groups.create_group(&group, &members).await.unwrap();
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id.clone()).collect();
    const N: u64 = 40;
    let now = natter_types::now_ms();
    let started = Instant::now();
    let results = join_all((0..N).map(|i| {
        let stores = stores[i as usize % 2].stores();
        let ids = ids.clone();
        let m = Message {
            to: group.id.to_string(),
            chat_type: ChatType::Group,
            ..message(id_at(now, i), &ids[i as usize % ids.len()], &owner, &format!("g{i}"))
        };
        async move { stores.messages.insert_and_append(&m, &ids, true, stores.log.as_ref()).await.unwrap() }
    }))
    .await;
    eprintln!("{N} concurrent counted group sends on 2 connections: {:?}", started.elapsed());
    let positions: BTreeSet<u64> = results.iter().map(|r| r.message.pos).collect();
    assert_eq!(positions, (1..=N).collect(), "dense and each once");
    let conv = ConversationKey::group(&group.id);
    assert_eq!(head_row(&stores[0], &conv).await.0, N as i64);
    let history = stores[1].stores().messages.history(&conv, None, Direction::Up, 100).await.unwrap();
    assert_eq!(history.iter().map(|m| m.pos).collect::<BTreeSet<_>>(), positions, "history has the same");
}

// ----------------------------------------------------------------- groups

fn member(user: &UserId, role: GroupRole) -> GroupMember {
    GroupMember { user_id: user.clone(), role, joined_at: natter_types::now_ms() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_size_limit_holds_under_concurrent_adds() {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    let owner = user("o");
    let group = Group {
        id: GroupId::from_id(id_at(natter_types::now_ms(), 7).0 ^ (std::process::id() as u64)),
        name: "race".into(),
        description: String::new(),
        owner: owner.clone(),
        created_at: natter_types::now_ms(),
        member_count: 0,
        max_members: 10,
    };
    stores[0].stores().groups.create_group(&group, &[member(&owner, GroupRole::Owner)]).await.unwrap();

    // 24 adds of two new users each race for 9 free places.
    let started = Instant::now();
    let results = join_all((0..24).map(|i| {
        let groups = stores[i % 2].stores().groups;
        let id = group.id.clone();
        async move {
            let pair = [member(&user("p"), GroupRole::Member), member(&user("q"), GroupRole::Member)];
            groups.add_members(&id, &pair).await
        }
    }))
    .await;
    eprintln!("24 concurrent add_members on 2 connections: {:?}", started.elapsed());
    let mut added = 0;
    for r in &results {
        match r {
            Ok(ok) => {
                assert_eq!(ok.added.len(), 2, "all or nothing");
                added += 2;
            }
            Err(e) => assert_eq!((e.code, e.field.as_deref()), (ErrorCode::LimitExceeded, Some("max_members"))),
        }
    }
    assert_eq!(added, 8, "four pairs fit in the nine free places, a fifth does not");
    let g = stores[1].stores().groups.get_group(&group.id).await.unwrap().unwrap();
    let ids = stores[1].stores().groups.member_ids(&group.id).await.unwrap();
    assert_eq!((g.member_count, ids.len()), (9, 9));

    // The same new user added from many tasks at once counts once.
    let late = user("late");
    let results = join_all((0..8).map(|i| {
        let groups = stores[i % 2].stores().groups;
        let (id, m) = (group.id.clone(), member(&late, GroupRole::Member));
        async move { groups.add_members(&id, &[m]).await.unwrap() }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| !r.added.is_empty()).count(), 1);
    let g = stores[0].stores().groups.get_group(&group.id).await.unwrap().unwrap();
    assert_eq!(g.member_count, 10);
    assert_eq!(stores[0].stores().groups.user_groups(&late).await.unwrap(), vec![group.id.clone()]);
    let page = stores[0].stores().groups.list_members(&group.id, None, 100).await.unwrap();
    assert!(page.windows(2).all(|w| w[0].user_id < w[1].user_id), "ordered by user id");
    assert_eq!(page.len(), 10);
}

// ----------------------------------------------------------------- errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_unavailable() {
    let mut opts = options(shared_keyspace(), RETENTION);
    opts.contact_points = vec!["127.0.0.1:1".into()];
    opts.connect_timeout = Duration::from_secs(2);
    let err = CqlStore::connect(opts).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    assert_eq!(err.message, err.message.to_lowercase());
    let bad = CqlStore::connect(CqlOptions { keyspace: "No-Such".into(), ..options("x", 1) }).await.unwrap_err();
    assert_eq!(bad.code, ErrorCode::BadRequest);
}

// --------------------------------------------------------------- timeouts

/// A store whose requests time out after `timeout`, so conditional updates
/// often end with an outcome the driver cannot confirm.
async fn impatient_store(timeout: Duration) -> CqlStore {
    let patient = shared_store(100_000).await;
    let options = CqlOptions { request_timeout: timeout, ..patient.options().clone() };
    let session = session(&options).await;
    // Preparing may itself time out; try a few times.
    let mut last = None;
    for _ in 0..20 {
        match CqlStore::with_session(session.clone(), options.clone()).await {
            Ok(store) => return store,
            Err(e) => last = Some(e),
        }
    }
    panic!("no impatient store: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_sends_with_unconfirmed_outcomes_keep_the_invariants() {
    let patient = shared_store(100_000).await;
    let impatient = impatient_store(Duration::from_millis(6)).await;
    let target = user("timeouts");
    let mut handles = Vec::new();
    for (s, store) in [&patient, &impatient, &impatient, &impatient].into_iter().enumerate() {
        let log = store.stores().log;
        let target = target.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..30 {
                let tag = format!("s{s}i{i}");
                let result = log.append(std::slice::from_ref(&target), &change(&tag)).await;
                got.push((tag, result.map(|a| a[0].seq)));
            }
            got
        }));
    }
    let mut ok = HashMap::new();
    let (mut failed, mut succeeded) = (0, 0);
    for handle in handles {
        for (tag, result) in handle.await.unwrap() {
            match result {
                Ok(seq) => {
                    succeeded += 1;
                    ok.insert(tag, seq);
                }
                Err(e) => {
                    failed += 1;
                    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                }
            }
        }
    }
    eprintln!("appends with a 6 ms timeout: {succeeded} confirmed, {failed} failed");
    let page = patient.stores().log.read(&target, 0, 1000).await.unwrap().unwrap();
    // Gapless 1..=head, every event at most once, every confirmed one where
    // its append said (a failed append may or may not have landed).
    assert_eq!(page.events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=page.head).collect::<Vec<_>>());
    let mut seen = BTreeSet::new();
    for (seq, event) in &page.events {
        let tag = tag_of(event);
        assert!(seen.insert(tag.clone()), "{tag} appended twice");
        if let Some(expected) = ok.get(&tag) {
            assert_eq!(expected, seq, "{tag}");
        }
    }
    assert!(ok.keys().all(|t| seen.contains(t)), "every confirmed append is in the log");

    // Identical sends: at most one wins, every duplicate names the same message.
    let (a, b) = (user("a"), user("b"));
    let now = natter_types::now_ms();
    let results = join_all((0..12u64).map(|i| {
        let messages = if i % 3 == 0 { patient.stores().messages } else { impatient.stores().messages };
        let m = message(id_at(now, i), &a, &b, "impatient");
        async move { messages.insert_message(&m).await }
    }))
    .await;
    let news = results.iter().filter(|r| matches!(r, Ok(Inserted::New))).count();
    assert!(news <= 1, "{results:?}");
    let stored = patient.stores().messages.history(&ConversationKey::single(&a, &b), None, Direction::Down, 10).await;
    let stored = stored.unwrap();
    assert!(stored.len() <= 1, "stored once: {stored:?}");
    for r in results.iter().flatten() {
        if let Inserted::Duplicate { message, .. } = r {
            assert_eq!(Some(message), stored.first());
        }
    }
}

// ------------------------------------------------------- session registry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_done_expiry_is_finished_by_the_next_one() {
    // Lease times near 0, as the registry checks that expire leases use.
    let _one_at_a_time = conformance::EXPIRING_LEASES.lock().await;
    let store = shared_store(RETENTION).await;
    let registry = store.sessions();
    let ks = shared_keyspace();
    let gateway = unique("halfdead");
    let (a, b) = (user("a"), user("b"));
    let info = |u: &UserId, id: &str| natter_types::SessionInfo {
        user: u.clone(),
        session: natter_types::SessionId(id.to_owned()),
        device: id.to_owned(),
        gateway: gateway.clone(),
        platform: "PC".into(),
        client_addr: "10.0.0.2:1".into(),
        connected_at: 7,
    };
    registry.register(info(&a, "a1"), 4).await.unwrap();
    registry.register(info(&b, "b1"), 4).await.unwrap();
    registry.renew_lease(&gateway, 10).await.unwrap();
    // An expirer that removed a1 and died before b1 and the lease row.
    assert!(registry.unregister(&a, &natter_types::SessionId("a1".into())).await.unwrap().is_some());
    let mut gone: Vec<String> = registry
        .expire_leases(20)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.gateway == gateway)
        .map(|s| s.session.0)
        .collect();
    gone.sort();
    assert_eq!(gone, ["b1"], "only what was still registered");
    let rows = |cql: String| {
        let session = store.session().clone();
        let gateway = gateway.clone();
        async move { session.query_unpaged(cql, (gateway,)).await.unwrap().into_rows_result().unwrap().rows_num() }
    };
    let index = rows(format!("SELECT session_id FROM {ks}.gateway_sessions WHERE gateway = ?")).await;
    assert_eq!(index, 0, "its index rows are gone");
    let lease = rows(format!("SELECT until FROM {ks}.gateway_leases WHERE shard = 0 AND gateway = ?")).await;
    assert_eq!(lease, 0, "and its lease row");
}

// ----------------------------------------------------------------- leases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_exclusive_between_connections_and_renewable_by_the_holder() {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    let (one, two) = (stores[0].leases(), stores[1].leases());
    let name = unique("lease");
    let ttl = Duration::from_secs(30);
    let results = join_all((0..8).map(|i| {
        let leases = if i % 2 == 0 { one.clone() } else { two.clone() };
        let name = name.clone();
        async move { leases.acquire(&name, &format!("owner{i}"), ttl).await.unwrap() }
    }))
    .await;
    assert_eq!(results.iter().filter(|won| **won).count(), 1, "one of 8 concurrent takers wins: {results:?}");
    let winner = format!("owner{}", results.iter().position(|won| *won).unwrap());
    assert!(two.acquire(&name, &winner, ttl).await.unwrap(), "the holder renews through any connection");
    one.release(&name, &winner).await.unwrap();
    assert!(two.acquire(&name, "late", ttl).await.unwrap(), "released, so free");
    two.release(&name, "late").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_after_its_ttl() {
    let store = shared_store(RETENTION).await;
    let leases = store.leases();
    let name = unique("lease");
    // The shortest lease there is: the database's TTL counts whole seconds.
    assert!(leases.acquire(&name, "a", Duration::from_secs(1)).await.unwrap());
    assert!(!leases.acquire(&name, "b", Duration::from_secs(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(leases.acquire(&name, "b", Duration::from_secs(60)).await.unwrap(), "a's lease ran out");
    assert!(!leases.acquire(&name, "a", Duration::from_secs(1)).await.unwrap());
    leases.release(&name, "b").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_node_id_gives_distinct_ids_to_concurrent_claimers() {
    let stores = [shared_store(RETENTION).await, shared_store(RETENTION).await];
    // A claimer that already holds an id may be given it again, never another's.
    let leases = stores[0].leases();
    let id = claim_node_id(leases.as_ref(), "solo", Duration::from_secs(30)).await.unwrap();
    let other = claim_node_id(stores[1].leases().as_ref(), "other", Duration::from_secs(30)).await.unwrap();
    assert_ne!(id, other);
    leases.release(&format!("node-id/{id}"), "solo").await.unwrap();
    leases.release(&format!("node-id/{other}"), "other").await.unwrap();
}
