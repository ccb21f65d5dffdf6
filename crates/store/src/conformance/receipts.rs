//! Group read receipts (`ReceiptStore`).

use super::*;

fn group_conversation() -> (ConversationKey, MessageId) {
    (ConversationKey::group(&GroupId::from_id(ids().next().0)), ids().next())
}

pub async fn receipts_count_each_reader_once(stores: &Stores) {
    let r = &stores.receipts;
    let (conv, message) = group_conversation();
    let (a, b) = (user("a"), user("b"));
    assert_eq!(r.read_count(&conv, message).await.unwrap(), 0);
    r.record_read(&conv, message, &a, 100).await.unwrap();
    r.record_read(&conv, message, &a, 200).await.unwrap();
    r.record_read(&conv, message, &b, 150).await.unwrap();
    assert_eq!(r.read_count(&conv, message).await.unwrap(), 2, "a repeat is not counted again");
    let readers = r.readers(&conv, message, None, 10).await.unwrap();
    let mut want = vec![Reader { user: a.clone(), time: 100 }, Reader { user: b.clone(), time: 150 }];
    want.sort_by(|x, y| x.user.cmp(&y.user));
    assert_eq!(readers, want, "the first time is kept");
    let other = ids().next();
    assert_eq!(r.read_count(&conv, other).await.unwrap(), 0, "per message");
    assert!(r.readers(&conv, other, None, 10).await.unwrap().is_empty());
}

pub async fn receipts_page_readers_by_user_id(stores: &Stores) {
    let r = &stores.receipts;
    let (conv, message) = group_conversation();
    let prefix = unique("p");
    let mut users: Vec<UserId> = (0..25).map(|n| UserId::parse(&format!("{prefix}-{n:02}"), "user").unwrap()).collect();
    for (n, u) in users.iter().enumerate().rev() {
        r.record_read(&conv, message, u, n as i64).await.unwrap();
    }
    users.sort();
    let mut seen = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = r.readers(&conv, message, after.as_ref(), 10).await.unwrap();
        seen.extend(page.iter().map(|x| x.user.clone()));
        match page.last() {
            Some(last) if page.len() == 10 => after = Some(last.user.clone()),
            _ => break,
        }
    }
    assert_eq!(seen, users, "every reader once, in user id order");
    assert_eq!(r.read_count(&conv, message).await.unwrap(), 25);
}

pub async fn receipts_concurrent_readers_are_all_counted(stores: &Stores) {
    let (conv, message) = group_conversation();
    let readers: Vec<UserId> = (0..40).map(|n| user(&format!("r{n}"))).collect();
    let writes = readers.iter().flat_map(|u| [u.clone(), u.clone()]).map(|u| {
        let (stores, conv) = (stores.clone(), conv.clone());
        async move { stores.receipts.record_read(&conv, message, &u, 1).await }
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(stores.receipts.read_count(&conv, message).await.unwrap(), 40, "each reader once, none lost");
}
