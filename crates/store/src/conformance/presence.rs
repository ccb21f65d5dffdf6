//! Presence subscriptions and descriptions (`PresenceStore`), the webhook outbox (`WebhookOutbox`).

use super::*;

pub async fn presence_subscriptions_expire_cap_and_page(stores: &Stores) {
    let p = &stores.presence;
    let me = user("me");
    let (a, b, c, d) = (user("a"), user("b"), user("c"), user("d"));
    let now = 1_000_000;
    assert!(p.subscribe(&me, &[a.clone(), b.clone()], now + 100, 3, now).await.unwrap().is_empty());
    assert!(p.subscribe(&me, std::slice::from_ref(&c), now + 50, 3, now).await.unwrap().is_empty());
    // Re-subscribing replaces the expiry (P1).
    assert!(p.subscribe(&me, std::slice::from_ref(&a), now + 300, 3, now).await.unwrap().is_empty());
    // Past the cap the shortest-remaining other subscription goes (P2).
    let evicted = p.subscribe(&me, std::slice::from_ref(&d), now + 200, 3, now).await.unwrap();
    assert_eq!(evicted, vec![Subscription { target: c.clone(), expires_at: now + 50 }]);
    let (page, total) = p.subscriptions(&me, now, 0, 10).await.unwrap();
    assert_eq!(total, 3);
    let mut expected = vec![
        Subscription { target: a.clone(), expires_at: now + 300 },
        Subscription { target: b.clone(), expires_at: now + 100 },
        Subscription { target: d.clone(), expires_at: now + 200 },
    ];
    expected.sort_by(|x, y| x.target.cmp(&y.target));
    assert_eq!(page, expected);
    let (second, _) = p.subscriptions(&me, now, 2, 10).await.unwrap();
    assert_eq!(second, expected[2..].to_vec());
    assert_eq!(p.subscribers(&a, now).await.unwrap(), vec![me.clone()]);
    // Expired subscriptions stop counting at their expiry, before any sweep (P8).
    assert!(p.subscribers(&b, now + 100).await.unwrap().is_empty());
    assert_eq!(p.subscriptions(&me, now + 150, 0, 10).await.unwrap().1, 2);
    // The sweeper removes only what did not move.
    assert!(!p.remove_expired(&me, &a, now + 100).await.unwrap(), "a was extended");
    assert!(p.remove_expired(&me, &b, now + 100).await.unwrap());
    let all: Vec<_> = p.all_subscriptions().await.unwrap().into_iter().filter(|(s, _)| *s == me).collect();
    assert_eq!(all.len(), 2);
    p.unsubscribe(&me, std::slice::from_ref(&a)).await.unwrap();
    assert!(p.subscribers(&a, now).await.unwrap().is_empty());
    assert_eq!(p.subscriptions(&me, now, 0, 10).await.unwrap().1, 1);
}

pub async fn presence_fields_round_trip(stores: &Stores) {
    let p = &stores.presence;
    let me = user("me");
    assert_eq!(p.get_presence(&me).await.unwrap(), (String::new(), 0));
    p.set_presence(&me, Some("in a meeting"), 5).await.unwrap();
    p.set_presence(&me, None, 9).await.unwrap();
    assert_eq!(p.get_presence(&me).await.unwrap(), ("in a meeting".to_owned(), 9), "time moves, text stays");
}

pub async fn webhook_outbox_is_an_ordered_queue_per_receiver(stores: &Stores) {
    let o = &stores.outbox;
    let (r1, r2) = (unique("r1"), unique("r2"));
    let event = |n: i64| WebhookEvent {
        user: UserId::parse("u", "u").unwrap(),
        status: if n % 2 == 0 { SessionStatus::Online } else { SessionStatus::Offline },
        os: "iOS".into(),
        time: n,
        client_ip: "127.0.0.1:1".into(),
        session_id: format!("s{n}"),
    };
    o.push(&r1, &[event(1), event(2)]).await.unwrap();
    o.push(&r1, &[event(3)]).await.unwrap();
    o.push(&r2, &[event(9)]).await.unwrap();
    let queued = o.peek(&r1, 10).await.unwrap();
    assert_eq!(queued.iter().map(|(_, e)| e.time).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(queued.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    o.remove(&r1, queued[1].0).await.unwrap();
    assert_eq!(o.peek(&r1, 10).await.unwrap().iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), vec![event(3)]);
    assert_eq!(o.peek(&r2, 10).await.unwrap().len(), 1, "receivers are independent");
    o.push(&r1, &[event(4)]).await.unwrap();
    let ids: Vec<u64> = o.peek(&r1, 10).await.unwrap().iter().map(|(id, _)| *id).collect();
    assert!(ids[1] > queued[2].0, "ids are not reused after a removal");
}
