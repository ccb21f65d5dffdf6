//! Receipts and recall (R2–R8) end to end: delivery, conversation and
//! message read receipts, group read counts live and on resume, reader
//! lists, recall and what it takes out of history, previews and unread
//! counts, in every deployment (readers and senders on different gateways
//! where there are several).

use natter_client::{Client, ClientEvent, ClientOptions, Events, v1};

use super::conversations::{
    all_conversations, error_of, history, json_request, next_frame, send_texts, texts, unread_by_id,
};
use super::group_req;
use crate::{Deployment, assert_quiet, grpc_channel, messages, next_event, text_of, with_key};

/// The next receipt or recall event, skipping messages before it.
async fn next_notice(events: &mut Events) -> ClientEvent {
    loop {
        match next_event(events).await {
            ClientEvent::OnTextMessage(_) | ClientEvent::OnCustomMessage(_) | ClientEvent::OnGroupChange(_) => {}
            other => return other,
        }
    }
}

fn group_ack_message(group: &str, text: &str) -> v1::SendMessage {
    v1::SendMessage {
        to: group.into(),
        chat_type: v1::ChatType::Group as i32,
        body: Some(v1::send_message::Body::Text(v1::TextBody { text: text.into() })),
        msg_config: Some(v1::MsgConfig { allow_group_ack: true }),
        ..Default::default()
    }
}

fn readers_of(group: &str, msg_id: u64, page_size: u32, cursor: &str) -> v1::GetGroupMsgReadUser {
    v1::GetGroupMsgReadUser { msg_id, group_id: group.into(), page_size, cursor: cursor.into() }
}

pub async fn r2_delivery_receipts_reach_the_senders_devices<D: Deployment>() {
    let d = D::start().await;
    let (alice, mut alice_events) = d.client("alice").await;
    let (_tablet, mut tablet) = d.client("alice").await;
    let options = ClientOptions { delivery_receipts: true, ..d.options("bob") };
    let (bob, mut bob_events) = crate::connect_caught_up(options).await;

    let sent = alice.send_text(d.user("bob"), v1::ChatType::Single, "did it arrive?").await.expect("send");
    assert_eq!(bob_events.next_message(crate::WAIT).await.expect("bob receives").id, sent.server_msg_id);
    for events in [&mut alice_events, &mut tablet] {
        match next_notice(events).await {
            ClientEvent::OnDeliveredMessage(r) => {
                assert_eq!((r.mid, r.from.as_str()), (sent.server_msg_id, d.user("bob").as_str()));
                assert_eq!(r.r#type, v1::ReceiptType::Delivery as i32);
                assert!(r.time >= sent.timestamp);
            }
            other => panic!("expected onDeliveredMessage, got {other:?}"),
        }
    }
    // Bob's own message to alice asks nothing of bob's SDK.
    bob.send_text(d.user("alice"), v1::ChatType::Single, "yes").await.expect("reply");
    messages(&mut alice_events, 1).await;
    assert_quiet(&d, "bob", &mut bob_events).await;

    // Only for a message addressed to me, sent by the one I name.
    let (carol, _c) = d.client("carol").await;
    let forged =
        carol.send_receipt(v1::ReceiptType::Delivery, d.user("alice"), v1::ChatType::Single, sent.server_msg_id);
    let e = error_of(forged.await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::NotFound as i32, "receipt.id"), "{e:?}");
    let own = bob.send_receipt(v1::ReceiptType::Delivery, d.user("alice"), v1::ChatType::Single, 0);
    assert_eq!(error_of(own.await).field, "receipt.id");
    let group = bob.send_receipt(v1::ReceiptType::Delivery, "123", v1::ChatType::Group, sent.server_msg_id);
    assert_eq!(error_of(group.await).field, "receipt.type");
    assert_quiet(&d, "alice", &mut alice_events).await;
}

pub async fn r3_channel_ack_tells_the_sender_and_my_other_devices<D: Deployment>() {
    let d = D::start().await;
    let (alice, mut alice_events) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (_laptop, mut laptop) = d.client("bob").await;
    send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["1", "2"]).await;
    messages(&mut laptop, 2).await;
    bob.send_channel_ack(d.user("alice"), v1::ChatType::Single).await.expect("read");
    for events in [&mut alice_events, &mut laptop] {
        match next_notice(events).await {
            ClientEvent::OnChannelMessage(ack) => {
                assert_eq!((ack.from.as_str(), ack.to.as_str()), (d.user("bob").as_str(), d.user("alice").as_str()));
            }
            other => panic!("expected onChannelMessage, got {other:?}"),
        }
    }
    assert_eq!(unread_by_id(&all_conversations(&bob, 20).await), vec![(d.user("alice"), 0)]);
}

pub async fn r4_read_receipt_reaches_the_sender_and_cannot_be_forged<D: Deployment>() {
    let d = D::start().await;
    let (alice, mut alice_events) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (carol, _c) = d.client("carol").await;
    let ids = send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["read me"]).await;
    bob.send_read_ack(d.user("alice"), v1::ChatType::Single, ids[0]).await.expect("read ack");
    match next_notice(&mut alice_events).await {
        ClientEvent::OnReadMessage(r) => {
            assert_eq!(
                (r.mid, r.from.as_str(), r.to.as_str()),
                (ids[0], d.user("bob").as_str(), d.user("alice").as_str())
            );
            assert_eq!((r.r#type, r.group_read_count), (v1::ReceiptType::Read as i32, 0));
        }
        other => panic!("expected onReadMessage, got {other:?}"),
    }
    // Carol cannot read-ack a message between alice and bob, nor alice her own.
    let e = error_of(carol.send_read_ack(d.user("alice"), v1::ChatType::Single, ids[0]).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::NotFound as i32, "receipt.id"));
    let e = error_of(alice.send_read_ack(d.user("bob"), v1::ChatType::Single, ids[0]).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::BadRequest as i32, "receipt.id"));
    assert_quiet(&d, "alice", &mut alice_events).await;
}

pub async fn r5_non_admin_cannot_ask_for_group_acks<D: Deployment>() {
    let d = D::start().await;
    let (owner, _o) = d.client("owner").await;
    let (member, _m) = d.client("member").await;
    let (outsider, _x) = d.client("outsider").await;
    let group = owner.create_group(group_req(&d, "acks", &["member"])).await.expect("group");
    let e = error_of(member.send(group_ack_message(&group.id, "read this")).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::Forbidden as i32, "send.msg_config.allow_group_ack"));
    let single =
        v1::SendMessage { to: d.user("owner"), chat_type: v1::ChatType::Single as i32, ..group_ack_message("", "x") };
    assert_eq!(error_of(member.send(single).await).field, "send.msg_config.allow_group_ack");

    let asked = owner.send(group_ack_message(&group.id, "please read")).await.expect("owner asks").server_msg_id;
    let plain = owner.send_text(&group.id, v1::ChatType::Group, "no receipts").await.expect("send").server_msg_id;
    let e = error_of(member.send_read_ack(&group.id, v1::ChatType::Group, plain).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::BadRequest as i32, "receipt.id"));
    let e = error_of(outsider.send_read_ack(&group.id, v1::ChatType::Group, asked).await);
    assert_eq!(e.code, v1::ErrorCode::Forbidden as i32);
    let e = error_of(owner.send_read_ack(&group.id, v1::ChatType::Group, asked).await);
    assert_eq!(e.field, "receipt.id", "not one's own message");
    member.send_read_ack(&group.id, v1::ChatType::Group, asked).await.expect("a member reads");
    // An admin may ask too.
    owner.set_admin(&group.id, d.user("member"), true).await.expect("admin");
    member.send(group_ack_message(&group.id, "admin asks")).await.expect("admin asks");
}

pub async fn r6_group_read_counts_live_and_coalesced_on_resume<D: Deployment>() {
    let mut d = D::start().await;
    let (owner, mut live) = d.client("owner").await;
    let (tablet, tablet_events) = d.client("owner").await;
    let names = ["m1", "m2", "m3", "m4"];
    let mut readers = Vec::new();
    for name in names {
        readers.push(d.client(name).await.0);
    }
    let group = owner.create_group(group_req(&d, "counts", &names)).await.expect("group");
    let cursor = tablet.cursor();
    tablet.close().await;
    drop(tablet_events);
    let first = owner.send(group_ack_message(&group.id, "one")).await.expect("send").server_msg_id;
    let second = owner.send(group_ack_message(&group.id, "two")).await.expect("send").server_msg_id;
    for reader in &readers {
        reader.send_read_ack(&group.id, v1::ChatType::Group, first).await.expect("read");
    }
    readers[0].send_read_ack(&group.id, v1::ChatType::Group, second).await.expect("read");

    // Live: onReadMessage with the count so far, ending at the full count.
    let mut counts = std::collections::HashMap::new();
    while counts.get(&first) != Some(&4) || counts.get(&second) != Some(&1) {
        match next_notice(&mut live).await {
            ClientEvent::OnReadMessage(r) => {
                assert_eq!(r.to, group.id);
                let count = counts.entry(r.mid).or_insert(0);
                assert!(r.group_read_count >= *count, "counts only grow");
                *count = r.group_read_count;
            }
            other => panic!("expected onReadMessage, got {other:?}"),
        }
    }
    assert_quiet(&d, "owner", &mut live).await;

    // Offline: one onStatisticMessage per message with the whole count,
    // after a restart between the receipts and the login.
    d.restart().await;
    let options = ClientOptions { cursor: Some(cursor), ..d.options("owner") };
    let (_tablet, mut tablet) = Client::connect(options).await.expect("connect");
    let mut statistics = Vec::new();
    loop {
        match next_event(&mut tablet).await {
            ClientEvent::OnStatisticMessage(r) => statistics.push((r.mid, r.group_read_count)),
            ClientEvent::CaughtUp(_) => break,
            ClientEvent::OnReadMessage(r) => panic!("a replayed count came as onReadMessage: {r:?}"),
            _ => {}
        }
    }
    statistics.sort_unstable();
    assert_eq!(statistics, vec![(first, 4), (second, 1)], "one per message, coalesced");
}

pub async fn r7_reader_list_pages_for_the_sender_and_admins_only<D: Deployment>() {
    let d = D::start().await;
    let (owner, _o) = d.client("owner").await;
    let names = ["r1", "r2", "r3", "plain"];
    let mut members = Vec::new();
    for name in names {
        members.push(d.client(name).await.0);
    }
    let group = owner.create_group(group_req(&d, "readers", &names)).await.expect("group");
    let id = owner.send(group_ack_message(&group.id, "who read this?")).await.expect("send").server_msg_id;
    for reader in &members[..3] {
        reader.send_read_ack(&group.id, v1::ChatType::Group, id).await.expect("read");
    }
    members[0].send_read_ack(&group.id, v1::ChatType::Group, id).await.expect("a repeat is harmless");
    let first = owner.get_group_msg_read_user(readers_of(&group.id, id, 2, "")).await.expect("readers");
    assert_eq!((first.users.len(), first.read_count), (2, 3));
    assert!(!first.cursor.is_empty());
    let rest = owner.get_group_msg_read_user(readers_of(&group.id, id, 2, &first.cursor)).await.expect("page 2");
    assert!(rest.cursor.is_empty(), "the last page");
    let mut seen: Vec<String> = first.users.iter().chain(&rest.users).map(|u| u.user_id.clone()).collect();
    let mut want: Vec<String> = names[..3].iter().map(|n| d.user(n)).collect();
    want.sort();
    assert_eq!(seen, want, "every reader once, by user id");
    assert!(first.users.iter().all(|u| u.time > 0));
    seen.clear();

    // A plain member who did not send it may not look; an admin may.
    let e = error_of(members[3].get_group_msg_read_user(readers_of(&group.id, id, 10, "")).await);
    assert_eq!(e.code, v1::ErrorCode::Forbidden as i32);
    owner.set_admin(&group.id, d.user("plain"), true).await.expect("admin");
    assert_eq!(members[3].get_group_msg_read_user(readers_of(&group.id, id, 10, "")).await.unwrap().read_count, 3);
    let e = error_of(owner.get_group_msg_read_user(readers_of(&group.id, id, 101, "")).await);
    assert_eq!(e.field, "get_group_msg_read_user.page_size");
}

pub async fn r8_recall_takes_a_message_out_of_history_previews_and_unread<D: Deployment>() {
    let d = D::start().await;
    let (alice, mut alice_events) = d.client("alice").await;
    let (bob, mut bob_events) = d.client("bob").await;
    let (laptop, laptop_events) = d.client("bob").await;
    let cursor = laptop.cursor();
    laptop.close().await;
    drop(laptop_events);
    let ids = send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["keep", "oops"]).await;
    messages(&mut bob_events, 2).await;
    assert_eq!(unread_by_id(&all_conversations(&bob, 20).await), vec![(d.user("alice"), 2)]);

    // Bob may not recall alice's message.
    let e = error_of(bob.recall_message(ids[1], d.user("alice"), v1::ChatType::Single).await);
    assert_eq!(e.code, v1::ErrorCode::Forbidden as i32);
    alice.recall_message(ids[1], d.user("bob"), v1::ChatType::Single).await.expect("recall");
    for events in [&mut bob_events, &mut alice_events] {
        match next_notice(events).await {
            ClientEvent::OnRecallMessage(r) => {
                assert_eq!(
                    (r.mid, r.from.as_str(), r.by.as_str()),
                    (ids[1], d.user("alice").as_str(), d.user("alice").as_str())
                );
            }
            other => panic!("expected onRecallMessage, got {other:?}"),
        }
    }
    let of_alice = history(&d.user("alice"), v1::ChatType::Single, 20, "", false);
    assert_eq!(texts(&bob.get_history_messages(of_alice).await.unwrap()), vec!["keep"]);
    let list = all_conversations(&bob, 20).await;
    assert_eq!(unread_by_id(&list), vec![(d.user("alice"), 1)], "no longer unread");
    assert_eq!(text_of(list[0].last_message.as_ref().unwrap()), "keep", "the preview shows the one before");
    let e = error_of(bob.send_read_ack(d.user("alice"), v1::ChatType::Single, ids[1]).await);
    assert_eq!(e.code, v1::ErrorCode::NotFound as i32, "no receipts for a recalled message");
    alice.recall_message(ids[1], d.user("bob"), v1::ChatType::Single).await.expect("recalling again is harmless");

    // The offline device gets the message, then its recall, on resume.
    let options = ClientOptions { cursor: Some(cursor), ..d.options("bob") };
    let (_laptop, mut laptop) = Client::connect(options).await.expect("connect");
    assert_eq!(messages(&mut laptop, 2).await.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(matches!(next_notice(&mut laptop).await, ClientEvent::OnRecallMessage(r) if r.mid == ids[1]));

    // Groups: the owner and admins recall anyone's message; members only theirs.
    let group = alice.create_group(group_req(&d, "team", &["bob", "carol"])).await.expect("group");
    let (carol, _c) = d.client("carol").await;
    let bobs = bob.send_text(&group.id, v1::ChatType::Group, "from bob").await.unwrap().server_msg_id;
    let e = error_of(carol.recall_message(bobs, &group.id, v1::ChatType::Group).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::Forbidden as i32, ""));
    alice.recall_message(bobs, &group.id, v1::ChatType::Group).await.expect("the owner recalls");
    let e = error_of(carol.recall_message(12345, &group.id, v1::ChatType::Group).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::NotFound as i32, "recall_message.mid"));
    let of_group = history(&group.id, v1::ChatType::Group, 20, "", false);
    assert!(carol.get_history_messages(of_group).await.unwrap().messages.is_empty());
}

pub async fn backend_grpc_recalls_reads_receipts_and_reader_lists<D: Deployment>() {
    let d = D::start().await;
    let (alice, mut alice_events) = d.client("alice").await;
    let (_bob, mut bob_events) = d.client("bob").await;
    let mut backend = v1::backend_client::BackendClient::new(grpc_channel(&d).await);
    let key = d.api_key();
    let id = alice.send_text(d.user("bob"), v1::ChatType::Single, "hi").await.unwrap().server_msg_id;
    messages(&mut bob_events, 1).await;

    let receipt = v1::SendReceipt {
        r#type: v1::ReceiptType::Read as i32,
        to: d.user("alice"),
        chat_type: v1::ChatType::Single as i32,
        id,
    };
    let req = v1::BackendReceiptRequest { user_id: d.user("bob"), receipt: Some(receipt) };
    backend.send_receipt(with_key(req, &key)).await.expect("receipt as bob");
    assert!(matches!(next_notice(&mut alice_events).await, ClientEvent::OnReadMessage(r) if r.mid == id));

    let ack = v1::SendChannelAck { to: d.user("alice"), chat_type: v1::ChatType::Single as i32 };
    let req = v1::BackendMarkReadRequest { user_id: d.user("bob"), ack: Some(ack) };
    backend.mark_conversation_read(with_key(req, &key)).await.expect("mark read as bob");
    assert!(matches!(next_notice(&mut alice_events).await, ClientEvent::OnChannelMessage(_)));

    // The system recalls any message; a 1:1 one is named by its sender.
    let recall = v1::RecallMessage { mid: id, to: d.user("bob"), chat_type: v1::ChatType::Single as i32 };
    let req = v1::BackendRecallRequest { operator: String::new(), from: String::new(), recall: Some(recall.clone()) };
    let e = backend.recall_message(with_key(req, &key)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let req = v1::BackendRecallRequest { operator: String::new(), from: d.user("alice"), recall: Some(recall) };
    backend.recall_message(with_key(req, &key)).await.expect("system recall");
    loop {
        match next_notice(&mut bob_events).await {
            ClientEvent::OnRecallMessage(r) => break assert_eq!((r.mid, r.by.as_str()), (id, "system")),
            // Bob's own devices hear of the read he marked.
            ClientEvent::OnChannelMessage(_) => {}
            other => panic!("expected onRecallMessage, got {other:?}"),
        }
    }

    let group = alice.create_group(group_req(&d, "g", &["bob"])).await.expect("group");
    let asked = alice.send(group_ack_message(&group.id, "ack?")).await.unwrap().server_msg_id;
    let req =
        v1::BackendGroupReadUsersRequest { operator: String::new(), query: Some(readers_of(&group.id, asked, 0, "")) };
    let page = backend.get_group_msg_read_user(with_key(req, &key)).await.expect("readers").into_inner();
    assert_eq!((page.read_count, page.users.len()), (0, 0));
    let req =
        v1::BackendGroupReadUsersRequest { operator: d.user("bob"), query: Some(readers_of(&group.id, asked, 0, "")) };
    let e = backend.get_group_msg_read_user(with_key(req, &key)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "bob neither sent it nor runs the group");
}

pub async fn receipt_and_recall_frames_over_json_use_the_seed_names<D: Deployment>() {
    let d = D::start().await;
    let (alice, mut alice_events) = d.client("alice").await;
    let mut ws = super::raw_json(&d, "bob").await;
    let id = alice.send_text(d.user("bob"), v1::ChatType::Single, "json").await.unwrap().server_msg_id;
    assert_eq!(next_frame(&mut ws).await["event"]["onTextMessage"]["id"], id.to_string());
    let alice_id = d.user("alice");
    let read = serde_json::json!({"reqId": "1", "receipt": {"type": "READ", "to": alice_id, "chatType": "SINGLE", "id": id.to_string()}});
    let (answer, _) = json_request(&mut ws, read).await;
    assert!(answer.get("ok").is_some(), "{answer}");
    assert!(matches!(next_notice(&mut alice_events).await, ClientEvent::OnReadMessage(r) if r.mid == id));

    let mine = serde_json::json!({"reqId": "2", "send": {"clientMsgId": "j1", "to": alice_id, "chatType": "SINGLE", "text": {"text": "to recall"}}});
    let (sent, _) = json_request(&mut ws, mine).await;
    let mid = sent["sent"]["serverMsgId"].as_str().expect("an id").to_owned();
    messages(&mut alice_events, 1).await;
    let recall = serde_json::json!({"reqId": "3", "recallMessage": {"mid": mid, "to": alice_id, "chatType": "SINGLE"}});
    let (answer, mut events) = json_request(&mut ws, recall).await;
    assert!(answer.get("ok").is_some(), "{answer}");
    // The sending device gets its own message, then the recall.
    while !events.iter().any(|e| e["event"].get("onRecallMessage").is_some()) {
        events.push(next_frame(&mut ws).await);
    }
    let recalled = events.iter().find_map(|e| e["event"].get("onRecallMessage")).expect("found");
    assert_eq!((&recalled["mid"], &recalled["by"]), (&serde_json::json!(mid), &serde_json::json!(d.user("bob"))));
    let bad =
        serde_json::json!({"reqId": "4", "receipt": {"type": "DELIVERY", "to": "x", "chatType": "GROUP", "id": "1"}});
    let (refused, _) = json_request(&mut ws, bad).await;
    assert_eq!(refused["error"]["field"], "receipt.to", "{refused}");

    // A group message asking for read receipts, its live count, its readers.
    let group = serde_json::json!({"reqId": "5", "createGroup": {"name": "acks", "members": [alice_id]}});
    let (created, _) = json_request(&mut ws, group).await;
    let group_id = created["group"]["id"].as_str().expect("a group id").to_owned();
    let ask = serde_json::json!({"reqId": "6", "send": {"clientMsgId": "j2", "to": group_id, "chatType": "GROUP",
        "text": {"text": "read?"}, "msgConfig": {"allowGroupAck": true}}});
    let (sent, _) = json_request(&mut ws, ask).await;
    let asked: u64 = sent["sent"]["serverMsgId"].as_str().expect("an id").parse().expect("numeric");
    alice.send_read_ack(&group_id, v1::ChatType::Group, asked).await.expect("alice reads");
    let count = loop {
        let frame = next_frame(&mut ws).await;
        if let Some(read) = frame["event"].get("onReadMessage") {
            break read.clone();
        }
    };
    let want = (serde_json::json!(asked.to_string()), serde_json::json!("1"));
    assert_eq!((count["mid"].clone(), count["groupReadCount"].clone()), want, "{count}");
    let readers =
        serde_json::json!({"reqId": "7", "getGroupMsgReadUser": {"msgId": asked.to_string(), "groupId": group_id}});
    let (page, _) = json_request(&mut ws, readers).await;
    assert_eq!(page["groupReadUsers"]["users"][0]["userId"], alice_id.as_str(), "{page}");
    assert_eq!(page["groupReadUsers"]["readCount"], "1", "{page}");
}
