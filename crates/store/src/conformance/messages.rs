//! Messages and their idempotency records (`MessageStore`).

use super::*;

pub async fn messages_insert_is_idempotent(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let first = text_message(&a, &b, "c1", "hello");
    assert_eq!(stores.messages.insert_message(&first).await.unwrap(), Inserted::New);

    let retry = text_message(&a, &b, "c1", "hello again");
    match stores.messages.insert_message(&retry).await.unwrap() {
        Inserted::Duplicate { message, fanned_out } => {
            assert_eq!(message, first, "a retry returns the stored message");
            assert!(!fanned_out);
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
    stores.messages.mark_fanned_out(&a, "c1").await.unwrap();
    match stores.messages.insert_message(&retry).await.unwrap() {
        Inserted::Duplicate { fanned_out, .. } => assert!(fanned_out),
        other => panic!("expected duplicate, got {other:?}"),
    }
    // Same client id from another sender is another message.
    let other = text_message(&b, &a, "c1", "mine");
    assert_eq!(stores.messages.insert_message(&other).await.unwrap(), Inserted::New);

    let conv = ConversationKey::single(&a, &b);
    let got = stores.messages.get_message(&conv, first.id).await.unwrap();
    assert_eq!(got.as_ref(), Some(&first));
    let page = stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(page, vec![first, other], "retry stored once");
}

pub async fn messages_insert_and_append_fans_out_once(stores: &Stores) {
    let (a, b) = (user("a"), user("b"));
    let log = stores.log.as_ref();
    let message = text_message(&a, &b, "s1", "hi");
    let stored = stores.messages.insert_and_append(&message, &[a.clone(), b.clone()], false, log).await.unwrap();
    assert_eq!(stored, Stored { message: message.clone(), duplicate: false, appended: vec![at(1), at(1)] });
    for who in [&a, &b] {
        let page = stores.log.read(who, 0, 10).await.unwrap().unwrap();
        assert_eq!(page.events, vec![(1, LogEvent::Message(message.clone()))], "{who}'s log has the message once");
    }
    let conv = message.conversation();
    assert_eq!(stores.messages.get_message(&conv, message.id).await.unwrap().as_ref(), Some(&message));

    // A retry (another id, another text) returns the stored one and appends nothing.
    let retry = text_message(&a, &b, "s1", "hi again");
    let again = stores.messages.insert_and_append(&retry, &[a.clone(), b.clone()], false, log).await.unwrap();
    assert_eq!(again, Stored { message: message.clone(), duplicate: true, appended: vec![] });
    assert_eq!(stores.log.bounds(&b).await.unwrap().0, 1, "nothing appended by the retry");
    match stores.messages.insert_message(&retry).await.unwrap() {
        Inserted::Duplicate { fanned_out, .. } => assert!(fanned_out, "marked fanned out"),
        other => panic!("expected duplicate, got {other:?}"),
    }

    // Stored but never fanned out (a crash between the steps): the retry finishes it, once.
    let interrupted = text_message(&a, &b, "s2", "half");
    assert_eq!(stores.messages.insert_message(&interrupted).await.unwrap(), Inserted::New);
    let finished =
        stores.messages.insert_and_append(&retry_of(&interrupted), &[a.clone(), b.clone()], false, log).await;
    assert_eq!(
        finished.unwrap(),
        Stored { message: interrupted.clone(), duplicate: true, appended: vec![at(2), at(2)] }
    );
    let page = stores.log.read(&b, 1, 10).await.unwrap().unwrap();
    assert_eq!(page.events, vec![(2, LogEvent::Message(interrupted.clone()))]);
    let once_more = stores.messages.insert_and_append(&interrupted, &[a.clone(), b.clone()], false, log).await.unwrap();
    assert!(once_more.duplicate && once_more.appended.is_empty());
    assert_eq!(stores.log.bounds(&a).await.unwrap().0, 2);
}

/// A client message id is idempotent for the window after the stored
/// message's timestamp (the backend's default window): a send stamped at its
/// end is a duplicate, one stamped after it is a new message, and that one is
/// what later retries get. Both ways of storing a send.
pub async fn messages_idempotency_holds_for_the_window(stores: &Stores) {
    let window_ms = i64::try_from(crate::DEFAULT_IDEMPOTENCY_WINDOW.as_millis()).unwrap();
    let (a, b) = (user("a"), user("b"));
    let stamped =
        |client: &str, timestamp: i64, text: &str| Message { timestamp, ..text_message(&a, &b, client, text) };

    let first = text_message(&a, &b, "w1", "first");
    assert_eq!(stores.messages.insert_message(&first).await.unwrap(), Inserted::New);
    let at_the_end = stamped("w1", first.timestamp + window_ms, "at the end");
    match stores.messages.insert_message(&at_the_end).await.unwrap() {
        Inserted::Duplicate { message, .. } => assert_eq!(message, first, "still within the window"),
        other => panic!("expected duplicate, got {other:?}"),
    }
    let after = stamped("w1", first.timestamp + window_ms + 1, "after");
    assert_eq!(stores.messages.insert_message(&after).await.unwrap(), Inserted::New, "past the window");
    match stores.messages.insert_message(&stamped("w1", after.timestamp + 1, "retry")).await.unwrap() {
        Inserted::Duplicate { message, fanned_out } => {
            assert_eq!(message, after, "the new record answers");
            assert!(!fanned_out, "the new message is not fanned out yet");
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
    let conv = ConversationKey::single(&a, &b);
    let page = stores.messages.history(&conv, None, Direction::Down, 10).await.unwrap();
    assert_eq!(page, vec![first, after], "both are in the history");

    let log = stores.log.as_ref();
    let users = [a.clone(), b.clone()];
    let sent = text_message(&a, &b, "w2", "sent");
    assert!(!stores.messages.insert_and_append(&sent, &users, false, log).await.unwrap().duplicate);
    let resent = stamped("w2", sent.timestamp + window_ms + 1, "resent");
    let stored = stores.messages.insert_and_append(&resent, &users, false, log).await.unwrap();
    assert_eq!(stored, Stored { message: resent.clone(), duplicate: false, appended: vec![at(2), at(2)] });
    let retried =
        stores.messages.insert_and_append(&stamped("w2", resent.timestamp, "again"), &users, false, log).await;
    assert_eq!(retried.unwrap(), Stored { message: resent, duplicate: true, appended: vec![] });
}

/// Seq `n` right after `n - 1`.
fn at(seq: u64) -> Appended {
    Appended { seq, prev: seq - 1 }
}

pub async fn messages_history_pages_both_ways(stores: &Stores) {
    let (a, b, c) = (user("a"), user("b"), user("c"));
    let mut sent = Vec::new();
    for i in 0..7 {
        let m = text_message(&a, &b, &format!("m{i}"), &format!("text {i}"));
        stores.messages.insert_message(&m).await.unwrap();
        sent.push(m);
    }
    // Another conversation must not leak in.
    stores.messages.insert_message(&text_message(&a, &c, "x", "other")).await.unwrap();
    let conv = ConversationKey::single(&b, &a);

    let newest = stores.messages.history(&conv, None, Direction::Up, 3).await.unwrap();
    assert_eq!(newest, sent[4..].iter().rev().cloned().collect::<Vec<_>>());
    let older = stores.messages.history(&conv, Some(newest[2].id), Direction::Up, 3).await.unwrap();
    assert_eq!(older, sent[1..4].iter().rev().cloned().collect::<Vec<_>>());
    let oldest = stores.messages.history(&conv, None, Direction::Down, 2).await.unwrap();
    assert_eq!(oldest, sent[..2].to_vec());
    let after = stores.messages.history(&conv, Some(sent[5].id), Direction::Down, 10).await.unwrap();
    assert_eq!(after, vec![sent[6].clone()]);
}
