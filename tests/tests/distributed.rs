//! The end-to-end scenarios against the distributed mode: separate `natter`
//! processes per role (two gateways) over a real nats-server and Cassandra,
//! with clients spread over both gateways (see `natter_e2e::cluster`). Every
//! scenario of `natter_e2e::scenarios` runs here under the same name as in
//! `tests/single_node.rs` (`natter_e2e::scenarios!`); the crash and failover
//! tests below exist only here.
//!
//! Needs `deploy/nats.sh start`, `deploy/cassandra.sh start` and the binary
//! from `cargo build -p natter-server --features distributed`; run with
//! `cargo test -p natter-e2e --features distributed --test distributed`.
//! Fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use natter_client::{Client, ClientError, ClientEvent, ClientOptions, Events, v1};
use natter_e2e::cluster::{Balancer, Cluster, NatsServer, Role, SCALED, node_of};
use natter_e2e::{Deployment, WAIT, assert_quiet, connect_caught_up, messages, next_presence_of};
use tokio::sync::watch;
use tokio::time::Instant;

// ------------------------------------------------------------------ the shared scenarios

natter_e2e::scenarios!(Cluster);

// ------------------------------------------------------------------ distributed only

fn text(to: &str, client_msg_id: &str, text: &str) -> v1::SendMessage {
    v1::SendMessage {
        client_msg_id: client_msg_id.into(),
        to: to.into(),
        chat_type: v1::ChatType::Single as i32,
        body: Some(v1::send_message::Body::Text(v1::TextBody { text: text.into() })),
        ..Default::default()
    }
}

/// What a client may retry with the same client message id: the server said
/// it could not reach the service (UNAVAILABLE), or no answer came in time.
/// Not INTERNAL: that is a bug's answer, which a client cannot tell from "the
/// send may or may not have been applied".
fn retryable(e: &ClientError) -> bool {
    e.code() == Some(v1::ErrorCode::Unavailable) || matches!(e, ClientError::Timeout)
}

/// Sends until acknowledged, retrying retryable failures with the same client
/// message id for up to `limit`; counts each failed attempt in `failures`.
/// Returns the ack and the number of failed attempts before it.
async fn send_retrying(
    client: &Client,
    message: &v1::SendMessage,
    limit: Duration,
    failures: &watch::Sender<u32>,
) -> (v1::SendResult, u32) {
    let deadline = Instant::now() + limit;
    let mut failed = 0;
    loop {
        match client.send(message.clone()).await {
            Ok(ack) => return (ack, failed),
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                failed += 1;
                failures.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("send {} failed for good after {failed} failed attempts: {e:?}", message.client_msg_id),
        }
    }
}

/// One acknowledged send: client message id, ack, failed attempts before it.
type Acked = (String, v1::SendResult, u32);

/// alice sending `n` texts to bob with [`send_retrying`] (each for up to
/// `per_send`). The last quarter waits for `resume`, so a fault injected once
/// a quarter is acknowledged falls mid-stream however fast the start went.
struct RetryingSender {
    task: tokio::task::JoinHandle<Vec<Acked>>,
    /// (acknowledged so far, the last id)
    acked: watch::Receiver<(usize, u64)>,
    failures: watch::Receiver<u32>,
    resume: watch::Sender<bool>,
}

impl RetryingSender {
    fn spawn(alice: &Client, bob: &str, n: usize, per_send: Duration) -> Self {
        let (acked_tx, acked) = watch::channel((0usize, 0u64));
        let (failures_tx, failures) = watch::channel(0u32);
        let (resume, mut resume_rx) = watch::channel(false);
        let (alice, bob) = (alice.clone(), bob.to_owned());
        let task = tokio::spawn(async move {
            let mut acks = Vec::with_capacity(n);
            for i in 0..n {
                if i == 3 * n / 4 {
                    resume_rx.wait_for(|resume| *resume).await.unwrap();
                }
                let message = text(&bob, &format!("k{i}"), &format!("m{i}"));
                let (ack, failed) = send_retrying(&alice, &message, per_send, &failures_tx).await;
                acked_tx.send_replace((acks.len() + 1, ack.server_msg_id));
                acks.push((message.client_msg_id, ack, failed));
            }
            acks
        });
        Self { task, acked, failures, resume }
    }

    /// Waits until a quarter is acknowledged; the last id acknowledged.
    async fn first_quarter(&mut self, n: usize) -> u64 {
        let acked = tokio::time::timeout(WAIT, self.acked.wait_for(|(count, _)| *count >= n / 4))
            .await
            .expect("sends flow")
            .expect("the sender stopped early (its panic is above)");
        acked.1
    }
}

/// bob has every acknowledged message exactly once, in order, with
/// increasing ids (`across` names the fault in between).
async fn assert_received_in_order(acks: &[Acked], bob_events: &mut Events, across: &str) {
    let expected: Vec<(String, u64)> = acks.iter().map(|(id, ack, _)| (id.clone(), ack.server_msg_id)).collect();
    let got: Vec<(String, u64)> =
        messages(bob_events, acks.len()).await.into_iter().map(|m| (m.client_msg_id, m.id)).collect();
    assert_eq!(got, expected, "every acknowledged message, once, in order");
    assert!(expected.windows(2).all(|w| w[0].1 < w[1].1), "ids increase across {across}");
}

/// Each send again: a duplicate, with the id and time of its ack.
async fn assert_sent_again_are_duplicates<'a>(alice: &Client, bob: &str, acks: impl IntoIterator<Item = &'a Acked>) {
    for (id, ack, _) in acks {
        let again = alice.send(text(bob, id, "again")).await.expect("retry");
        assert!(again.duplicate, "{id} is known");
        assert_eq!((again.server_msg_id, again.timestamp), (ack.server_msg_id, ack.timestamp), "{id}");
    }
}

/// alice (gateway 0) streams messages to bob; bob's phone, behind a load
/// balancer, is on gateway 1, which is killed with SIGKILL mid-stream. The
/// phone reconnects by itself (the balancer sends it to gateway 0) and ends up
/// with every acknowledged message exactly once, in order; bob's laptop on
/// gateway 0 never notices.
#[tokio::test]
async fn kill9_gateway_while_messages_flow() {
    const N: usize = 200;
    // alice sends as fast as her sends are acknowledged, past the default
    // rate limit of a connection (50/s, burst 100) once nothing delays acks.
    let mut cluster = Cluster::start_with(|c| {
        c.limits.requests_per_second = 10_000;
        c.limits.request_burst = 10_000;
    })
    .await;
    let bob = cluster.user("bob");
    let (alice, _alice_events) = cluster.client_on("alice", 0).await;
    let balancer = Balancer::start(vec![cluster.ws_addr(1), cluster.ws_addr(0)]).await;
    let (_phone, mut phone_events) =
        connect_caught_up(ClientOptions { url: balancer.url(), ..cluster.options_on("bob", 1) }).await;
    let (_laptop, mut laptop_events) = cluster.client_on("bob", 0).await;

    let (acked_tx, mut acked_rx) = watch::channel(0usize);
    let (killed_tx, mut killed_rx) = watch::channel(false);
    let sender = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(N);
        for i in 0..N {
            if i == 3 * N / 4 {
                // The last quarter waits for the kill, so it is mid-stream
                // however fast the first part went.
                killed_rx.wait_for(|killed| *killed).await.unwrap();
            }
            let ack =
                alice.send_text(&bob, v1::ChatType::Single, format!("m{i}")).await.expect("alice's gateway lives");
            ids.push(ack.server_msg_id);
            acked_tx.send_replace(ids.len());
        }
        ids
    });

    tokio::time::timeout(WAIT, acked_rx.wait_for(|n| *n >= N / 4)).await.expect("sends flow").unwrap();
    cluster.kill(Role::Gateway(1)).await;
    killed_tx.send_replace(true);

    let mut got = Vec::with_capacity(N);
    let (mut drops, mut connects) = (0, 0);
    while got.len() < N {
        match phone_events.recv_timeout(WAIT).await.expect("bob's phone keeps receiving") {
            ClientEvent::OnTextMessage(m) => got.push(m.id),
            ClientEvent::Disconnected { .. } => drops += 1,
            ClientEvent::Connected(_) => connects += 1,
            _ => {}
        }
    }
    let sent = tokio::time::timeout(WAIT, sender).await.expect("alice finishes").unwrap();
    assert_eq!(got, sent, "the phone: every acknowledged message, once, in order");
    assert!(
        drops >= 1 && connects >= 1,
        "the phone lost gateway 1 and reconnected ({drops} drops, {connects} connects)"
    );
    let on_laptop: Vec<u64> = messages(&mut laptop_events, N).await.iter().map(|m| m.id).collect();
    assert_eq!(on_laptop, sent, "the laptop on the surviving gateway");
    assert_quiet(&cluster, "bob", &mut phone_events).await;
    assert_quiet(&cluster, "bob", &mut laptop_events).await;
    cluster.assert_running(&[Role::Message(0), Role::Presence(0), Role::Conversation, Role::Gateway(0)]);
}

/// The message role is killed with SIGKILL while alice sends, and started
/// again on the same port. alice retries what failed with the same client
/// message id. bob gets every acknowledged message exactly once, in order,
/// and a retry of an applied send is a duplicate with the original id.
#[tokio::test]
async fn kill9_message_role_mid_stream_loses_no_acked_message() {
    const N: usize = 200;
    // The check at the end sends all N again as fast as duplicates are
    // answered, past the default rate limit of a connection.
    let mut cluster = Cluster::start_with(|c| {
        c.limits.requests_per_second = 10_000;
        c.limits.request_burst = 10_000;
    })
    .await;
    let bob = cluster.user("bob");
    let (alice, _alice_events) = cluster.client_on("alice", 0).await;
    let (_bob, mut bob_events) = cluster.client_on("bob", 1).await;

    // Long enough per send for a restart on a busy machine.
    let mut sender = RetryingSender::spawn(&alice, &bob, N, Duration::from_secs(120));
    sender.first_quarter(N).await;
    cluster.kill(Role::Message(0)).await;
    // Down until a send has failed: a real outage, not a blink.
    tokio::time::timeout(WAIT, sender.failures.wait_for(|n| *n >= 1))
        .await
        .expect("a send fails")
        .expect("the sender stopped early (its panic is above)");
    cluster.start_role(Role::Message(0)).await;
    sender.resume.send_replace(true);
    let acks = tokio::time::timeout(Duration::from_secs(180), sender.task).await.expect("alice finishes").unwrap();

    assert_received_in_order(&acks, &mut bob_events, "the restart").await;
    assert_quiet(&cluster, "bob", &mut bob_events).await;

    let retried: Vec<_> = acks.iter().filter(|(_, _, failed)| *failed > 0).collect();
    assert!(!retried.is_empty(), "the kill fell between sends: nothing was retried");
    let applied_before_crash = retried.iter().filter(|(_, ack, _)| ack.duplicate).count();
    eprintln!(
        "{} sends failed at least once ({} failed attempts); {applied_before_crash} of them had been applied",
        retried.len(),
        *sender.failures.borrow()
    );
    assert_sent_again_are_duplicates(&alice, &bob, &acks).await;
    assert_quiet(&cluster, "bob", &mut bob_events).await;
    cluster.assert_running(&[Role::Presence(0), Role::Conversation, Role::Gateway(0), Role::Gateway(1)]);
}

/// The cluster runs on a nats-server of its own, which is killed and started
/// again on the same port. Without restarting any natter process, messages
/// flow live between the gateways again, and what was acknowledged during the
/// outage is delivered too (gap fill from the durable log).
#[tokio::test]
async fn nats_restart_recovers_by_itself() {
    // Bounds the wait for the bus to come back.
    const RECOVERY: Duration = Duration::from_secs(60);
    const OUTAGE: Duration = Duration::from_secs(2);
    let mut nats = NatsServer::start().await;
    let mut cluster = Cluster::start_on_nats(&nats.url(), |_| {}).await;
    let bob = cluster.user("bob");
    let (alice, _alice_events) = connect_caught_up(ClientOptions {
        // Sends during the outage may hang; do not wait the default 10 s each.
        request_timeout: Duration::from_secs(5),
        ..cluster.options_on("alice", 0)
    })
    .await;
    let (_bob, mut bob_events) = cluster.client_on("bob", 1).await;
    let (failures, _) = watch::channel(0u32);

    let mut acked = Vec::new();
    let mut got = Vec::new();
    let ack = alice.send_text(&bob, v1::ChatType::Single, "before").await.expect("send");
    acked.push(ack.server_msg_id);
    got.push(bob_events.next_message(WAIT).await.expect("live across gateways").id);

    nats.kill().await;
    let mut unanswered = Vec::new();
    for i in 0..3 {
        let message = text(&bob, &format!("outage{i}"), "during the outage");
        match alice.send(message.clone()).await {
            Ok(ack) => acked.push(ack.server_msg_id),
            Err(e) if retryable(&e) => unanswered.push(message),
            Err(e) => panic!("send during the outage: {e:?}"),
        }
    }
    eprintln!("{} of 3 sends acknowledged while NATS was down", 3 - unanswered.len());
    // A restart takes a while: long enough for the clients' reconnect
    // attempts to fail and back off, which the wait below has to absorb.
    tokio::time::sleep(OUTAGE).await;

    nats.start_again().await;
    let back = Instant::now();
    // Whatever was not answered is sent again, the same ids: a duplicate if
    // it had been applied.
    for message in &unanswered {
        acked.push(send_retrying(&alice, message, RECOVERY, &failures).await.0.server_msg_id);
    }
    // Probe until one arrives live: that takes the gateway's subscription
    // working again.
    let mut probe = 0;
    loop {
        let message = text(&bob, &format!("probe{probe}"), "are we live?");
        let id = send_retrying(&alice, &message, RECOVERY, &failures).await.0.server_msg_id;
        acked.push(id);
        probe += 1;
        let until = Instant::now() + Duration::from_secs(1);
        let mut arrived = false;
        while let Ok(Ok(m)) = tokio::time::timeout_at(until, bob_events.next_message(WAIT)).await {
            got.push(m.id);
            if m.id == id {
                arrived = true;
                break;
            }
        }
        if arrived {
            break;
        }
        assert!(back.elapsed() < RECOVERY, "no live delivery {RECOVERY:?} after NATS came back ({probe} probes)");
    }
    eprintln!("live again {:?} after NATS came back, {probe} probes", back.elapsed());
    // The log's order is the order the message role assigned ids in (one
    // sender, one request at a time); a retried send keeps its first id.
    let mut expected = acked.clone();
    expected.sort_unstable();
    expected.dedup();
    while got.len() < expected.len() {
        got.push(bob_events.next_message(WAIT).await.expect("the rest arrives").id);
    }
    assert_eq!(got, expected, "every acknowledged message, once, in order");
    assert_quiet(&cluster, "bob", &mut bob_events).await;
    cluster.assert_running(&[
        Role::Message(0),
        Role::Presence(0),
        Role::Conversation,
        Role::Gateway(0),
        Role::Gateway(1),
    ]);
}

/// alice on gateway 0 follows bob, whose devices come and go on gateway 1
/// and then gateway 0.
#[tokio::test]
async fn presence_follows_a_user_across_gateways() {
    let cluster = Cluster::start_with(|c| c.presence.flap_window_ms = 0).await;
    let bob = cluster.user("bob");
    let (alice, mut alice_events) = cluster.client_on("alice", 0).await;
    assert!(!alice.subscribe_presence([bob.clone()], 600).await.unwrap()[0].online);

    let (phone, _phone_events) = cluster.client_on("bob", 1).await;
    let online = next_presence_of(&mut alice_events, &bob).await;
    assert_eq!((online.user_id.as_str(), online.online), (bob.as_str(), true), "connect on the other gateway");
    phone.close().await;
    let offline = next_presence_of(&mut alice_events, &bob).await;
    assert_eq!((offline.user_id.as_str(), offline.online), (bob.as_str(), false), "disconnect on the other gateway");

    let (laptop, _laptop_events) = cluster.client_on("bob", 0).await;
    assert!(next_presence_of(&mut alice_events, &bob).await.online, "connect on alice's gateway");
    laptop.publish_presence("back").await.unwrap();
    assert_eq!(next_presence_of(&mut alice_events, &bob).await.description, "back");
    let status = alice.get_presence_status([bob.clone()]).await.unwrap();
    assert!(status[0].online && status[0].devices.len() == 1, "{status:?}");
}

/// The lease rule with a real process: bob's gateway dies with SIGKILL, so
/// nobody reports his disconnect; the presence role takes him offline when
/// the gateway's lease runs out.
#[tokio::test]
async fn kill9_gateway_takes_its_users_offline_within_the_lease() {
    const LEASE_MS: u64 = 3_000;
    let mut cluster = Cluster::start_with(|c| {
        c.presence.lease_ms = LEASE_MS;
        c.presence.flap_window_ms = 0;
    })
    .await;
    let bob = cluster.user("bob");
    let (alice, mut alice_events) = cluster.client_on("alice", 0).await;
    alice.subscribe_presence([bob.clone()], 600).await.unwrap();
    // No reconnect: a reconnect elsewhere would bring bob back online.
    let (_bob, _bob_events) =
        connect_caught_up(ClientOptions { reconnect: false, ..cluster.options_on("bob", 1) }).await;
    assert!(next_presence_of(&mut alice_events, &bob).await.online);

    let killed = Instant::now();
    cluster.kill(Role::Gateway(1)).await;
    let offline = next_presence_of(&mut alice_events, &bob).await;
    let elapsed = killed.elapsed();
    assert_eq!((offline.user_id.as_str(), offline.online), (bob.as_str(), false));
    // The lease was renewed at most LEASE_MS before it ends, and the checker
    // looks every third of it; a second for the rest.
    let bound = Duration::from_millis(LEASE_MS + LEASE_MS / 3 + 1_000);
    assert!(elapsed <= bound, "offline {elapsed:?} after the kill, more than {bound:?}");
    eprintln!("bob offline {elapsed:?} after his gateway was killed (lease {LEASE_MS} ms)");
}

/// SIGTERM on a gateway: its clients are told SERVER_SHUTDOWN, the process
/// exits 0 (checked by `stop_role`), and a client behind a load balancer
/// carries on through the other gateway without losing anything.
#[tokio::test]
async fn sigterm_gateway_says_goodbye_and_clients_move_on() {
    let mut cluster = Cluster::start().await;
    let bob = cluster.user("bob");
    let (alice, _alice_events) = cluster.client_on("alice", 0).await;
    let balancer = Balancer::start(vec![cluster.ws_addr(1), cluster.ws_addr(0)]).await;
    let (_phone, mut phone_events) =
        connect_caught_up(ClientOptions { url: balancer.url(), ..cluster.options_on("bob", 1) }).await;
    let first = alice.send_text(&bob, v1::ChatType::Single, "before").await.unwrap();
    assert_eq!(phone_events.next_message(WAIT).await.unwrap().id, first.server_msg_id);

    cluster.stop_role(Role::Gateway(1)).await;
    match phone_events.recv_timeout(WAIT).await.expect("told") {
        ClientEvent::Disconnected { reason } => assert!(reason.contains("SERVER_SHUTDOWN"), "{reason}"),
        other => panic!("expected a disconnect with a goodbye, got {other:?}"),
    }
    let second = alice.send_text(&bob, v1::ChatType::Single, "after").await.unwrap();
    assert_eq!(phone_events.next_message(WAIT).await.unwrap().id, second.server_msg_id, "on gateway 0 now");
    assert_quiet(&cluster, "bob", &mut phone_events).await;
}

// ------------------------------------------------------------------ several processes of every role

/// The node ids the message processes of a scaled cluster leased, by index.
fn leased_node_ids(cluster: &Cluster) -> Vec<u16> {
    (0..SCALED)
        .map(|i| {
            cluster.node_id(Role::Message(i)).unwrap_or_else(|| {
                panic!(
                    "message-{i} logged no `node id leased node_id=<n>` line (does RUST_LOG hide INFO?):\n{}",
                    cluster.log(Role::Message(i))
                )
            })
        })
        .collect()
}

/// Two message and two presence processes, each pair behind one address
/// (a round-robin balancer, as a Kubernetes Service), and two gateways:
/// alice (gateway 0) and bob and carol (gateway 1). Each gateway holds one
/// connection per role, so the two gateways work through different
/// processes of each role, and everything still meets: messages both ways,
/// a group, presence subscriptions and changes. Every id is unique and
/// each sender's ids increase, although two processes mint them under
/// different node ids.
#[tokio::test]
async fn two_of_every_role_serve_together() {
    const ROUNDS: usize = 10;
    let cluster = Cluster::start_scaled(|c| c.presence.flap_window_ms = 0).await;
    let leased = leased_node_ids(&cluster);
    assert_ne!(leased[0], leased[1], "two live message processes never share a node id");
    let (alice_id, bob_id, carol_id) = (cluster.user("alice"), cluster.user("bob"), cluster.user("carol"));

    let (alice, mut alice_events) = cluster.client_on("alice", 0).await;
    assert!(!alice.subscribe_presence([bob_id.clone()], 600).await.unwrap()[0].online);
    let (bob, mut bob_events) = cluster.client_on("bob", 1).await;
    assert!(next_presence_of(&mut alice_events, &bob_id).await.online, "bob's connect, told to alice");
    let status = bob.subscribe_presence([alice_id.clone()], 600).await.unwrap();
    assert!(status[0].online, "alice's session, as seen through bob's gateway: {status:?}");
    let (_carol, mut carol_events) = cluster.client_on("carol", 1).await;

    // 1:1 both ways, alternating, then a group where both write.
    let (mut from_alice, mut from_bob) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        from_alice.push(alice.send_text(&bob_id, v1::ChatType::Single, format!("a{i}")).await.unwrap().server_msg_id);
        from_bob.push(bob.send_text(&alice_id, v1::ChatType::Single, format!("b{i}")).await.unwrap().server_msg_id);
    }
    let group = alice
        .create_group(v1::CreateGroup {
            name: "both roles twice".into(),
            members: vec![bob_id.clone(), carol_id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut in_group = Vec::new();
    for i in 0..ROUNDS / 2 {
        let ack = alice.send_text(&group.id, v1::ChatType::Group, format!("ga{i}")).await.unwrap();
        from_alice.push(ack.server_msg_id);
        in_group.push(ack.server_msg_id);
        let ack = bob.send_text(&group.id, v1::ChatType::Group, format!("gb{i}")).await.unwrap();
        from_bob.push(ack.server_msg_id);
        in_group.push(ack.server_msg_id);
    }

    // Each device gets the other's messages (not its own), once, in order.
    let ids = |got: Vec<v1::Message>| got.into_iter().map(|m| m.id).collect::<Vec<u64>>();
    assert_eq!(ids(messages(&mut bob_events, from_alice.len()).await), from_alice, "bob gets alice's");
    assert_eq!(ids(messages(&mut alice_events, from_bob.len()).await), from_bob, "alice gets bob's");
    assert_eq!(ids(messages(&mut carol_events, in_group.len()).await), in_group, "carol gets the group's");

    for (who, sent) in [("alice", &from_alice), ("bob", &from_bob)] {
        assert!(sent.windows(2).all(|w| w[0] < w[1]), "{who}'s ids increase: {sent:?}");
    }
    let all: Vec<u64> = from_alice.iter().chain(&from_bob).copied().collect();
    let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "every id is unique");
    let nodes = |sent: &[u64]| sent.iter().map(|id| node_of(*id)).collect::<std::collections::BTreeSet<u16>>();
    let minted = nodes(&all);
    eprintln!(
        "node ids leased {leased:?}; alice's ids from {:?}, bob's from {:?}",
        nodes(&from_alice),
        nodes(&from_bob)
    );
    assert_eq!(minted, leased.iter().copied().collect(), "both message processes minted ids");
    for i in 0..SCALED {
        for role in [Role::Message(i), Role::Presence(i)] {
            let connections = cluster.connections_to(role).expect("behind a balancer");
            assert!(connections >= 1, "{role:?} served a gateway ({connections} connections)");
        }
    }

    // Presence changes made through one presence process reach a subscriber
    // whose subscription went through the other.
    bob.publish_presence("two of everything").await.unwrap();
    assert_eq!(next_presence_of(&mut alice_events, &bob_id).await.description, "two of everything");
    bob.close().await;
    let offline = next_presence_of(&mut alice_events, &bob_id).await;
    assert!(!offline.online, "bob's disconnect, told to alice: {offline:?}");
    assert_quiet(&cluster, "alice", &mut alice_events).await;
    assert_quiet(&cluster, "carol", &mut carol_events).await;
}

/// One of two message processes — the one alice's gateway sends through —
/// dies with SIGKILL while she streams messages to bob, and stays dead. The
/// gateway's next connection goes to the other process (the balancer skips
/// a process that is gone, as a Service does); alice retries what failed
/// with the same client message id. Every send completes, bob gets every
/// acknowledged message exactly once, in order, and a send applied just
/// before the crash is a duplicate with its first id when retried.
#[tokio::test]
async fn kill9_one_message_role_of_two_sends_go_on() {
    const N: usize = 100;
    let mut cluster = Cluster::start_scaled(|_| {}).await;
    let leased = leased_node_ids(&cluster);
    let bob = cluster.user("bob");
    let (alice, _alice_events) = cluster.client_on("alice", 0).await;
    let (_bob, mut bob_events) = cluster.client_on("bob", 1).await;

    let mut sender = RetryingSender::spawn(&alice, &bob, N, Duration::from_secs(60));
    let last = sender.first_quarter(N).await;
    let victim = leased.iter().position(|node| *node == node_of(last)).expect("alice's ids carry a leased node id");
    let survivor = (victim + 1) % SCALED;
    cluster.kill(Role::Message(victim)).await;
    sender.resume.send_replace(true);
    let acks = tokio::time::timeout(Duration::from_secs(120), sender.task).await.expect("alice finishes").unwrap();

    assert_received_in_order(&acks, &mut bob_events, "the failover").await;
    let node_ids = |range: std::ops::Range<usize>| -> Vec<u16> {
        let mut nodes: Vec<u16> = acks[range].iter().map(|(_, ack, _)| node_of(ack.server_msg_id)).collect();
        nodes.dedup();
        nodes
    };
    assert_eq!(node_ids(0..N / 4), [leased[victim]], "before the kill: all through the killed process");
    assert_eq!(node_ids(3 * N / 4..N), [leased[survivor]], "after the kill: all through the survivor");
    assert_quiet(&cluster, "bob", &mut bob_events).await;

    let retried: Vec<_> = acks.iter().filter(|(_, _, failed)| *failed > 0).collect();
    eprintln!(
        "killed message-{victim} (node {}); {} sends failed at least once ({} failed attempts), {} of them had \
         been applied before the crash; message-{survivor} had {:?} connections",
        leased[victim],
        retried.len(),
        *sender.failures.borrow(),
        retried.iter().filter(|(_, ack, _)| ack.duplicate).count(),
        cluster.connections_to(Role::Message(survivor)),
    );
    assert_sent_again_are_duplicates(&alice, &bob, retried.iter().copied()).await;
    assert_quiet(&cluster, "bob", &mut bob_events).await;
    cluster.assert_running(&[
        Role::Message(survivor),
        Role::Presence(0),
        Role::Presence(1),
        Role::Conversation,
        Role::Gateway(0),
        Role::Gateway(1),
    ]);
}

/// Two presence processes; the one holding the `presence-leader` lease (its
/// log says so) dies with SIGKILL, and right after it the gateway holding
/// bob. Nobody reports bob's disconnect, and only the leader's background
/// job, the gateway lease checker, can take him offline: alice, subscribed
/// to bob, seeing him go offline shows that the other process took the
/// lease over and runs the jobs (its log says so too).
#[tokio::test]
async fn kill9_presence_leader_another_takes_over() {
    const LEASE_MS: u64 = 3_000;
    let mut cluster = Cluster::start_scaled(|c| {
        c.presence.lease_ms = LEASE_MS;
        c.presence.flap_window_ms = 0;
    })
    .await;
    // At once on a fresh or cleanly left keyspace; a lease a killed process
    // left behind has to run out first (at most 31 s, the default lease).
    let leader_wait = Instant::now() + Duration::from_secs(40);
    let leader = loop {
        match cluster.presence_leaders().as_slice() {
            [leader] => break *leader,
            leaders => assert!(Instant::now() < leader_wait, "no single presence leader: {leaders:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivor = match leader {
        Role::Presence(i) => Role::Presence((i + 1) % SCALED),
        other => unreachable!("{other:?} is no presence process"),
    };
    let (alice_id, bob) = (cluster.user("alice"), cluster.user("bob"));
    let (alice, mut alice_events) = cluster.client_on("alice", 0).await;
    alice.subscribe_presence([bob.clone()], 600).await.unwrap();
    // No reconnect: a reconnect elsewhere would bring bob back online.
    let (_bob, _bob_events) =
        connect_caught_up(ClientOptions { reconnect: false, ..cluster.options_on("bob", 1) }).await;
    assert!(next_presence_of(&mut alice_events, &bob).await.online);

    let killed = Instant::now();
    cluster.kill(leader).await;
    cluster.kill(Role::Gateway(1)).await;
    // Bob's gateway's lease runs out LEASE_MS after its last renewal, before
    // anyone may take the leader lease: the dead leader's lease row lives
    // LEASE_MS rounded up to whole seconds plus one (its CQL TTL), counted
    // from its last renewal (every LEASE_MS / 3, so before the kill); the
    // survivor tries every LEASE_MS / 3, and its lease checker looks at once
    // when it takes over. That makes about LEASE_MS + 2 s; a 2-core machine
    // that is also running Cassandra, other clusters or a build may take a few
    // seconds more for the Paxos rounds and the wake-ups, hence 5 s on top.
    let bound = Duration::from_millis(LEASE_MS + 2_000 + 5_000);
    let offline = loop {
        match alice_events.recv_timeout(bound + WAIT).await.expect("bob goes offline") {
            ClientEvent::OnPresenceStatusChange(p) if p.user_id == bob => break p,
            _ => {}
        }
    };
    let elapsed = killed.elapsed();
    assert!(!offline.online, "{offline:?}");
    eprintln!("bob offline {elapsed:?} after the presence leader and his gateway were killed (lease {LEASE_MS} ms)");
    assert!(elapsed <= bound, "offline {elapsed:?} after the kills, more than {bound:?}");

    assert_eq!(cluster.presence_leaders(), [survivor], "the survivor leads");
    let log = cluster.log(survivor);
    assert!(
        log.lines().any(|line| line.contains("gateway lease expired, session offline") && line.contains(&bob)),
        "the survivor's lease checker took bob offline:\n{log}"
    );
    // alice's gateway kept renewing its lease through the takeover (on the
    // survivor, whichever process it had been talking to).
    let status = alice.get_presence_status([alice_id.clone()]).await.unwrap();
    assert!(status[0].online, "alice is still online: {status:?}");
    cluster.assert_running(&[Role::Message(0), Role::Message(1), survivor, Role::Conversation, Role::Gateway(0)]);
}
