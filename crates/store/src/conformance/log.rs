//! Users' event logs (`UserLog`), group sends included.

use super::*;

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
