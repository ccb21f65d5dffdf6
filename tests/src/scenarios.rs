//! The end-to-end scenarios, written once against [`Deployment`]: the
//! single-node suite (`tests/single_node.rs`) and the distributed one
//! (`tests/distributed.rs`) run every one of them under the same name,
//! through [`scenarios!`](crate::scenarios!).
//!
//! Scenarios name users (`"alice"`) and go through the deployment for
//! everything that carries a user id ([`Deployment::user`]), so the same
//! assertions hold where ids are made unique per test.
// Test code: a panic with the failed expectation is the report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use futures::{SinkExt, StreamExt};
use natter_client::{Client, ClientError, ClientEvent, ClientOptions, v1};
use natter_server::Config;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    Deployment, WAIT, assert_quiet, connect_caught_up, grpc_channel, messages, next_event, next_presence_of, text_of,
    with_key,
};

/// The one list of scenarios: `natter_e2e::scenarios!(TestServer);` in a
/// test file expands to one `#[tokio::test]` per scenario against that
/// [`Deployment`], named after the scenario function, so every deployment
/// runs every scenario under the same name. A new scenario goes here (the
/// test `every_scenario_is_listed` below insists).
#[macro_export]
macro_rules! scenarios {
    ($deployment:ty) => {
        $crate::scenarios!(@list tests [$deployment]);
    };
    (@list $then:ident [$($arg:tt)*]) => {
        $crate::scenarios! { @$then [$($arg)*]
            r1_one_to_one_live_delivery_after_ack,
            group_message_reaches_every_member_live,
            multi_device_sender_other_device_gets_own_message,
            o1_offline_then_reconnect_receives_everything_in_order_once,
            o1_server_restart_between_send_and_reconnect_loses_nothing,
            o1_connected_client_reconnects_and_resumes_across_a_restart,
            idempotent_retry_returns_same_id_and_is_stored_once,
            bad_missing_or_expired_token_gets_401_before_upgrade,
            non_member_can_neither_send_nor_read_a_group,
            invalid_user_id_and_oversized_body_get_their_codes,
            json_text_frames_and_oversized_or_garbled_frames_get_error_frames,
            requests_past_the_rate_limit_are_answered_rate_limited,
            fifth_device_kicks_the_oldest_with_a_reason,
            o1_cursor_older_than_retention_is_told_to_resync,
            backend_grpc_sends_as_system_and_as_user_behind_the_api_key,
            group_management_is_announced_to_members,
            p1_p3_p4_presence_over_websockets,
            backend_grpc_queries_presence_and_subscriptions,
            w1_webhook_reports_connect_kick_and_logout,
            c1_c2_list_is_newest_activity_first_with_previews_and_unread,
            c2_backend_messages_count_only_when_the_operator_asks,
            c2_the_cap_drops_the_least_recently_active,
            c3_c4_pins_are_listed_newest_first_limited_and_told_to_other_devices,
            c5_history_pages_both_ways_from_a_cursor,
            c5_group_history_starts_at_the_join_and_is_members_only,
            c6_one_way_delete_by_ids_and_by_time_only_for_me,
            c7_deleting_a_conversation_hides_it_until_the_next_message,
            channel_ack_marks_read_and_tells_my_other_devices,
            conversation_events_reach_an_offline_device_on_resume_in_order_once,
            backend_grpc_reads_conversations_and_history_and_deletes_for_a_user,
            conversation_requests_over_json_frames_use_the_seed_names,
            r2_delivery_receipts_reach_the_senders_devices,
            r3_channel_ack_tells_the_sender_and_my_other_devices,
            r4_read_receipt_reaches_the_sender_and_cannot_be_forged,
            r5_non_admin_cannot_ask_for_group_acks,
            r6_group_read_counts_live_and_coalesced_on_resume,
            r7_reader_list_pages_for_the_sender_and_admins_only,
            r8_recall_takes_a_message_out_of_history_previews_and_unread,
            backend_grpc_recalls_reads_receipts_and_reader_lists,
            receipt_and_recall_frames_over_json_use_the_seed_names,
        }
    };
    (@tests [$deployment:ty] $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::scenarios::$name::<$deployment>().await;
            }
        )*
    };
    (@names [] $($name:ident,)*) => {
        [$(stringify!($name)),*]
    };
}

mod conversations;
mod receipts;
pub use conversations::*;
pub use receipts::*;

type RawWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn group_req<D: Deployment>(d: &D, name: &str, members: &[&str]) -> v1::CreateGroup {
    v1::CreateGroup { name: name.into(), members: members.iter().map(|m| d.user(m)).collect(), ..Default::default() }
}

pub async fn r1_one_to_one_live_delivery_after_ack<D: Deployment>() {
    let d = D::start().await;
    let (alice, _alice_events) = d.client("alice").await;
    let (_bob, mut bob_events) = d.client("bob").await;

    let ack = alice.send_text(d.user("bob"), v1::ChatType::Single, "hello bob").await.expect("send");
    assert!(ack.server_msg_id > 0 && ack.timestamp > 0 && !ack.duplicate);

    let got = bob_events.next_message(WAIT).await.expect("bob receives");
    assert_eq!(
        (got.id, got.from.as_str(), got.to.as_str(), text_of(&got)),
        (ack.server_msg_id, d.user("alice").as_str(), d.user("bob").as_str(), "hello bob")
    );
    assert_eq!(got.timestamp, ack.timestamp, "server time, the same in ack and delivery");
    assert_eq!(got.chat_type, v1::ChatType::Single as i32);
}

pub async fn group_message_reaches_every_member_live<D: Deployment>() {
    let d = D::start().await;
    let (owner, mut owner_events) = d.client("owner").await;
    let mut members = Vec::new();
    let names = ["m1", "m2", "m3"];
    for name in names {
        members.push(d.client(name).await);
    }
    let group = owner.create_group(group_req(&d, "team", &names)).await.expect("create");
    assert_eq!(group.member_count, 4);
    for (_, events) in &mut members {
        match next_event(events).await {
            ClientEvent::OnGroupChange(change) => {
                assert_eq!(change.kind, v1::GroupChangeKind::Created as i32);
                assert_eq!(change.group_id, group.id);
            }
            other => panic!("expected the created event, got {other:?}"),
        }
    }

    let ack = owner.send_text(&group.id, v1::ChatType::Group, "hi team").await.expect("send");
    for (name, (_, events)) in names.into_iter().zip(&mut members) {
        let got = events.next_message(WAIT).await.expect("member receives");
        assert_eq!((got.id, got.to.as_str(), text_of(&got)), (ack.server_msg_id, group.id.as_str(), "hi team"));
        assert_quiet(&d, name, events).await;
    }
    // The sender's own device does not surface its echo.
    assert!(matches!(next_event(&mut owner_events).await, ClientEvent::OnGroupChange(_)));
    assert_quiet(&d, "owner", &mut owner_events).await;
}

pub async fn multi_device_sender_other_device_gets_own_message<D: Deployment>() {
    let d = D::start().await;
    let (phone, mut phone_events) = d.client("alice").await;
    let (_laptop, mut laptop_events) = d.client("alice").await;
    let (_bob, mut bob_events) = d.client("bob").await;

    let ack = phone.send_text(d.user("bob"), v1::ChatType::Single, "from my phone").await.expect("send");
    let on_laptop = laptop_events.next_message(WAIT).await.expect("other device gets it");
    assert_eq!((on_laptop.id, on_laptop.from.as_str()), (ack.server_msg_id, d.user("alice").as_str()));
    assert_eq!(bob_events.next_message(WAIT).await.expect("bob gets it").id, ack.server_msg_id);
    assert_quiet(&d, "alice", &mut phone_events).await;
}

pub async fn o1_offline_then_reconnect_receives_everything_in_order_once<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, bob_events) = d.client("bob").await;
    let cursor = bob.cursor();
    bob.close().await;
    drop(bob_events);

    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(
            alice.send_text(d.user("bob"), v1::ChatType::Single, format!("m{i}")).await.expect("send").server_msg_id,
        );
    }

    // Resume with the cursor it had.
    let options = ClientOptions { cursor: Some(cursor), ..d.options("bob") };
    let (bob, mut bob_events) = Client::connect(options).await.expect("connect");
    let got: Vec<u64> = messages(&mut bob_events, 30).await.iter().map(|m| m.id).collect();
    assert_eq!(got, sent, "all missed messages, in order");
    assert_quiet(&d, "bob", &mut bob_events).await;

    // A device without a cursor starts where bob's devices acknowledged:
    // nothing is replayed twice.
    let last = bob_events.cursor();
    assert!(last >= 30, "cursor follows consumption: {last}");
    bob.close().await;
    wait_until_acknowledged(&d, "bob", last).await;
    let (again, mut again_events) = Client::connect(d.options("bob")).await.expect("connect");
    assert_eq!(again.hello().cursor, last, "starts after what bob's devices acknowledged");
    assert_quiet(&d, "bob", &mut again_events).await;
}

/// Until the server has `user`'s devices acknowledged up to `seq`, as a new
/// device without a cursor sees it: where its delivery starts. An ack is
/// one-way, so this is the only way to know it landed.
async fn wait_until_acknowledged<D: Deployment>(d: &D, user: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // `_events` stays until the close, so the probe acknowledges nothing.
        let (probe, _events) = Client::connect(d.options(user)).await.expect("connect");
        let acknowledged = probe.hello().cursor;
        probe.close().await;
        if acknowledged >= seq {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{user}'s devices acknowledged {acknowledged}, not {seq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn o1_server_restart_between_send_and_reconnect_loses_nothing<D: Deployment>() {
    let mut d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let cursor = bob.cursor();
    bob.close().await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            alice
                .send_text(d.user("bob"), v1::ChatType::Single, format!("before {i}"))
                .await
                .expect("send")
                .server_msg_id,
        );
    }
    alice.close().await;

    d.restart().await;

    let options = ClientOptions { cursor: Some(cursor), ..d.options("bob") };
    let (_bob, mut bob_events) = Client::connect(options).await.expect("connect");
    let got: Vec<u64> = messages(&mut bob_events, 10).await.iter().map(|m| m.id).collect();
    assert_eq!(got, sent);
    // The log continues after the restart: a new message comes next, once.
    let (alice, _a) = d.client("alice").await;
    let after = alice.send_text(d.user("bob"), v1::ChatType::Single, "after").await.expect("send after restart");
    assert!(after.server_msg_id > sent[9], "ids keep increasing across restarts");
    assert_eq!(bob_events.next_message(WAIT).await.expect("live after restart").id, after.server_msg_id);
    assert_quiet(&d, "bob", &mut bob_events).await;
}

pub async fn o1_connected_client_reconnects_and_resumes_across_a_restart<D: Deployment>() {
    let mut d = D::start().await;
    let (_bob, mut bob_events) = d.client("bob").await;
    d.restart().await;
    let (alice, _a) = d.client("alice").await;
    let ack = alice.send_text(d.user("bob"), v1::ChatType::Single, "are you back?").await.expect("send");
    let got = bob_events.next_message(WAIT).await.expect("bob reconnected by itself");
    assert_eq!(got.id, ack.server_msg_id);
}

pub async fn idempotent_retry_returns_same_id_and_is_stored_once<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (_bob, mut bob_events) = d.client("bob").await;
    let message = v1::SendMessage {
        client_msg_id: "retry-me".into(),
        to: d.user("bob"),
        chat_type: v1::ChatType::Single as i32,
        body: Some(v1::send_message::Body::Text(v1::TextBody { text: "once".into() })),
        ..Default::default()
    };
    let first = alice.send(message.clone()).await.expect("first");
    let retry = alice.send(message).await.expect("retry");
    assert_eq!((retry.server_msg_id, retry.timestamp), (first.server_msg_id, first.timestamp));
    assert!(!first.duplicate && retry.duplicate);
    assert_eq!(bob_events.next_message(WAIT).await.expect("delivered").id, first.server_msg_id);
    assert_quiet(&d, "bob", &mut bob_events).await;
}

pub async fn bad_missing_or_expired_token_gets_401_before_upgrade<D: Deployment>() {
    let d = D::start().await;
    // Signed with another secret.
    let other = natter_server::node::tokens(&{
        let mut c = d.config().clone();
        c.auth.token_secret = "a-completely-different-secret".into();
        c
    })
    .unwrap();
    let alice = natter_types::UserId::parse(&d.user("alice"), "u").unwrap();
    let forged = other.mint(&alice, 60).unwrap().0;
    // Every gateway checks, not just the first one asked.
    for url in d.ws_urls() {
        for token in ["not-a-jwt", ""] {
            let err = Client::connect(ClientOptions::new(url.clone(), token)).await.unwrap_err();
            match err {
                ClientError::Http { status, code, .. } => {
                    assert_eq!(status, 401);
                    assert_eq!(code, Some(v1::ErrorCode::Unauthenticated));
                }
                other => panic!("expected http 401, got {other:?}"),
            }
        }
        let err = Client::connect(ClientOptions::new(url, forged.clone())).await.unwrap_err();
        assert!(matches!(err, ClientError::Http { status: 401, .. }), "{err:?}");
    }
}

pub async fn non_member_can_neither_send_nor_read_a_group<D: Deployment>() {
    let d = D::start().await;
    let (owner, _o) = d.client("owner").await;
    let (outsider, _x) = d.client("outsider").await;
    let group = owner.create_group(group_req(&d, "private", &[])).await.expect("create");

    let err = outsider.send_text(&group.id, v1::ChatType::Group, "let me in").await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::Forbidden));
    let err = outsider.list_members(&group.id, "", 10).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::Forbidden));
    let err = outsider.get_group(&group.id).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::Forbidden));
    let err = outsider.send_text("12345", v1::ChatType::Group, "nobody").await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::NotFound));
}

pub async fn invalid_user_id_and_oversized_body_get_their_codes<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    match alice.send_text("Not Valid!", v1::ChatType::Single, "x").await.unwrap_err() {
        ClientError::Server { code, field, message } => {
            assert_eq!(code, v1::ErrorCode::BadRequest);
            assert_eq!(field.as_deref(), Some("send.to"));
            assert!(message.contains("allowed are a-z 0-9 _ - ."), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let too_big = "x".repeat(64 * 1024 + 1);
    match alice.send_text(d.user("bob"), v1::ChatType::Single, too_big).await.unwrap_err() {
        ClientError::Server { code, field, message } => {
            assert_eq!(code, v1::ErrorCode::LimitExceeded);
            assert_eq!(field.as_deref(), Some("send.body"));
            assert!(message.contains("the limit is 65536"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// A raw JSON WebSocket, as websocat or a browser would use it, to the
/// gateway the deployment picks for `user`.
async fn raw_json<D: Deployment>(d: &D, user: &str) -> RawWs {
    let options = d.options(user);
    let url = format!("{}/ws?token={}", options.url, options.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    for expected in ["hello", "caughtUp"] {
        let frame = next_json(&mut ws).await;
        assert!(frame.get(expected).is_some(), "expected {expected}, got {frame}");
    }
    ws
}

async fn next_json(ws: &mut RawWs) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.expect("frame in time").expect("open").expect("ok");
        if let WsMessage::Text(text) = msg {
            return serde_json::from_str(text.as_str()).expect("server sends valid json");
        }
    }
}

pub async fn json_text_frames_and_oversized_or_garbled_frames_get_error_frames<D: Deployment>() {
    let d = D::start().await;
    let mut ws = raw_json(&d, "alice").await;

    let send = serde_json::json!({
        "reqId": "7",
        "send": {"clientMsgId": "j1", "to": d.user("alice"), "chatType": "SINGLE", "text": {"text": "note to self"}}
    });
    ws.send(WsMessage::Text(send.to_string().into())).await.unwrap();
    let mut saw_response = false;
    let mut saw_event = false;
    while !(saw_response && saw_event) {
        let frame = next_json(&mut ws).await;
        if let Some(resp) = frame.get("response") {
            assert_eq!(resp["reqId"], "7");
            assert_eq!(resp["sent"]["clientMsgId"], "j1");
            saw_response = true;
        } else if let Some(event) = frame.get("event") {
            assert_eq!(event["onTextMessage"]["text"]["text"], "note to self");
            saw_event = true;
        }
    }

    ws.send(WsMessage::Text("y".repeat(200 * 1024).into())).await.unwrap();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["response"]["error"]["code"], "LIMIT_EXCEEDED", "{frame}");
    assert_eq!(frame["response"]["error"]["field"], "frame");

    ws.send(WsMessage::Text(r#"{"reqId":9,"send":{"chatType":"NOT_A_TYPE"}}"#.into())).await.unwrap();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["response"]["reqId"], "9", "the req id is recovered: {frame}");
    assert_eq!(frame["response"]["error"]["code"], "BAD_REQUEST");

    // The connection survives all of it.
    ws.send(WsMessage::Text(r#"{"reqId":10,"ping":{"clientTime":"5"}}"#.into())).await.unwrap();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["response"]["pong"]["clientTime"], "5", "{frame}");
}

pub async fn requests_past_the_rate_limit_are_answered_rate_limited<D: Deployment>() {
    let d = D::start_with(|c| {
        c.limits.requests_per_second = 1;
        c.limits.request_burst = 3;
    })
    .await;
    let mut ws = raw_json(&d, "alice").await;
    for i in 1..=6 {
        ws.send(WsMessage::Text(format!(r#"{{"reqId":{i},"ping":{{}}}}"#).into())).await.unwrap();
    }
    let mut limited = 0;
    for _ in 0..6 {
        let frame = next_json(&mut ws).await;
        if frame["response"]["error"]["code"] == "RATE_LIMITED" {
            limited += 1;
        }
    }
    assert!(limited >= 2, "burst of 3 at 1/s: at least 2 of 6 refused, got {limited}");
}

pub async fn fifth_device_kicks_the_oldest_with_a_reason<D: Deployment>() {
    let d = D::start().await;
    assert_eq!(d.config().limits.max_sessions_per_user, 4, "the default limit");
    let (_oldest, mut oldest_events) = d.client("alice").await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(d.client("alice").await);
    }
    let (_newest, mut newest_events) = d.client("alice").await;
    loop {
        match oldest_events.recv_timeout(WAIT).await.expect("kicked in time") {
            ClientEvent::Kicked(goodbye) => {
                assert_eq!(goodbye.reason, v1::GoodbyeReason::KickedByOtherDevice as i32);
                break;
            }
            ClientEvent::Disconnected { .. } | ClientEvent::OnPresenceStatusChange(_) => {}
            other => panic!("expected a kick, got {other:?}"),
        }
    }
    // The kicked device does not come back; the others still receive.
    let (bob, _b) = d.client("bob").await;
    let ack = bob.send_text(d.user("alice"), v1::ChatType::Single, "still there?").await.unwrap();
    assert_eq!(newest_events.next_message(WAIT).await.unwrap().id, ack.server_msg_id);
}

pub async fn o1_cursor_older_than_retention_is_told_to_resync<D: Deployment>() {
    let d = D::start_with(|c| c.store.log_retention_events = 5).await;
    let (alice, _a) = d.client("alice").await;
    for i in 0..8 {
        alice.send_text(d.user("bob"), v1::ChatType::Single, format!("m{i}")).await.unwrap();
    }
    let options = ClientOptions { cursor: Some(1), ..d.options("bob") };
    let (_bob, mut events) = Client::connect(options).await.expect("connect");
    let mut resync = None;
    loop {
        match events.recv_timeout(WAIT).await.expect("event") {
            ClientEvent::ResyncRequired(r) => resync = Some(r),
            ClientEvent::CaughtUp(_) => break,
            // Presence is live, not in the log: no gap to cross.
            ClientEvent::Connected(_) | ClientEvent::OnPresenceStatusChange(_) => {}
            other => panic!("no event may be delivered across the gap: {other:?}"),
        }
    }
    let resync = resync.expect("explicit resync signal, not a silent gap");
    assert_eq!((resync.requested, resync.oldest, resync.head), (1, 4, 8));
    let ack = alice.send_text(d.user("bob"), v1::ChatType::Single, "after resync").await.unwrap();
    assert_eq!(events.next_message(WAIT).await.unwrap().id, ack.server_msg_id, "live after the resync");
}

pub async fn backend_grpc_sends_as_system_and_as_user_behind_the_api_key<D: Deployment>() {
    let d = D::start().await;
    let channel = grpc_channel(&d).await;
    let mut backend = v1::backend_client::BackendClient::new(channel.clone());
    let bob = d.user("bob");

    let unauth = backend.mint_token(v1::MintTokenRequest { user_id: bob.clone(), ttl_seconds: 60 }).await.unwrap_err();
    assert_eq!(unauth.code(), tonic::Code::Unauthenticated);
    let wrong =
        backend.mint_token(with_key(v1::MintTokenRequest { user_id: bob.clone(), ttl_seconds: 60 }, "wrong")).await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::Unauthenticated);

    let key = d.api_key();
    // Upper case on purpose: user ids are case-folded.
    let token = backend
        .mint_token(with_key(v1::MintTokenRequest { user_id: d.user("Bob"), ttl_seconds: 60 }, &key))
        .await
        .unwrap();
    let url = d.options("bob").url;
    let (_bob, mut bob_events) = connect_caught_up(ClientOptions::new(url, token.into_inner().token)).await;

    let send = |from: &str, id: &str| v1::BackendSendRequest {
        from: from.into(),
        message: Some(v1::SendMessage {
            client_msg_id: id.into(),
            to: bob.clone(),
            chat_type: v1::ChatType::Single as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text: format!("from {from:?}") })),
            ..Default::default()
        }),
        update_conversations: None,
    };
    let system = backend.send_message(with_key(send("", "s1"), &key)).await.unwrap().into_inner();
    let got = bob_events.next_message(WAIT).await.unwrap();
    assert_eq!((got.id, got.from.as_str(), got.from_system), (system.server_msg_id, "system", true));
    let alice = d.user("alice");
    let as_alice = backend.send_message(with_key(send(&alice, "a1"), &key)).await.unwrap().into_inner();
    let got = bob_events.next_message(WAIT).await.unwrap();
    assert_eq!((got.id, got.from.as_str(), got.from_system), (as_alice.server_msg_id, alice.as_str(), false));

    let bad = backend.send_message(with_key(send("Not Valid", "x"), &key)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad.metadata().get("natter-error-code").and_then(|v| v.to_str().ok()), Some("BAD_REQUEST"));

    let group = backend
        .create_group(with_key(
            v1::BackendCreateGroupRequest { owner: alice.clone(), group: Some(group_req(&d, "ops", &["bob"])) },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let groups =
        backend.list_user_groups(with_key(v1::BackendUserRequest { user_id: bob.clone() }, &key)).await.unwrap();
    assert_eq!(groups.into_inner().groups.iter().map(|g| g.id.clone()).collect::<Vec<_>>(), vec![group.id]);

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "natter.v1.Backend".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

pub async fn group_management_is_announced_to_members<D: Deployment>() {
    let d = D::start().await;
    let (owner, _o) = d.client("owner").await;
    let (admin, _a) = d.client("admin").await;
    let (_m, mut member_events) = d.client("member").await;
    let group = owner.create_group(group_req(&d, "club", &["admin", "member"])).await.unwrap();
    owner.set_admin(&group.id, d.user("admin"), true).await.unwrap();
    admin.add_members(&group.id, vec![d.user("late")]).await.unwrap();
    assert_eq!(admin.get_group(&group.id).await.unwrap().member_count, 4);
    admin.remove_members(&group.id, vec![d.user("late")]).await.unwrap();
    owner.dissolve_group(&group.id).await.unwrap();

    let mut kinds = Vec::new();
    while kinds.len() < 5 {
        if let ClientEvent::OnGroupChange(change) = member_events.recv_timeout(WAIT).await.unwrap() {
            kinds.push(v1::GroupChangeKind::try_from(change.kind).unwrap());
        }
    }
    use v1::GroupChangeKind as K;
    assert_eq!(kinds, [K::Created, K::AdminAdded, K::MembersAdded, K::MembersRemoved, K::Destroyed]);
    assert!(admin.list_my_groups().await.unwrap().is_empty());
}

// ---------------------------------------------------------------- presence

pub async fn p1_p3_p4_presence_over_websockets<D: Deployment>() {
    let d = D::start_with(|c| c.presence.flap_window_ms = 0).await;
    let (alice, mut alice_events) = d.client("alice").await;
    let subscribed = alice.subscribe_presence([d.user("bob")], 3600).await.unwrap();
    assert_eq!(subscribed.len(), 1);
    assert!(!subscribed[0].online);

    let bob_options = ClientOptions { platform: "Android".into(), ..d.options("bob") };
    let (bob, _bob_events) = connect_caught_up(bob_options).await;
    let online = next_presence_of(&mut alice_events, &d.user("bob")).await;
    assert_eq!(online.user_id, d.user("bob"));
    assert!(online.online);
    assert_eq!(online.devices[0].platform, "Android");

    bob.publish_presence("on a call").await.unwrap();
    assert_eq!(next_presence_of(&mut alice_events, &d.user("bob")).await.description, "on a call");

    let page = alice.get_subscribed_presence_list(0, 10).await.unwrap();
    assert_eq!((page.total, page.subscriptions[0].user_id.as_str()), (1, d.user("bob").as_str()));
    let status = alice.get_presence_status([d.user("bob")]).await.unwrap();
    assert_eq!(status[0].description, "on a call");

    bob.logout().await.unwrap();
    let gone = next_presence_of(&mut alice_events, &d.user("bob")).await;
    assert!(!gone.online, "logout takes the device offline");

    let err = alice.subscribe_presence([d.user("bob")], 31 * 24 * 3600).await.unwrap_err();
    assert_eq!(err.code(), Some(v1::ErrorCode::BadRequest));
}

pub async fn backend_grpc_queries_presence_and_subscriptions<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    alice.subscribe_presence([d.user("bob"), d.user("carol")], 600).await.unwrap();
    let mut backend = v1::backend_client::BackendClient::new(grpc_channel(&d).await);
    let key = d.api_key();
    let presences = backend
        .query_presence(with_key(v1::BackendPresenceRequest { user_ids: vec![d.user("alice")] }, &key))
        .await
        .unwrap()
        .into_inner();
    assert!(presences.presences[0].online);
    let subs = backend
        .list_presence_subscriptions(with_key(
            v1::BackendSubscriptionsRequest { user_id: d.user("alice"), page_num: 0, page_size: 1 },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((subs.total, subs.subscriptions.len()), (2, 1));
}

/// A presence webhook receiver on a port of its own: what it was sent, in
/// order, one JSON object per event.
pub struct WebhookReceiver {
    pub url: String,
    calls: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let calls: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = calls.clone();
        let app = axum::Router::new().route(
            "/presence",
            post(move |Json(batch): Json<Vec<serde_json::Value>>| {
                let sink = sink.clone();
                async move {
                    sink.lock().extend(batch);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/presence", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, calls }
    }

    /// Points a server's webhook here.
    pub fn configure(&self, c: &mut Config) {
        c.presence.webhook.urls = vec![self.url.clone()];
        c.presence.webhook.app_key = "app".into();
        c.presence.webhook.app_secret = "secret".into();
    }

    /// Every event so far, once at least `n` have arrived.
    pub async fn events(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.calls.lock().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "webhook calls: {:?}", self.calls.lock());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.calls.lock().clone()
    }
}

pub async fn w1_webhook_reports_connect_kick_and_logout<D: Deployment>() {
    let receiver = WebhookReceiver::start().await;
    let d = D::start_with(|c| {
        c.limits.max_sessions_per_user = 1;
        receiver.configure(c);
    })
    .await;
    let (first, _f) = d.client("dora").await;
    let first_session = first.hello().session_id;
    let (second, _s) = d.client("dora").await;
    second.logout().await.unwrap();

    let calls = receiver.events(4).await;
    let statuses: Vec<(&str, bool)> = calls
        .iter()
        .map(|c| (c["status"].as_str().unwrap(), c["sessionId"].as_str().unwrap() == first_session))
        .collect();
    // online(first), kicked → offline(first), online(second), logout(second)
    assert_eq!(statuses, [("0", true), ("1", true), ("0", false), ("2", false)]);
    assert!(calls.iter().all(|c| c["userid"] == d.user("dora").as_str() && c["os"] == "Websocket"));
    assert!(calls[0]["clientIp"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn name<D: Deployment>` of this file is in the list
    /// of [`scenarios!`](crate::scenarios!), so no deployment misses one.
    #[test]
    fn every_scenario_is_listed() {
        let listed: Vec<&str> = crate::scenarios!(@list names []).to_vec();
        let files = [
            include_str!("scenarios.rs"),
            include_str!("scenarios/conversations.rs"),
            include_str!("scenarios/receipts.rs"),
        ];
        let defined: Vec<&str> = files
            .into_iter()
            .flat_map(str::lines)
            .filter_map(|line| line.strip_prefix("pub async fn ")?.split_once("<D: Deployment>"))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(listed, defined, "the list in `scenarios!`, in the order of the files");
    }
}
