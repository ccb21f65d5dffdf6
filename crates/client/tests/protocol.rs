//! The SDK against a scripted server: connect, exactly-once delivery, acks,
//! request matching, echo suppression, reconnect/resume and kicks.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use natter_client::v1::client_frame::Body as Req;
use natter_client::v1::response::Result as Res;
use natter_client::{Client, ClientError, ClientEvent, Events, v1};
use support::{MockConn, MockServer, WAIT, message, sent};

/// How long nothing may happen. The tests that wait it out run on paused
/// time: the window passes only once every task (the driver's too) has run
/// out of work, so "nothing came" is deterministic rather than a guess about
/// how fast the machine is.
const SHORT: Duration = Duration::from_millis(300);

async fn next(events: &mut Events) -> ClientEvent {
    events.recv_timeout(WAIT).await.expect("event")
}

async fn next_text_id(events: &mut Events) -> u64 {
    match next(events).await {
        ClientEvent::OnTextMessage(m) => m.id,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Connect `alice` with the test defaults and play the server's hello.
async fn connect(server: &mut MockServer, cursor: u64) -> (Client, Events, MockConn) {
    let options = server.options();
    connect_opts(server, options, cursor).await
}

async fn connect_opts(
    server: &mut MockServer,
    options: natter_client::ClientOptions,
    cursor: u64,
) -> (Client, Events, MockConn) {
    let connecting = tokio::spawn(Client::connect(options));
    let mut conn = server.accept().await;
    conn.hello("alice", 10, cursor).await;
    let (client, mut events) = connecting.await.unwrap().expect("connect");
    assert!(matches!(next(&mut events).await, ClientEvent::Connected(h) if h.cursor == cursor));
    (client, events, conn)
}

#[tokio::test]
async fn connect_sends_the_query_and_surfaces_hello_first() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions { platform: "Linux".into(), ..server.options() };
    let (client, _events, conn) = connect_opts(&mut server, options, 4).await;
    assert_eq!(conn.path, "/ws");
    assert_eq!(conn.query.get("token").map(String::as_str), Some("tok"));
    assert_eq!(conn.query.get("format").map(String::as_str), Some("proto"));
    assert_eq!(conn.query.get("platform").map(String::as_str), Some("Linux"));
    assert_eq!(conn.cursor(), None, "no cursor given: the server picks the start");
    assert_eq!(client.user_id(), "alice");
    assert_eq!(client.hello().session_id, "s-alice");
    assert_eq!(client.cursor(), 4, "the server's start is the cursor until an event arrives");

    let options = natter_client::ClientOptions { cursor: Some(7), ..server.options() };
    let (_c, _e, conn) = connect_opts(&mut server, options, 7).await;
    assert_eq!(conn.cursor(), Some(7));
}

#[tokio::test]
async fn rejected_upgrade_is_an_http_error_with_the_body_code() {
    let server = MockServer::start().await;
    server.reject_next(401, r#"{"code":"UNAUTHENTICATED","message":"token expired"}"#);
    let err = Client::connect(server.options()).await.expect_err("must fail");
    match &err {
        ClientError::Http { status, code, message } => {
            assert_eq!(*status, 401);
            assert_eq!(*code, Some(v1::ErrorCode::Unauthenticated));
            assert_eq!(message, "token expired");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn connect_fails_on_goodbye_or_garbage_before_hello() {
    let mut server = MockServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.options()));
    let mut conn = server.accept().await;
    conn.goodbye(v1::GoodbyeReason::KickedByOtherDevice).await;
    assert!(matches!(connecting.await.unwrap(), Err(ClientError::Kicked(_))));

    let connecting = tokio::spawn(Client::connect(server.options()));
    let mut conn = server.accept().await;
    conn.caught_up(1).await;
    assert!(matches!(connecting.await.unwrap(), Err(ClientError::Protocol(_))));

    let connecting = tokio::spawn(Client::connect(server.options()));
    let conn = server.accept().await;
    conn.close().await;
    assert!(matches!(connecting.await.unwrap(), Err(ClientError::Protocol(_))));
}

#[tokio::test(start_paused = true)]
async fn repeated_events_are_surfaced_once_and_acked_after_consumption() {
    let mut server = MockServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, 0).await;
    for seq in [1, 2, 2, 1, 3] {
        conn.text(seq, "bob", 100 + seq, &format!("b{seq}")).await;
    }
    conn.caught_up(3).await;
    // Nothing is acknowledged before the application has taken the events.
    assert!(conn.acks_within(Duration::from_millis(100)).await.is_empty());

    assert_eq!(next_text_id(&mut events).await, 101);
    assert_eq!(next_text_id(&mut events).await, 102);
    assert_eq!(next_text_id(&mut events).await, 103);
    assert!(matches!(next(&mut events).await, ClientEvent::CaughtUp(3)));
    assert_eq!(client.cursor(), 3);
    assert_eq!(conn.ack(3).await, 3, "one batched ack once the queue ran dry");

    conn.text(4, "bob", 104, "b4").await;
    assert_eq!(next_text_id(&mut events).await, 104);
    assert_eq!(conn.ack(4).await, 4);
    assert!(events.recv_timeout(Duration::from_millis(50)).await.is_err(), "nothing else was surfaced");
}

#[tokio::test]
async fn acks_follow_arrival_when_nobody_reads_events() {
    let mut server = MockServer::start().await;
    let (client, events, mut conn) = connect(&mut server, 0).await;
    drop(events);
    for seq in 1..=5 {
        conn.text(seq, "bob", seq, "x").await;
    }
    assert_eq!(conn.ack(5).await, 5);
    drop(client);
}

#[tokio::test]
async fn responses_are_matched_by_req_id_and_errors_mapped() {
    let mut server = MockServer::start().await;
    let (client, _events, mut conn) = connect(&mut server, 0).await;

    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping().await });
    let (ping_id, body) = conn.request().await;
    assert!(matches!(body, Req::Ping(p) if p.client_time > 0));
    let c = client.clone();
    let group = tokio::spawn(async move { c.get_group("g1").await });
    let (group_id, body) = conn.request().await;
    assert!(matches!(body, Req::GetGroup(g) if g.group_id == "g1"));
    assert_ne!(ping_id, group_id);

    // Answer out of order.
    conn.respond(
        group_id,
        Res::Error(v1::Error {
            code: v1::ErrorCode::NotFound as i32,
            message: "group_id: no such group".into(),
            field: "get_group.group_id".into(),
        }),
    )
    .await;
    conn.respond(ping_id, Res::Pong(v1::Pong { client_time: 1, server_time: 2 })).await;

    assert_eq!(ping.await.unwrap().expect("pong").server_time, 2);
    match group.await.unwrap() {
        Err(ClientError::Server { code, field, .. }) => {
            assert_eq!(code, v1::ErrorCode::NotFound);
            assert_eq!(field.as_deref(), Some("get_group.group_id"));
        }
        other => panic!("unexpected {other:?}"),
    }

    // A result of the wrong kind is a protocol error, not a panic.
    let c = client.clone();
    let groups = tokio::spawn(async move { c.list_my_groups().await });
    let (id, _) = conn.request().await;
    conn.respond(id, Res::Ok(v1::Empty {})).await;
    assert!(matches!(groups.await.unwrap(), Err(ClientError::Protocol(_))));

    // A response nobody asked for is ignored.
    conn.respond(9999, Res::Ok(v1::Empty {})).await;
    let c = client.clone();
    let leave = tokio::spawn(async move { c.leave_group("g1").await });
    let (id, body) = conn.request().await;
    assert!(matches!(body, Req::LeaveGroup(_)));
    conn.respond(id, Res::Ok(v1::Empty {})).await;
    leave.await.unwrap().expect("left");
}

#[tokio::test]
async fn own_echo_is_suppressed_but_moves_the_cursor() {
    let mut server = MockServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, 0).await;

    let c = client.clone();
    let send = tokio::spawn(async move { c.send_text("bob", v1::ChatType::Single, "hi").await });
    let (req_id, body) = conn.request().await;
    let Req::Send(s) = body else { panic!("not a send") };
    assert!(!s.client_msg_id.is_empty(), "the sdk fills client_msg_id");
    assert_eq!(s.to, "bob");

    // The echo overtakes the response: recognised by client_msg_id.
    conn.text(1, "alice", 500, &s.client_msg_id).await;
    conn.respond(req_id, sent(&s.client_msg_id, 500, false)).await;
    assert_eq!(send.await.unwrap().expect("sent").server_msg_id, 500);
    // After the response: recognised by server id (another event of the
    // same message, e.g. replayed after a reconnect).
    conn.text(2, "alice", 500, "").await;
    // The same client_msg_id from another user, and alice's other device.
    conn.text(3, "bob", 501, &s.client_msg_id).await;
    conn.text(4, "alice", 502, "other-device").await;

    assert_eq!(next_text_id(&mut events).await, 501);
    assert_eq!(next_text_id(&mut events).await, 502);
    assert_eq!(client.cursor(), 4);
    assert_eq!(conn.ack(4).await, 4);
}

#[tokio::test]
async fn reconnect_resumes_from_the_cursor_and_retries_sends() {
    let mut server = MockServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, 0).await;
    for seq in 1..=3 {
        conn.text(seq, "bob", seq, "b").await;
    }
    for id in 1..=3 {
        assert_eq!(next_text_id(&mut events).await, id);
    }

    let c = client.clone();
    let send = tokio::spawn(async move {
        c.send(v1::SendMessage {
            client_msg_id: "my-id".into(),
            to: "bob".into(),
            chat_type: v1::ChatType::Single as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text: "hello".into() })),
            ..Default::default()
        })
        .await
    });
    let c = client.clone();
    let create =
        tokio::spawn(async move { c.create_group(v1::CreateGroup { name: "g".into(), ..Default::default() }).await });
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (_, body) = conn.request().await;
        seen.push(body);
    }
    assert!(seen.iter().any(|b| matches!(b, Req::Send(_))));
    assert!(seen.iter().any(|b| matches!(b, Req::CreateGroup(_))));
    conn.drop_abruptly();

    assert!(matches!(next(&mut events).await, ClientEvent::Disconnected { .. }));
    assert!(
        matches!(create.await.unwrap(), Err(ClientError::Disconnected)),
        "a non-idempotent request in flight fails"
    );

    let mut conn = server.accept().await;
    assert_eq!(conn.cursor(), Some(3), "resumes from the last delivered seq");
    conn.hello("alice", 5, 3).await;
    // The send is written again with the same client_msg_id.
    let (req_id, body) = conn.request().await;
    assert!(matches!(&body, Req::Send(s) if s.client_msg_id == "my-id"));
    conn.respond(req_id, sent("my-id", 900, true)).await;
    let result = send.await.unwrap().expect("the send completes after the reconnect");
    assert!(result.duplicate);

    // A replay overlapping what was delivered, then new events.
    conn.text(3, "bob", 3, "b").await;
    conn.text(4, "bob", 4, "b").await;
    conn.text(5, "alice", 900, "my-id").await; // our own echo
    conn.caught_up(5).await;
    conn.text(6, "bob", 6, "b").await;

    assert!(matches!(next(&mut events).await, ClientEvent::Connected(_)));
    assert_eq!(next_text_id(&mut events).await, 4);
    assert!(matches!(next(&mut events).await, ClientEvent::CaughtUp(5)));
    assert_eq!(next_text_id(&mut events).await, 6);
    assert_eq!(client.cursor(), 6);
    assert_eq!(conn.ack(6).await, 6);
}

#[tokio::test]
async fn requests_made_while_disconnected_wait_for_the_connection() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions {
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(200),
        ..server.options()
    };
    let (client, mut events, conn) = connect_opts(&mut server, options, 0).await;
    conn.drop_abruptly();
    assert!(matches!(next(&mut events).await, ClientEvent::Disconnected { .. }));

    let c = client.clone();
    let dissolve = tokio::spawn(async move { c.dissolve_group("g1").await });
    let mut conn = server.accept().await;
    conn.hello("alice", 0, 0).await;
    let (id, body) = conn.request().await;
    assert!(matches!(body, Req::DissolveGroup(d) if d.group_id == "g1"));
    conn.respond(id, Res::Ok(v1::Empty {})).await;
    dissolve.await.unwrap().expect("dissolved after the reconnect");
}

#[tokio::test(start_paused = true)]
async fn kick_ends_the_client_without_reconnecting() {
    let mut server = MockServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, 0).await;
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping().await });
    conn.request().await;
    conn.goodbye(v1::GoodbyeReason::KickedByOtherDevice).await;

    assert!(matches!(next(&mut events).await,
        ClientEvent::Kicked(g) if g.reason == v1::GoodbyeReason::KickedByOtherDevice as i32));
    assert!(events.recv().await.is_none(), "the stream ends after a kick");
    assert!(matches!(ping.await.unwrap(), Err(ClientError::Kicked(_))));
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    assert!(client.is_closed());
    assert!(server.quiet_for(SHORT).await, "no reconnect after a kick");
}

#[tokio::test(start_paused = true)]
async fn token_expiry_goodbye_also_ends_the_client() {
    let mut server = MockServer::start().await;
    let (_client, mut events, mut conn) = connect(&mut server, 0).await;
    conn.goodbye(v1::GoodbyeReason::TokenExpired).await;
    conn.close().await;
    assert!(matches!(next(&mut events).await, ClientEvent::Kicked(_)));
    assert!(events.recv().await.is_none());
    assert!(server.quiet_for(SHORT).await);
}

#[tokio::test]
async fn server_shutdown_goodbye_reconnects() {
    let mut server = MockServer::start().await;
    let (_client, mut events, mut conn) = connect(&mut server, 0).await;
    conn.text(1, "bob", 1, "b").await;
    conn.goodbye(v1::GoodbyeReason::ServerShutdown).await;
    conn.close().await;
    assert_eq!(next_text_id(&mut events).await, 1);
    match next(&mut events).await {
        ClientEvent::Disconnected { reason } => {
            assert!(reason.contains("SERVER_SHUTDOWN"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut conn = server.accept().await;
    assert_eq!(conn.cursor(), Some(1));
    conn.hello("alice", 1, 1).await;
    assert!(matches!(next(&mut events).await, ClientEvent::Connected(_)));
}

#[tokio::test]
async fn rejected_token_on_reconnect_gives_up() {
    let mut server = MockServer::start().await;
    let (client, mut events, conn) = connect(&mut server, 0).await;
    server.reject_next(401, r#"{"code":"UNAUTHENTICATED","message":"token expired"}"#);
    conn.drop_abruptly();
    assert!(matches!(next(&mut events).await, ClientEvent::Disconnected { .. }));
    match next(&mut events).await {
        ClientEvent::Disconnected { reason } => assert!(reason.contains("401"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(events.recv().await.is_none());
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn resync_required_moves_the_resume_point_to_head() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions { cursor: Some(2), ..server.options() };
    let (client, mut events, mut conn) = connect_opts(&mut server, options, 2).await;
    conn.push(v1::server_frame::Body::ResyncRequired(v1::ResyncRequired { requested: 2, oldest: 50, head: 80 })).await;
    match next(&mut events).await {
        ClientEvent::ResyncRequired(r) => assert_eq!((r.requested, r.oldest, r.head), (2, 50, 80)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(client.cursor(), 80);
    conn.drop_abruptly();
    assert!(matches!(next(&mut events).await, ClientEvent::Disconnected { .. }));
    let conn = server.accept().await;
    assert_eq!(conn.cursor(), Some(80), "no second resync for the same gap");
}

#[tokio::test]
async fn unanswered_request_times_out() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions { request_timeout: Duration::from_millis(200), ..server.options() };
    let (client, _events, mut conn) = connect_opts(&mut server, options, 0).await;
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping().await });
    let (id, _) = conn.request().await;
    assert!(matches!(ping.await.unwrap(), Err(ClientError::Timeout)));
    // The late response is dropped quietly and the client keeps working.
    conn.respond(id, Res::Pong(v1::Pong::default())).await;
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping().await });
    let (id, _) = conn.request().await;
    conn.respond(id, Res::Pong(v1::Pong { client_time: 0, server_time: 7 })).await;
    assert_eq!(ping.await.unwrap().expect("pong").server_time, 7);
}

#[tokio::test]
async fn close_acks_what_was_consumed_and_closes_cleanly() {
    let mut server = MockServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, 0).await;
    conn.text(1, "bob", 1, "b").await;
    conn.text(2, "bob", 2, "b").await;
    assert_eq!(next_text_id(&mut events).await, 1);
    // Only event 1 was taken; wait for its ack to settle so close's ack is the
    // one asserted below.
    let close = tokio::spawn({
        let c = client.clone();
        async move { c.close().await }
    });
    let mut acks = Vec::new();
    let clean = loop {
        match tokio::time::timeout(WAIT, conn.recv_any()).await.expect("frame") {
            Some(v1::ClientFrame { body: Some(Req::Ack(a)), .. }) => acks.push(a.seq),
            Some(other) => panic!("unexpected {other:?}"),
            None => break true,
        }
    };
    assert!(clean, "close frame expected");
    assert!(acks.iter().all(|&s| s <= 1), "event 2 was never taken: {acks:?}");
    close.await.unwrap();
    assert!(client.is_closed());
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    // Queued events stay readable; then the stream ends.
    assert_eq!(next_text_id(&mut events).await, 2);
    assert!(events.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_the_driver() {
    let mut server = MockServer::start().await;
    let (client, events, mut conn) = connect(&mut server, 0).await;
    let other = client.clone();
    drop(client);
    drop(events);
    // One handle remains: still connected and serving requests.
    let ping = tokio::spawn(async move {
        let r = other.ping().await;
        (other, r)
    });
    let (id, _) = conn.request().await;
    conn.respond(id, Res::Pong(v1::Pong::default())).await;
    let (other, r) = ping.await.unwrap();
    r.expect("pong");
    drop(other);
    assert!(conn.closed_by_client().await, "a clean close once nobody is left");
    assert!(server.quiet_for(SHORT).await);
}

#[tokio::test]
async fn heartbeat_detects_a_silent_server() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions { heartbeat: Some(Duration::from_millis(50)), ..server.options() };
    let (_client, mut events, conn) = connect_opts(&mut server, options, 0).await;
    // The mock never reads, so it never answers pings: the client must give up
    // on it and reconnect.
    let held = conn;
    match next(&mut events).await {
        ClientEvent::Disconnected { reason } => assert!(reason.contains("no traffic"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let _next = server.accept().await;
    drop(held);
}

#[tokio::test]
async fn custom_and_group_events_are_surfaced() {
    let mut server = MockServer::start().await;
    let (_client, mut events, mut conn) = connect(&mut server, 0).await;
    let mut custom = message("bob", 7, "c");
    custom.body = Some(v1::message::Body::Custom(v1::CustomBody { event: "gift".into(), params: Default::default() }));
    conn.push(v1::server_frame::Body::Event(v1::Event {
        seq: 1,
        kind: Some(v1::event::Kind::OnCustomMessage(custom)),
    }))
    .await;
    conn.push(v1::server_frame::Body::Event(v1::Event {
        seq: 2,
        kind: Some(v1::event::Kind::OnGroupChange(v1::GroupChange {
            kind: v1::GroupChangeKind::MembersAdded as i32,
            group_id: "g1".into(),
            ..Default::default()
        })),
    }))
    .await;
    // An event kind this SDK does not know (a newer server) is skipped.
    conn.push(v1::server_frame::Body::Event(v1::Event { seq: 3, kind: None })).await;
    conn.text(4, "bob", 8, "d").await;

    assert!(matches!(next(&mut events).await, ClientEvent::OnCustomMessage(m) if m.id == 7));
    assert!(matches!(next(&mut events).await, ClientEvent::OnGroupChange(g) if g.group_id == "g1"));
    assert_eq!(next_text_id(&mut events).await, 8);
    assert_eq!(events.cursor(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_drops_right_after_hello_sees_growing_delays() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(1000),
        ..server.options()
    };
    let (_client, _events, conn) = connect_opts(&mut server, options, 0).await;
    conn.drop_abruptly();
    let start = tokio::time::Instant::now();
    for _ in 0..5 {
        let mut conn = server.accept().await;
        conn.hello("alice", 0, 0).await;
        conn.drop_abruptly();
    }
    // Delays drawn from [10,20], [20,40], [40,80], [80,160], [160,320] ms:
    // 310 to 620 ms in all (paused time: nothing else passes; each delay is
    // rounded up to the timer's millisecond), where a reset after each hello
    // would give ~100.
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(310) && elapsed <= Duration::from_millis(625), "{elapsed:?}");
}

#[tokio::test]
async fn protocol_error_goodbye_reconnects() {
    // The gateway says PROTOCOL_ERROR when it found the client idle too long.
    let mut server = MockServer::start().await;
    let (_client, mut events, mut conn) = connect(&mut server, 0).await;
    conn.goodbye(v1::GoodbyeReason::ProtocolError).await;
    conn.close().await;
    match next(&mut events).await {
        ClientEvent::Disconnected { reason } => {
            assert!(reason.contains("PROTOCOL_ERROR"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut conn = server.accept().await;
    conn.hello("alice", 0, 0).await;
    assert!(matches!(next(&mut events).await, ClientEvent::Connected(_)));
}

#[tokio::test]
async fn requests_beyond_the_window_wait_for_a_response() {
    let mut server = MockServer::start().await;
    let options = natter_client::ClientOptions { max_in_flight: 2, ..server.options() };
    let (client, _events, mut conn) = connect_opts(&mut server, options, 0).await;
    let mut pings = Vec::new();
    for _ in 0..3 {
        let c = client.clone();
        pings.push(tokio::spawn(async move { c.ping().await }));
    }
    let (first, _) = conn.request().await;
    let (second, _) = conn.request().await;
    assert!(
        conn.acks_within(Duration::from_millis(100)).await.is_empty(),
        "the third request must wait while two are unanswered"
    );
    conn.respond(first, Res::Pong(v1::Pong::default())).await;
    let (third, _) = conn.request().await;
    conn.respond(second, Res::Pong(v1::Pong::default())).await;
    conn.respond(third, Res::Pong(v1::Pong::default())).await;
    for ping in pings {
        ping.await.unwrap().expect("pong");
    }
}
