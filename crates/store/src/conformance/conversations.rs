//! Conversation heads, users' states, one-way deletes and recalls (`ConversationStore`).

use super::*;

/// Sends `message` counted to `recipients` (C2).
async fn send_counted(stores: &Stores, message: &Message, recipients: &[UserId]) -> Stored {
    stores.messages.insert_and_append(message, recipients, true, stores.log.as_ref()).await.unwrap()
}

fn positioned(message: &Message, pos: u64) -> Message {
    Message { pos, ..message.clone() }
}

async fn head_of(stores: &Stores, conversation: &ConversationKey) -> Option<ConversationHead> {
    stores.conversations.heads(std::slice::from_ref(conversation)).await.unwrap().remove(0)
}

async fn state_of(stores: &Stores, user: &UserId, conversation: &ConversationKey) -> Option<UserConversation> {
    stores.conversations.user_conversation(user, conversation).await.unwrap()
}

/// Counted messages take positions 1, 2, 3 in their conversation, stored
/// with them (history, the log) and in the conversation's head; another
/// conversation counts on its own.
pub async fn conversations_counted_sends_take_dense_positions(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let conv = ConversationKey::single(&a, &b);
    assert_eq!(head_of(stores, &conv).await, None, "no counted message yet");
    let mut sent = Vec::new();
    for (n, (from, to)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        let message = text_message(from, to, &unique("p"), &format!("n{n}"));
        let stored = send_counted(stores, &message, &[a.clone(), b.clone()]).await;
        assert_eq!(stored.message, positioned(&message, n as u64 + 1));
        assert!(!stored.duplicate);
        sent.push(stored.message);
    }
    let other = text_message(&a, &c, &unique("p"), "elsewhere");
    assert_eq!(send_counted(stores, &other, &[a.clone(), c.clone()]).await.message.pos, 1, "per conversation");

    let last = &sent[2];
    let head = ConversationHead { pos: 3, last_id: last.id, last_time: last.timestamp };
    let none = ConversationKey::single(&b, &c);
    let heads = stores.conversations.heads(&[conv.clone(), none, other.conversation()]).await.unwrap();
    assert_eq!(
        heads,
        vec![Some(head), None, Some(ConversationHead { pos: 1, last_id: other.id, last_time: other.timestamp })]
    );
    assert_eq!(stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap(), sent);
    assert_eq!(stores.messages.get_message(&conv, last.id).await.unwrap().as_ref(), Some(last));
    let page = stores.log.read(&b, 0, 10).await.unwrap().unwrap();
    let logged: Vec<LogEvent> = sent.iter().cloned().map(LogEvent::Message).collect();
    assert_eq!(page.events.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), logged, "the log has the positions");
}

/// A retry of a counted send returns the message with its position, takes
/// no second one and leaves the head where it was; so does a retry after
/// later messages.
pub async fn conversations_duplicate_keeps_its_position(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    let first = text_message(&a, &b, "d1", "first");
    assert_eq!(send_counted(stores, &first, &users).await.message.pos, 1);
    let second = text_message(&a, &b, "d2", "second");
    assert_eq!(send_counted(stores, &second, &users).await.message.pos, 2);
    let conv = first.conversation();
    for (original, pos) in [(&second, 2), (&first, 1), (&first, 1)] {
        let again = send_counted(stores, &retry_of(original), &users).await;
        assert_eq!(again, Stored { message: positioned(original, pos), duplicate: true, appended: vec![] });
    }
    assert_eq!(head_of(stores, &conv).await.map(|h| (h.pos, h.last_id)), Some((2, second.id)), "the head stays");
    match stores.messages.insert_message(&retry_of(&second)).await.unwrap() {
        Inserted::Duplicate { message, .. } => assert_eq!(message, positioned(&second, 2), "the record has it too"),
        other => panic!("expected duplicate, got {other:?}"),
    }
    let third = text_message(&a, &b, "d3", "third");
    assert_eq!(send_counted(stores, &third, &users).await.message.pos, 3, "no position was lost or taken twice");
}

/// A message that does not count has position 0, moves no head and writes
/// no state; the next counted one goes on from the head.
pub async fn conversations_uncounted_send_has_no_position(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    let quiet = text_message(&a, &b, "u1", "from the backend");
    let stored = stores.messages.insert_and_append(&quiet, &users, false, stores.log.as_ref()).await.unwrap();
    assert_eq!(stored.message, quiet);
    assert_eq!(stored.message.pos, 0);
    let conv = quiet.conversation();
    assert_eq!(head_of(stores, &conv).await, None);
    assert_eq!(state_of(stores, &a, &conv).await, None, "no state for the sender");
    assert_eq!(state_of(stores, &b, &conv).await, None, "nor for the peer");
    let counted = text_message(&a, &b, "u2", "from a device");
    assert_eq!(send_counted(stores, &counted, &users).await.message.pos, 1);
    let quiet_again = text_message(&b, &a, "u3", "again from the backend");
    let stored = stores.messages.insert_and_append(&quiet_again, &users, false, stores.log.as_ref()).await.unwrap();
    assert_eq!(stored.message.pos, 0);
    assert_eq!(head_of(stores, &conv).await.map(|h| (h.pos, h.last_id)), Some((1, counted.id)), "the head stays");
    assert_eq!(state_of(stores, &b, &conv).await.map(|s| s.read_pos), Some(0), "an uncounted send reads nothing");
    let page = stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(page.iter().map(|m| m.pos).collect::<Vec<_>>(), [0, 1, 0], "all in the history");
}

/// A 1:1 message gives both users their state (created at the message's
/// time) and moves the sender's read position to it, never back.
pub async fn conversations_one_to_one_send_creates_both_states(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    let first = text_message(&a, &b, &unique("o"), "hello");
    send_counted(stores, &first, &users).await;
    let conv = first.conversation();
    let mut a_state = UserConversation::new(conv.clone(), first.timestamp);
    a_state.read_pos = 1;
    assert_eq!(state_of(stores, &a, &conv).await, Some(a_state.clone()));
    assert_eq!(state_of(stores, &b, &conv).await, Some(UserConversation::new(conv.clone(), first.timestamp)));

    let reply = text_message(&b, &a, &unique("o"), "hi");
    send_counted(stores, &reply, &users).await;
    assert_eq!(state_of(stores, &a, &conv).await, Some(a_state.clone()), "the peer's read position stays");
    let b_state = state_of(stores, &b, &conv).await.unwrap();
    assert_eq!((b_state.created_at, b_state.read_pos), (first.timestamp, 2), "created once, read up to its own");

    // A sender whose read position is ahead of its message keeps it.
    stores.conversations.update(&a, &conv, ConversationChange::Read { pos: 9 }, 0).await.unwrap();
    send_counted(stores, &text_message(&a, &b, &unique("o"), "after reading ahead"), &users).await;
    assert_eq!(state_of(stores, &a, &conv).await.map(|s| s.read_pos), Some(9));
    let listed: Vec<ConversationKey> =
        stores.conversations.user_conversations(&b).await.unwrap().into_iter().map(|s| s.conversation).collect();
    assert_eq!(listed, vec![conv]);
}

/// The system user is no party: its messages give the peer a state, the
/// system none.
pub async fn conversations_system_send_gives_the_system_no_state(stores: &Stores) {
    let b = user("b");
    let system = UserId::system();
    let notice = Message { from_system: true, ..text_message(&system, &b, &unique("sys"), "notice") };
    let stored = send_counted(stores, &notice, std::slice::from_ref(&b)).await;
    assert_eq!(stored.message.pos, 1);
    let conv = notice.conversation();
    assert_eq!(state_of(stores, &system, &conv).await, None);
    assert_eq!(state_of(stores, &b, &conv).await, Some(UserConversation::new(conv.clone(), notice.timestamp)));
    assert_eq!(head_of(stores, &conv).await.map(|h| h.pos), Some(1));
}

/// A group message moves the group's head and its sender's state only:
/// no row per member.
pub async fn conversations_group_send_writes_only_the_senders_state(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let group = new_group(&a, 10);
    let members = [member(&a, GroupRole::Owner), member(&b, GroupRole::Member), member(&c, GroupRole::Member)];
    stores.groups.create_group(&group, &members).await.unwrap();
    let ids = stores.groups.member_ids(&group.id).await.unwrap();
    let first = group_message(&a, &group.id, 0);
    assert_eq!(send_counted(stores, &first, &ids).await.message.pos, 1);
    let second = group_message(&b, &group.id, 1);
    assert_eq!(send_counted(stores, &second, &ids).await.message.pos, 2);
    let conv = first.conversation();
    assert_eq!(
        head_of(stores, &conv).await,
        Some(ConversationHead { pos: 2, last_id: second.id, last_time: second.timestamp })
    );
    let mut a_state = UserConversation::new(conv.clone(), first.timestamp);
    a_state.read_pos = 1;
    assert_eq!(state_of(stores, &a, &conv).await, Some(a_state));
    let mut b_state = UserConversation::new(conv.clone(), second.timestamp);
    b_state.read_pos = 2;
    assert_eq!(state_of(stores, &b, &conv).await, Some(b_state));
    assert_eq!(state_of(stores, &c, &conv).await, None, "a member who did nothing has no state");
    assert!(stores.conversations.user_conversations(&c).await.unwrap().is_empty());
}

/// Each change does what `UserConversation::apply` does, on a state made at
/// `now` by the first one, and the stored state is the one returned.
pub async fn conversations_update_applies_each_change(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let cleared: Vec<MessageId> = (0..3).map(|_| ids().next()).collect();
    let changes = [
        ConversationChange::Read { pos: 5 },
        ConversationChange::Read { pos: 3 },
        ConversationChange::Pin { at: 100 },
        ConversationChange::Clear { pos: 4, id: cleared[1] },
        ConversationChange::Clear { pos: 2, id: cleared[2] },
        ConversationChange::Clear { pos: 3, id: cleared[0] },
        ConversationChange::Read { pos: 6 },
        ConversationChange::Unpin,
        ConversationChange::Pin { at: 200 },
        ConversationChange::Hide { pos: 8 },
        ConversationChange::Read { pos: 7 },
        ConversationChange::Hide { pos: 9 },
    ];
    let mut model = UserConversation::new(conv.clone(), 1_000);
    for (n, change) in changes.iter().enumerate() {
        model.apply(change);
        let now = 1_000 + n as i64;
        let got = stores.conversations.update(&a, &conv, *change, now).await.unwrap();
        assert_eq!(got, model, "after {change:?}");
        assert_eq!(state_of(stores, &a, &conv).await.as_ref(), Some(&model), "stored after {change:?}");
    }
    assert_eq!((model.read_pos, model.cleared_pos, model.cleared_id), (9, 4, cleared[2]), "never moved back");
    assert_eq!((model.hidden_pos, model.pinned_at), (Some(9), 0));
    assert_eq!(state_of(stores, &b, &conv).await, None, "the other user's state is their own");
}

/// Concurrent changes to different fields all stay: a pin does not undo a
/// read, a hide does not undo a clear, reads keep the highest.
pub async fn conversations_concurrent_changes_keep_each_field(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let id = ids().next();
    stores.conversations.update(&a, &conv, ConversationChange::Read { pos: 1 }, 10).await.unwrap();
    let c = &stores.conversations;
    let (x, y, z, w, v) = tokio::join!(
        c.update(&a, &conv, ConversationChange::Pin { at: 50 }, 11),
        c.update(&a, &conv, ConversationChange::Read { pos: 7 }, 11),
        c.update(&a, &conv, ConversationChange::Clear { pos: 3, id }, 11),
        c.update(&a, &conv, ConversationChange::Read { pos: 4 }, 11),
        c.update(&a, &conv, ConversationChange::Read { pos: 6 }, 11),
    );
    for result in [x, y, z, w, v] {
        result.unwrap();
    }
    let state = state_of(stores, &a, &conv).await.unwrap();
    assert_eq!(
        (state.created_at, state.read_pos, state.pinned_at, state.cleared_pos, state.cleared_id),
        (10, 7, 50, 3, id)
    );
}

/// C7: a hidden conversation is off the list until its head passes the
/// hide; a new message brings it back without writing the state.
pub async fn conversations_hidden_is_listed_again_after_a_new_message(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let users = [a.clone(), b.clone()];
    for n in 0..2 {
        send_counted(stores, &text_message(&a, &b, &unique("h"), &format!("n{n}")), &users).await;
    }
    let conv = ConversationKey::single(&a, &b);
    let head = head_of(stores, &conv).await.unwrap().pos;
    let hidden = stores.conversations.update(&b, &conv, ConversationChange::Hide { pos: head }, 5).await.unwrap();
    assert!(!hidden.listed(head), "hidden");
    assert_eq!(hidden.read_pos, head, "hiding reads it");
    send_counted(stores, &text_message(&a, &b, &unique("h"), "again"), &users).await;
    let head = head_of(stores, &conv).await.unwrap().pos;
    let state = state_of(stores, &b, &conv).await.unwrap();
    assert_eq!(state.hidden_pos, Some(2));
    assert!(state.listed(head), "listed again at head {head}");
    assert_eq!(state.read_pos, 2, "the new message is unread");
}

/// C6: removed messages come back ascending by id, strictly after the
/// bound, with their positions; per user and conversation.
pub async fn conversations_removed_messages_ascend_after_the_bound(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let sent: Vec<MessageId> = (0..4).map(|_| ids().next()).collect();
    let c = &stores.conversations;
    c.remove_messages(&a, &conv, &[(sent[3], 40), (sent[0], 10)]).await.unwrap();
    c.remove_messages(&a, &conv, &[(sent[2], 30), (sent[0], 10)]).await.unwrap();
    c.remove_messages(&a, &conv, &[]).await.unwrap();
    let all = vec![(sent[0], 10), (sent[2], 30), (sent[3], 40)];
    assert_eq!(c.removed_messages(&a, &conv, MessageId(0)).await.unwrap(), all);
    assert_eq!(c.removed_messages(&a, &conv, sent[0]).await.unwrap(), all[1..].to_vec(), "strictly after");
    assert_eq!(c.removed_messages(&a, &conv, sent[1]).await.unwrap(), all[1..].to_vec());
    assert!(c.removed_messages(&a, &conv, sent[3]).await.unwrap().is_empty());
    assert!(c.removed_messages(&b, &conv, MessageId(0)).await.unwrap().is_empty(), "per user");
    let other = ConversationKey::single(&a, &user("c"));
    assert!(c.removed_messages(&a, &other, MessageId(0)).await.unwrap().is_empty(), "per conversation");
    let many: Vec<(MessageId, u64)> = (0..120).map(|n| (ids().next(), n)).collect();
    c.remove_messages(&b, &conv, &many).await.unwrap();
    assert_eq!(c.removed_messages(&b, &conv, MessageId(0)).await.unwrap(), many, "more than one batch");
    assert_eq!(state_of(stores, &a, &conv).await, None, "removing writes no state");
}

pub async fn conversations_recalls_are_per_conversation_and_idempotent(stores: &Stores) {
    let c = &stores.conversations;
    let (a, b) = (user("a"), user("b"));
    let conv = ConversationKey::single(&a, &b);
    let (first, second) = (ids().next(), ids().next());
    assert!(c.recalled(&conv, MessageId(0)).await.unwrap().is_empty());
    c.recall(&conv, second, 7).await.unwrap();
    c.recall(&conv, first, 3).await.unwrap();
    c.recall(&conv, second, 7).await.unwrap();
    assert_eq!(c.recalled(&conv, MessageId(0)).await.unwrap(), vec![(first, 3), (second, 7)], "once each, by id");
    assert_eq!(c.recalled(&conv, first).await.unwrap(), vec![(second, 7)], "strictly after the bound");
    let other = ConversationKey::single(&a, &user("c"));
    assert!(c.recalled(&other, MessageId(0)).await.unwrap().is_empty(), "per conversation");
}
