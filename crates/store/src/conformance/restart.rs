//! What survives a restart of the backend.

use super::*;

/// What one instance writes, the same data opened again reads, and its log
/// goes on from where it was.
pub async fn sample_survives_a_restart(backend: impl Backend) {
    let sample = write_sample(&backend.stores()).await;
    let backend = backend.reopen().await;
    check_sample(&backend.stores(), &sample).await;
}

/// What [`write_sample`] wrote, for [`check_sample`] after a reopen.
#[derive(Debug)]
pub struct Sample {
    message: Message,
    group: Group,
    user: UserId,
    head: u64,
}

/// Writes one of everything, for a restart test.
pub async fn write_sample(stores: &Stores) -> Sample {
    let (a, b) = (user("a"), user("b"));
    let message = text_message(&a, &b, "durable", "kept across restarts");
    stores.messages.insert_message(&message).await.unwrap();
    let group = new_group(&a, 5);
    stores.groups.create_group(&group, &[member(&a, GroupRole::Owner), member(&b, GroupRole::Member)]).await.unwrap();
    for n in 0..3 {
        stores.log.append(std::slice::from_ref(&b), &change(n)).await.unwrap();
    }
    Sample { message, group, user: b, head: 3 }
}

/// Checks what [`write_sample`] wrote is all there and the log continues.
pub async fn check_sample(stores: &Stores, sample: &Sample) {
    let conv = sample.message.conversation();
    assert_eq!(stores.messages.get_message(&conv, sample.message.id).await.unwrap().as_ref(), Some(&sample.message));
    match stores.messages.insert_message(&sample.message).await.unwrap() {
        Inserted::Duplicate { message, .. } => assert_eq!(message, sample.message),
        Inserted::New => panic!("idempotency record lost across restart"),
    }
    let group = stores.groups.get_group(&sample.group.id).await.unwrap().expect("group kept");
    assert_eq!(group.member_count, 2);
    assert_eq!(stores.log.bounds(&sample.user).await.unwrap().0, sample.head);
    let next = stores.log.append(std::slice::from_ref(&sample.user), &change(9)).await.unwrap();
    assert_eq!(next[0].seq, sample.head + 1, "seqs continue after a restart");
}
