//! Groups and their members (`GroupStore`).

use super::*;

pub async fn groups_lifecycle(stores: &Stores) {
    let g = &stores.groups;
    let (owner, x, y, z) = (user("o"), user("x"), user("y"), user("z"));
    let group = new_group(&owner, 10);
    // Read before every change, so that a backend keeping member lists must
    // notice each change (create, add, remove, delete).
    assert!(g.member_ids(&group.id).await.unwrap().is_empty(), "no such group yet");
    g.create_group(&group, &[member(&owner, GroupRole::Owner), member(&x, GroupRole::Member)]).await.unwrap();
    let mut ids = g.member_ids(&group.id).await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![owner.clone(), x.clone()]);
    let err = g.create_group(&group, &[member(&owner, GroupRole::Owner)]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);

    let stored = g.get_group(&group.id).await.unwrap().expect("group exists");
    assert_eq!(stored.member_count, 2);
    assert_eq!(stored.owner, owner);

    let added = g
        .add_members(
            &group.id,
            &[member(&x, GroupRole::Member), member(&y, GroupRole::Member), member(&z, GroupRole::Member)],
        )
        .await
        .unwrap();
    assert_eq!(added.added, vec![y.clone(), z.clone()], "existing members are skipped");
    assert_eq!(added.member_count, 4);

    g.set_role(&group.id, &y, GroupRole::Admin).await.unwrap();
    assert_eq!(g.get_member(&group.id, &y).await.unwrap().map(|m| m.role), Some(GroupRole::Admin));
    let err = g.set_role(&group.id, &user("nobody"), GroupRole::Admin).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);

    let mut everyone = vec![owner.clone(), x.clone(), y.clone(), z.clone()];
    everyone.sort();
    let mut ids = g.member_ids(&group.id).await.unwrap();
    ids.sort();
    assert_eq!(ids, everyone);

    let first = g.list_members(&group.id, None, 3).await.unwrap();
    assert_eq!(first.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>(), everyone[..3].to_vec());
    let rest = g.list_members(&group.id, Some(&first[2].user_id), 3).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>(), everyone[3..].to_vec());

    assert_eq!(g.user_groups(&z).await.unwrap(), vec![group.id.clone()]);
    let removed = g.remove_members(&group.id, &[z.clone(), user("nobody")]).await.unwrap();
    assert_eq!(removed, vec![z.clone()]);
    assert!(g.user_groups(&z).await.unwrap().is_empty());
    assert_eq!(g.get_group(&group.id).await.unwrap().map(|g| g.member_count), Some(3));
    assert!(g.get_member(&group.id, &z).await.unwrap().is_none());
    let mut ids = g.member_ids(&group.id).await.unwrap();
    ids.sort();
    assert_eq!(ids, everyone[..3].to_vec(), "{z} removed");

    g.delete_group(&group.id).await.unwrap();
    assert!(g.get_group(&group.id).await.unwrap().is_none());
    assert!(g.user_groups(&x).await.unwrap().is_empty());
    assert!(g.member_ids(&group.id).await.unwrap().is_empty());
    assert_eq!(g.delete_group(&group.id).await.unwrap_err().code, ErrorCode::NotFound);
}

pub async fn groups_size_limit_is_all_or_nothing(stores: &Stores) {
    let g = &stores.groups;
    let owner = user("o");
    let group = new_group(&owner, 3);
    g.create_group(&group, &[member(&owner, GroupRole::Owner)]).await.unwrap();
    let three = [user("p"), user("q"), user("r")].map(|u| member(&u, GroupRole::Member));
    let err = g.add_members(&group.id, &three).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitExceeded);
    assert_eq!(err.field.as_deref(), Some("max_members"));
    assert_eq!(g.member_ids(&group.id).await.unwrap(), vec![owner.clone()], "nothing half-written");
    assert_eq!(g.get_group(&group.id).await.unwrap().map(|g| g.member_count), Some(1));
    g.add_members(&group.id, &three[..2]).await.unwrap();
    assert_eq!(g.get_group(&group.id).await.unwrap().map(|g| g.member_count), Some(3));
}
