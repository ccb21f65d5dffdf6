//! Conversations and history (C1–C7) end to end: lists, previews and unread
//! counts, pins, history pages, one-way deletes, deleting a conversation,
//! marking read, and what the user's other devices learn, in every
//! deployment.

use natter_client::{Client, ClientError, ClientEvent, ClientOptions, Events, v1};
use natter_server::Config;

use crate::{Deployment, assert_quiet, grpc_channel, messages, next_event, text_of, with_key};

use super::group_req;

/// Every page of my conversation list, `page_size` at a time.
pub(super) async fn all_conversations(client: &Client, page_size: u32) -> Vec<v1::ConversationItem> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client.get_server_conversations(page_size, cursor).await.expect("conversations");
        assert!(page.conversations.len() <= page_size as usize);
        items.extend(page.conversations);
        if page.cursor.is_empty() {
            return items;
        }
        cursor = page.cursor;
    }
}

/// `(conversation id, unread)` of each item, in list order.
pub(super) fn unread_by_id(items: &[v1::ConversationItem]) -> Vec<(String, u64)> {
    items.iter().map(|c| (c.conversation_id.clone(), c.un_read_count)).collect()
}

pub(super) fn history(
    target: &str,
    chat_type: v1::ChatType,
    page_size: u32,
    cursor: &str,
    down: bool,
) -> v1::GetHistoryMessages {
    v1::GetHistoryMessages {
        target_id: target.into(),
        chat_type: chat_type as i32,
        page_size,
        cursor: cursor.into(),
        search_direction: if down { v1::SearchDirection::Down } else { v1::SearchDirection::Up } as i32,
    }
}

pub(super) fn texts(page: &v1::HistoryPage) -> Vec<&str> {
    page.messages.iter().map(text_of).collect()
}

pub(super) fn error_of(result: Result<impl std::fmt::Debug, ClientError>) -> v1::Error {
    match result {
        Err(ClientError::Server { code, message, field }) => {
            v1::Error { code: code as i32, message, field: field.unwrap_or_default() }
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// The next multi-device event, skipping the messages before it.
async fn next_multi_device(events: &mut Events) -> v1::MultiDeviceEvent {
    loop {
        match next_event(events).await {
            ClientEvent::OnMultiDeviceEvent(e) => return e,
            ClientEvent::OnTextMessage(_) | ClientEvent::OnCustomMessage(_) => {}
            other => panic!("expected a multi-device event, got {other:?}"),
        }
    }
}

pub(super) async fn send_texts(from: &Client, to: &str, chat_type: v1::ChatType, texts: &[&str]) -> Vec<u64> {
    let mut ids = Vec::new();
    for text in texts {
        ids.push(from.send_text(to, chat_type, *text).await.expect("send").server_msg_id);
    }
    ids
}

pub async fn c1_c2_list_is_newest_activity_first_with_previews_and_unread<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (carol, _c) = d.client("carol").await;
    // A group with no messages is listed by when bob joined it.
    let quiet = carol.create_group(group_req(&d, "quiet", &["bob"])).await.expect("group");
    send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["a1", "a2"]).await;
    send_texts(&carol, &d.user("bob"), v1::ChatType::Single, &["c1"]).await;
    let team = alice.create_group(group_req(&d, "team", &["bob", "carol"])).await.expect("group");
    send_texts(&carol, &team.id, v1::ChatType::Group, &["t1", "t2", "t3"]).await;

    let list = all_conversations(&bob, 2).await;
    assert_eq!(
        unread_by_id(&list),
        vec![(team.id.clone(), 3), (d.user("carol"), 1), (d.user("alice"), 2), (quiet.id.clone(), 0)],
        "newest activity first; unread counts other people's messages"
    );
    let types: Vec<i32> = list.iter().map(|c| c.conversation_type).collect();
    let (single, group) = (v1::ChatType::Single as i32, v1::ChatType::Group as i32);
    assert_eq!(types, vec![group, single, single, group]);
    let preview = list[0].last_message.as_ref().expect("a preview");
    assert_eq!((text_of(preview), preview.from.as_str()), ("t3", d.user("carol").as_str()));
    assert!(list[3].last_message.is_none(), "no message in the quiet group");
    assert!(list.iter().all(|c| !c.is_pinned && c.pinned_time == 0));

    // Both sides have the conversation; one's own messages are never unread.
    let alices = all_conversations(&alice, 20).await;
    assert_eq!(unread_by_id(&alices), vec![(team.id.clone(), 3), (d.user("bob"), 0)]);
    // A reply moves the conversation up, read up to the reply.
    bob.send_text(d.user("alice"), v1::ChatType::Single, "b1").await.expect("reply");
    let list = all_conversations(&bob, 20).await;
    assert_eq!(list[0].conversation_id, d.user("alice"));
    assert_eq!((list[0].un_read_count, text_of(list[0].last_message.as_ref().unwrap())), (0, "b1"));
    assert_eq!(unread_by_id(&all_conversations(&alice, 20).await)[0], (d.user("bob"), 1));

    // Bad input is named.
    let e = error_of(bob.get_server_conversations(51, "").await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::BadRequest as i32, "get_server_conversations.page_size"));
    let e = error_of(bob.get_server_conversations(5, "garbage").await);
    assert_eq!(e.field, "get_server_conversations.cursor");
}

pub async fn c2_backend_messages_count_only_when_the_operator_asks<D: Deployment>() {
    let d = D::start().await;
    let (bob, _b) = d.client("bob").await;
    let mut backend = v1::backend_client::BackendClient::new(grpc_channel(&d).await);
    let send = |id: &str, update: Option<bool>| v1::BackendSendRequest {
        from: d.user("dave"),
        message: Some(v1::SendMessage {
            client_msg_id: id.into(),
            to: d.user("bob"),
            chat_type: v1::ChatType::Single as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text: id.into() })),
            ..Default::default()
        }),
        update_conversations: update,
    };
    backend.send_message(with_key(send("quiet", None), &d.api_key())).await.expect("send");
    assert!(all_conversations(&bob, 20).await.is_empty(), "a backend message creates no conversation by default");
    let page = bob.get_history_messages(history(&d.user("dave"), v1::ChatType::Single, 20, "", false)).await.unwrap();
    assert_eq!(texts(&page), vec!["quiet"], "but it is in the history");

    backend.send_message(with_key(send("counted", Some(true)), &d.api_key())).await.expect("send");
    backend.send_message(with_key(send("quiet again", None), &d.api_key())).await.expect("send");
    let list = all_conversations(&bob, 20).await;
    assert_eq!(unread_by_id(&list), vec![(d.user("dave"), 1)]);
    assert_eq!(text_of(list[0].last_message.as_ref().unwrap()), "counted", "the newest counted message");
}

pub async fn c2_the_cap_drops_the_least_recently_active<D: Deployment>() {
    let d = D::start_with(|c: &mut Config| {
        c.conversations.max_conversations = 3;
        c.conversations.max_pinned = 1;
    })
    .await;
    let (bob, _b) = d.client("bob").await;
    for name in ["u1", "u2", "u3", "u4"] {
        let (peer, _p) = d.client(name).await;
        peer.send_text(d.user("bob"), v1::ChatType::Single, name).await.expect("send");
    }
    let ids: Vec<String> = all_conversations(&bob, 20).await.into_iter().map(|c| c.conversation_id).collect();
    assert_eq!(ids, vec![d.user("u4"), d.user("u3"), d.user("u2")]);
    // The dropped one comes back with its next message.
    let (u1, _p) = d.client("u1").await;
    u1.send_text(d.user("bob"), v1::ChatType::Single, "again").await.expect("send");
    let list = all_conversations(&bob, 20).await;
    assert_eq!(
        list.iter().map(|c| c.conversation_id.clone()).collect::<Vec<_>>(),
        vec![d.user("u1"), d.user("u4"), d.user("u3")]
    );
}

pub async fn c3_c4_pins_are_listed_newest_first_limited_and_told_to_other_devices<D: Deployment>() {
    let d = D::start_with(|c: &mut Config| c.conversations.max_pinned = 2).await;
    let (bob, _b) = d.client("bob").await;
    let (_laptop, mut laptop) = d.client("bob").await;
    for name in ["u1", "u2", "u3"] {
        let (peer, _p) = d.client(name).await;
        peer.send_text(d.user("bob"), v1::ChatType::Single, name).await.expect("send");
    }
    messages(&mut laptop, 3).await;
    bob.pin_conversation(d.user("u1"), v1::ChatType::Single, true).await.expect("pin");
    let pinned = next_multi_device(&mut laptop).await;
    assert_eq!(
        (pinned.operation, pinned.conversation_id.as_str(), pinned.conversation_type),
        (v1::MultiDeviceOperation::PinnedConversation as i32, d.user("u1").as_str(), v1::ChatType::Single as i32)
    );
    assert!(pinned.time > 0);
    bob.pin_conversation(d.user("u2"), v1::ChatType::Single, true).await.expect("pin");
    next_multi_device(&mut laptop).await;

    let page = bob.get_server_pinned_conversations(20, "").await.expect("pinned");
    let ids: Vec<&str> = page.conversations.iter().map(|c| c.conversation_id.as_str()).collect();
    assert_eq!(ids, vec![d.user("u2"), d.user("u1")], "newest pin first");
    assert!(page.conversations.iter().all(|c| c.is_pinned && c.pinned_time > 0));
    let list = all_conversations(&bob, 20).await;
    assert!(list.iter().find(|c| c.conversation_id == d.user("u1")).unwrap().is_pinned);

    let e = error_of(bob.pin_conversation(d.user("u3"), v1::ChatType::Single, true).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::LimitExceeded as i32, "pin_conversation.is_pinned"));
    assert!(e.message.contains("the limit is 2"), "{}", e.message);
    let e = error_of(bob.pin_conversation(d.user("stranger"), v1::ChatType::Single, true).await);
    assert_eq!(e.code, v1::ErrorCode::NotFound as i32);
    let e = error_of(bob.pin_conversation("not-a-group", v1::ChatType::Group, true).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::BadRequest as i32, "pin_conversation.conversation_id"));

    bob.pin_conversation(d.user("u1"), v1::ChatType::Single, false).await.expect("unpin");
    let unpinned = next_multi_device(&mut laptop).await;
    assert_eq!(unpinned.operation, v1::MultiDeviceOperation::UnpinnedConversation as i32);
    let page = bob.get_server_pinned_conversations(20, "").await.expect("pinned");
    assert_eq!(page.conversations.len(), 1);
    bob.pin_conversation(d.user("u3"), v1::ChatType::Single, true).await.expect("room for one more");
}

pub async fn c5_history_pages_both_ways_from_a_cursor<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let texts_sent: Vec<String> = (0..25).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = texts_sent.iter().map(String::as_str).collect();
    let ids = send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &refs).await;

    let first = bob.get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 10, "", false)).await.unwrap();
    assert_eq!(texts(&first), refs[15..].iter().rev().copied().collect::<Vec<_>>(), "newest first");
    assert_eq!(first.cursor, ids[15].to_string());
    let second = bob
        .get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 10, &first.cursor, false))
        .await
        .unwrap();
    assert_eq!(texts(&second), refs[5..15].iter().rev().copied().collect::<Vec<_>>());
    let last = bob
        .get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 10, &second.cursor, false))
        .await
        .unwrap();
    assert_eq!((last.messages.len(), last.cursor.as_str()), (5, ""), "the last page has no cursor");
    // Down: oldest first; "-1" is the same as no cursor.
    let down = bob.get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 20, "-1", true)).await.unwrap();
    assert_eq!(texts(&down), refs[..20].to_vec());
    let rest = bob
        .get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 20, &down.cursor, true))
        .await
        .unwrap();
    assert_eq!((texts(&rest), rest.cursor.as_str()), (refs[20..].to_vec(), ""));
    // Both sides read the same history; the default page is 20.
    let mine = alice.get_history_messages(history(&d.user("bob"), v1::ChatType::Single, 0, "", false)).await.unwrap();
    assert_eq!(mine.messages.len(), 20);

    let e = error_of(bob.get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 51, "", false)).await);
    assert_eq!(e.field, "get_history_messages.page_size");
    let e = error_of(bob.get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 5, "x1", false)).await);
    assert_eq!(e.field, "get_history_messages.cursor");
    let e =
        error_of(bob.get_history_messages(history(&d.user("alice"), v1::ChatType::Unspecified, 5, "", false)).await);
    assert_eq!(e.field, "get_history_messages.chat_type");
}

pub async fn c5_group_history_starts_at_the_join_and_is_members_only<D: Deployment>() {
    let d = D::start().await;
    let (owner, _o) = d.client("owner").await;
    let (late, _l) = d.client("late").await;
    let (outsider, _x) = d.client("outsider").await;
    let group = owner.create_group(group_req(&d, "g", &[])).await.expect("group");
    send_texts(&owner, &group.id, v1::ChatType::Group, &["before 1", "before 2"]).await;
    owner.add_members(&group.id, [d.user("late")]).await.expect("add");
    send_texts(&owner, &group.id, v1::ChatType::Group, &["after"]).await;

    let page = late.get_history_messages(history(&group.id, v1::ChatType::Group, 20, "", false)).await.unwrap();
    assert_eq!(texts(&page), vec!["after"], "from the join on");
    let list = all_conversations(&late, 20).await;
    assert_eq!(unread_by_id(&list), vec![(group.id.clone(), 1)], "unread from the join on");
    let all = owner.get_history_messages(history(&group.id, v1::ChatType::Group, 20, "", false)).await.unwrap();
    assert_eq!(texts(&all), vec!["after", "before 2", "before 1"]);

    let e = error_of(outsider.get_history_messages(history(&group.id, v1::ChatType::Group, 20, "", false)).await);
    assert_eq!(e.code, v1::ErrorCode::Forbidden as i32);
    late.leave_group(&group.id).await.expect("leave");
    let e = error_of(late.get_history_messages(history(&group.id, v1::ChatType::Group, 20, "", false)).await);
    assert_eq!(e.code, v1::ErrorCode::Forbidden as i32, "a former member reads no more");
    assert!(all_conversations(&late, 20).await.is_empty(), "nor lists the group");
}

pub async fn c6_one_way_delete_by_ids_and_by_time_only_for_me<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (_laptop, mut laptop) = d.client("bob").await;
    let ids = send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["m0", "m1", "m2", "m3", "m4"]).await;
    messages(&mut laptop, 5).await;
    let of_alice = |page, cursor: &str| history(&d.user("alice"), v1::ChatType::Single, page, cursor, true);

    // By id: the newest goes, so the preview falls back to the one before.
    let removal = |ids: Vec<u64>| v1::RemoveHistoryMessages {
        target_id: d.user("alice"),
        chat_type: v1::ChatType::Single as i32,
        message_ids: ids,
        ..Default::default()
    };
    bob.remove_history_messages(removal(vec![ids[1], ids[4]])).await.expect("remove");
    let event = next_multi_device(&mut laptop).await;
    assert_eq!(
        (event.operation, event.message_ids.clone()),
        (v1::MultiDeviceOperation::DeleteRoaming as i32, vec![ids[1], ids[4]])
    );
    assert_eq!(texts(&bob.get_history_messages(of_alice(20, "")).await.unwrap()), vec!["m0", "m2", "m3"]);
    let list = all_conversations(&bob, 20).await;
    assert_eq!((list[0].un_read_count, text_of(list[0].last_message.as_ref().unwrap())), (3, "m3"));
    let theirs = alice.get_history_messages(history(&d.user("bob"), v1::ChatType::Single, 20, "", true)).await.unwrap();
    assert_eq!(theirs.messages.len(), 5, "the other side is unaffected");

    // By time: everything before m3.
    let before = bob.get_history_messages(of_alice(20, "")).await.unwrap().messages[2].timestamp;
    let by_time = v1::RemoveHistoryMessages {
        target_id: d.user("alice"),
        chat_type: v1::ChatType::Single as i32,
        before_timestamp: before,
        ..Default::default()
    };
    bob.remove_history_messages(by_time).await.expect("remove by time");
    assert_eq!(next_multi_device(&mut laptop).await.before_timestamp, before);
    let left = bob.get_history_messages(of_alice(20, "")).await.unwrap();
    assert!(left.messages.iter().all(|m| m.timestamp >= before), "{:?}", texts(&left));
    assert!(texts(&left).contains(&"m3"));
    let list = all_conversations(&bob, 20).await;
    assert_eq!(list[0].un_read_count, left.messages.len() as u64);

    // Bad input writes nothing.
    let e = error_of(bob.remove_history_messages(removal((0..51).collect())).await);
    assert_eq!(
        (e.code, e.field.as_str()),
        (v1::ErrorCode::LimitExceeded as i32, "remove_history_messages.message_ids")
    );
    let (carol, _c) = d.client("carol").await;
    let elsewhere = carol.send_text(d.user("bob"), v1::ChatType::Single, "c").await.unwrap().server_msg_id;
    let e = error_of(bob.remove_history_messages(removal(vec![ids[3], elsewhere])).await);
    assert_eq!((e.code, e.field.as_str()), (v1::ErrorCode::BadRequest as i32, "remove_history_messages.message_ids"));
    assert!(texts(&bob.get_history_messages(of_alice(20, "")).await.unwrap()).contains(&"m3"), "nothing deleted");
    let e = error_of(bob.remove_history_messages(removal(vec![])).await);
    assert_eq!(e.code, v1::ErrorCode::BadRequest as i32);
}

pub async fn c7_deleting_a_conversation_hides_it_until_the_next_message<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (_laptop, mut laptop) = d.client("bob").await;
    let (carol, _c) = d.client("carol").await;
    send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["a0", "a1"]).await;
    send_texts(&carol, &d.user("bob"), v1::ChatType::Single, &["c0"]).await;
    messages(&mut laptop, 3).await;

    // Without deleteRoam the history stays.
    bob.delete_conversation(d.user("carol"), v1::ChatType::Single, false).await.expect("delete");
    let event = next_multi_device(&mut laptop).await;
    assert_eq!((event.operation, event.delete_roam), (v1::MultiDeviceOperation::DeleteConversation as i32, false));
    let of = |who: &str| history(&d.user(who), v1::ChatType::Single, 20, "", false);
    assert_eq!(texts(&bob.get_history_messages(of("carol")).await.unwrap()), vec!["c0"]);
    // With deleteRoam it goes too.
    bob.delete_conversation(d.user("alice"), v1::ChatType::Single, true).await.expect("delete");
    assert!(next_multi_device(&mut laptop).await.delete_roam);
    assert!(all_conversations(&bob, 20).await.is_empty());
    assert!(bob.get_history_messages(of("alice")).await.unwrap().messages.is_empty());
    assert_eq!(alice.get_history_messages(of("bob")).await.unwrap().messages.len(), 2, "alice keeps hers");
    assert_eq!(unread_by_id(&all_conversations(&alice, 20).await), vec![(d.user("bob"), 0)]);

    // A new message brings it back, with only the new message.
    alice.send_text(d.user("bob"), v1::ChatType::Single, "a2").await.expect("send");
    let list = all_conversations(&bob, 20).await;
    assert_eq!(unread_by_id(&list), vec![(d.user("alice"), 1)]);
    assert_eq!(texts(&bob.get_history_messages(of("alice")).await.unwrap()), vec!["a2"]);
}

pub async fn channel_ack_marks_read_and_tells_my_other_devices<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (_laptop, mut laptop) = d.client("bob").await;
    send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["1", "2", "3"]).await;
    messages(&mut laptop, 3).await;
    assert_eq!(unread_by_id(&all_conversations(&bob, 20).await), vec![(d.user("alice"), 3)]);

    bob.send_channel_ack(d.user("alice"), v1::ChatType::Single).await.expect("read");
    match next_event(&mut laptop).await {
        ClientEvent::OnChannelMessage(ack) => {
            assert_eq!((ack.from.as_str(), ack.to.as_str()), (d.user("bob").as_str(), d.user("alice").as_str()));
        }
        other => panic!("expected onChannelMessage, got {other:?}"),
    }
    assert_eq!(unread_by_id(&all_conversations(&bob, 20).await), vec![(d.user("alice"), 0)]);
    send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["4"]).await;
    assert_eq!(unread_by_id(&all_conversations(&bob, 20).await), vec![(d.user("alice"), 1)]);
    let e = error_of(bob.send_channel_ack("", v1::ChatType::Single).await);
    assert_eq!(e.field, "channel_ack.to");
}

pub async fn conversation_events_reach_an_offline_device_on_resume_in_order_once<D: Deployment>() {
    let mut d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let (bob, _b) = d.client("bob").await;
    let (laptop, laptop_events) = d.client("bob").await;
    let cursor = laptop.cursor();
    laptop.close().await;
    drop(laptop_events);
    let ids = send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["x", "y"]).await;
    bob.pin_conversation(d.user("alice"), v1::ChatType::Single, true).await.expect("pin");
    bob.send_channel_ack(d.user("alice"), v1::ChatType::Single).await.expect("read");
    let removal = v1::RemoveHistoryMessages {
        target_id: d.user("alice"),
        chat_type: v1::ChatType::Single as i32,
        message_ids: vec![ids[0]],
        ..Default::default()
    };
    bob.remove_history_messages(removal).await.expect("remove");
    // The state and the events survive a restart.
    d.restart().await;

    let options = ClientOptions { cursor: Some(cursor), ..d.options("bob") };
    let (bob, mut laptop) = Client::connect(options).await.expect("connect");
    assert_eq!(messages(&mut laptop, 2).await.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    let pinned = next_multi_device(&mut laptop).await;
    assert_eq!(pinned.operation, v1::MultiDeviceOperation::PinnedConversation as i32);
    assert!(matches!(next_event(&mut laptop).await, ClientEvent::OnChannelMessage(_)));
    assert_eq!(next_multi_device(&mut laptop).await.message_ids, vec![ids[0]]);
    assert_quiet(&d, "bob", &mut laptop).await;
    let list = all_conversations(&bob, 20).await;
    assert_eq!((list[0].is_pinned, list[0].un_read_count), (true, 0));
    assert_eq!(text_of(list[0].last_message.as_ref().unwrap()), "y");
}

pub async fn backend_grpc_reads_conversations_and_history_and_deletes_for_a_user<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let ids = send_texts(&alice, &d.user("bob"), v1::ChatType::Single, &["h0", "h1", "h2"]).await;
    let mut backend = v1::backend_client::BackendClient::new(grpc_channel(&d).await);
    let key = d.api_key();
    let list = backend
        .get_conversations(with_key(
            v1::BackendConversationsRequest { user_id: d.user("bob"), page_size: 10, ..Default::default() },
            &key,
        ))
        .await
        .expect("conversations")
        .into_inner();
    assert_eq!(unread_by_id(&list.conversations), vec![(d.user("alice"), 3)]);
    let query = history(&d.user("alice"), v1::ChatType::Single, 2, "", false);
    let page = backend
        .get_history_messages(with_key(v1::BackendHistoryRequest { user_id: d.user("bob"), query: Some(query) }, &key))
        .await
        .expect("history")
        .into_inner();
    assert_eq!((texts(&page), page.cursor.clone()), (vec!["h2", "h1"], ids[1].to_string()));
    let removal = v1::RemoveHistoryMessages {
        target_id: d.user("alice"),
        chat_type: v1::ChatType::Single as i32,
        message_ids: vec![ids[2]],
        ..Default::default()
    };
    backend
        .remove_history_messages(with_key(
            v1::BackendRemoveHistoryRequest { user_id: d.user("bob"), removal: Some(removal) },
            &key,
        ))
        .await
        .expect("remove");
    let (bob, _b) = d.client("bob").await;
    let mine = bob.get_history_messages(history(&d.user("alice"), v1::ChatType::Single, 20, "", false)).await.unwrap();
    assert_eq!(texts(&mine), vec!["h1", "h0"]);
    let bad = backend
        .get_conversations(with_key(
            v1::BackendConversationsRequest { user_id: "No Such".into(), ..Default::default() },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.metadata().get("natter-error-field").and_then(|v| v.to_str().ok()), Some("user_id"));
    let unauthenticated = backend
        .get_conversations(v1::BackendConversationsRequest { user_id: d.user("bob"), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
}

/// The next frame that is not a presence change: the user's own devices get
/// those live, at whatever moment their login reaches the presence service.
pub(super) async fn next_frame(ws: &mut super::RawWs) -> serde_json::Value {
    loop {
        let frame = super::next_json(ws).await;
        // A presence change is a frame of its own, not a log event.
        if frame.get("onPresenceStatusChange").is_none() {
            return frame;
        }
    }
}

/// Sends one JSON request and returns its response, with the events other
/// than presence changes that came before it.
pub(super) async fn json_request(
    ws: &mut super::RawWs,
    request: serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    use futures::SinkExt;
    let req_id = request["reqId"].clone();
    eprintln!("> {request}");
    ws.send(tokio_tungstenite::tungstenite::Message::Text(request.to_string().into())).await.expect("send");
    let mut events = Vec::new();
    loop {
        let frame = next_frame(ws).await;
        eprintln!("< {frame}");
        match frame.get("response") {
            Some(response) if response["reqId"] == req_id => return (response.clone(), events),
            _ => events.push(frame),
        }
    }
}

pub async fn conversation_requests_over_json_frames_use_the_seed_names<D: Deployment>() {
    let d = D::start().await;
    let (alice, _a) = d.client("alice").await;
    let mut ws = super::raw_json(&d, "bob").await;
    let sent = alice.send_text(d.user("bob"), v1::ChatType::Single, "hi bob").await.expect("send").server_msg_id;
    let event = next_frame(&mut ws).await;
    assert_eq!(event["event"]["onTextMessage"]["id"], sent.to_string(), "{event}");
    let alice_id = d.user("alice");

    let (list, _) =
        json_request(&mut ws, serde_json::json!({"reqId": "1", "getServerConversations": {"pageSize": 20}})).await;
    let item = &list["conversations"]["conversations"][0];
    assert_eq!(item["conversationId"], alice_id.as_str(), "{list}");
    assert_eq!((item["conversationType"].as_str(), item["unReadCount"].as_str()), (Some("SINGLE"), Some("1")));
    assert_eq!(item["lastMessage"]["id"], sent.to_string());

    let history = serde_json::json!({"reqId": "2", "getHistoryMessages":
        {"targetId": alice_id, "chatType": "SINGLE", "pageSize": 20, "cursor": "-1", "searchDirection": "DOWN"}});
    let (page, _) = json_request(&mut ws, history).await;
    assert_eq!(page["history"]["messages"][0]["text"]["text"], "hi bob", "{page}");

    let pin = serde_json::json!({"reqId": "3", "pinConversation":
        {"conversationId": alice_id, "conversationType": "SINGLE", "isPinned": true}});
    let (pinned, mut events) = json_request(&mut ws, pin).await;
    assert!(pinned.get("ok").is_some(), "{pinned}");
    let ack = serde_json::json!({"reqId": "4", "channelAck": {"to": alice_id, "chatType": "SINGLE"}});
    let (acked, more) = json_request(&mut ws, ack).await;
    assert!(acked.get("ok").is_some(), "{acked}");
    events.extend(more);
    // The device that made the changes gets their events too.
    while events.len() < 2 {
        events.push(next_frame(&mut ws).await);
    }
    let operation = &events[0]["event"]["onMultiDeviceEvent"]["operation"];
    assert_eq!(operation, "PINNED_CONVERSATION", "{events:?}");
    assert_eq!(events[1]["event"]["onChannelMessage"]["to"], alice_id.as_str(), "{events:?}");

    let bad = serde_json::json!({"reqId": "5", "removeHistoryMessages":
        {"targetId": alice_id, "chatType": "SINGLE", "beforeTimestamp": "1", "messageIds": [sent.to_string()]}});
    let (refused, _) = json_request(&mut ws, bad).await;
    assert_eq!(refused["error"]["field"], "remove_history_messages.message_ids", "{refused}");
}
