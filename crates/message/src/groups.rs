//! Group management: who may do what, and the change events.
//!
//! Rules: the owner and admins add and remove members (admins only plain
//! members); only the owner makes and unmakes admins and dissolves; the owner
//! cannot leave (dissolve instead); the system (backend API) may do anything.
//! Every change is stored first, then announced to every member — removed
//! and leaving members included — through their durable logs.

use natter_types::{
    Actor, Error, Group, GroupChange, GroupChangeKind, GroupId, GroupMember, GroupRole, LogEvent, NewGroup, Result,
    UserId, now_ms,
};

use crate::MessageService;

impl MessageService {
    /// The actor's role in the group; FORBIDDEN for non-members, NOT_FOUND
    /// for a group that does not exist. `None` for the system, which acts
    /// with every right.
    pub(crate) async fn require_member(&self, actor: &Actor, group: &GroupId) -> Result<Option<GroupRole>> {
        let Actor::User(user) = actor else {
            self.require_group(group).await?;
            return Ok(None);
        };
        match self.stores.groups.get_member(group, user).await? {
            Some(member) => Ok(Some(member.role)),
            None => {
                // NOT_FOUND for a missing group, FORBIDDEN for an outsider.
                self.require_group(group).await?;
                Err(Error::forbidden(format!("{user} is not a member of group {group}")))
            }
        }
    }

    async fn require_manager(&self, actor: &Actor, group: &GroupId, what: &str) -> Result<Option<GroupRole>> {
        let role = self.require_member(actor, group).await?;
        if role.is_some_and(|r| !r.can_manage()) {
            return Err(Error::forbidden(format!("only the owner or an admin of group {group} may {what}")));
        }
        Ok(role)
    }

    fn check_member_count(&self, members: &[UserId], field: &str) -> Result<()> {
        let max = self.limits.max_members_per_request;
        if members.len() > max {
            return Err(Error::limit(field, format!("has {} user ids, the limit per request is {max}", members.len())));
        }
        Ok(())
    }

    async fn announce(&self, recipients: &[UserId], change: GroupChange) -> Result<()> {
        self.fan_out(recipients, LogEvent::GroupChange(change)).await
    }

    fn change(&self, kind: GroupChangeKind, group: &Group, actor: &Actor, members: Vec<UserId>) -> GroupChange {
        GroupChange {
            kind,
            group_id: group.id.clone(),
            group_name: group.name.clone(),
            operator: actor.user_id(),
            members,
            time: now_ms(),
        }
    }

    pub(crate) async fn create_group_impl(&self, owner: &UserId, new: NewGroup) -> Result<Group> {
        let limits = &self.limits;
        if new.name.trim().is_empty() {
            return Err(Error::bad_request("name", "a group needs a name"));
        }
        if new.name.len() > limits.max_group_name_len {
            return Err(Error::limit(
                "name",
                format!("is {} bytes, the limit is {}", new.name.len(), limits.max_group_name_len),
            ));
        }
        if new.description.len() > limits.max_group_description_len {
            return Err(Error::limit(
                "description",
                format!("is {} bytes, the limit is {}", new.description.len(), limits.max_group_description_len),
            ));
        }
        self.check_member_count(&new.members, "members")?;
        let max_members = match new.max_members {
            0 => limits.max_group_members,
            n if n > limits.max_group_members => {
                return Err(Error::limit(
                    "max_members",
                    format!("is {n}, the server allows at most {}", limits.max_group_members),
                ));
            }
            n => n,
        };
        let now = now_ms();
        let mut members = vec![GroupMember { user_id: owner.clone(), role: GroupRole::Owner, joined_at: now }];
        for user in new.members {
            if !members.iter().any(|m| m.user_id == user) {
                members.push(GroupMember { user_id: user, role: GroupRole::Member, joined_at: now });
            }
        }
        if members.len() > max_members as usize {
            return Err(Error::limit(
                "members",
                format!("{} members (with the owner) exceed the group's maximum of {max_members}", members.len()),
            ));
        }
        let group = Group {
            id: GroupId::from_id(self.ids.next().0),
            name: new.name,
            description: new.description,
            owner: owner.clone(),
            created_at: now,
            member_count: members.len() as u32,
            max_members,
        };
        self.stores.groups.create_group(&group, &members).await?;
        let everyone: Vec<UserId> = members.into_iter().map(|m| m.user_id).collect();
        let change = self.change(GroupChangeKind::Created, &group, &Actor::User(owner.clone()), everyone.clone());
        self.announce(&everyone, change).await?;
        Ok(group)
    }

    pub(crate) async fn add_members_impl(&self, actor: &Actor, id: &GroupId, users: Vec<UserId>) -> Result<Group> {
        self.check_member_count(&users, "members")?;
        if users.is_empty() {
            return Err(Error::bad_request("members", "name at least one user to add"));
        }
        self.require_manager(actor, id, "add members").await?;
        let now = now_ms();
        let members: Vec<GroupMember> =
            users.into_iter().map(|user_id| GroupMember { user_id, role: GroupRole::Member, joined_at: now }).collect();
        let added = self.stores.groups.add_members(id, &members).await?;
        let group = self.require_group(id).await?;
        if !added.added.is_empty() {
            let everyone = self.stores.groups.member_ids(id).await?;
            let change = self.change(GroupChangeKind::MembersAdded, &group, actor, added.added);
            self.announce(&everyone, change).await?;
        }
        Ok(group)
    }

    pub(crate) async fn remove_members_impl(&self, actor: &Actor, id: &GroupId, users: Vec<UserId>) -> Result<Group> {
        self.check_member_count(&users, "members")?;
        let role = self.require_manager(actor, id, "remove members").await?;
        for user in &users {
            let Some(member) = self.stores.groups.get_member(id, user).await? else {
                continue;
            };
            if member.role == GroupRole::Owner {
                return Err(Error::forbidden(format!("{user} owns group {id} and cannot be removed")));
            }
            if role == Some(GroupRole::Admin) && member.role == GroupRole::Admin {
                return Err(Error::forbidden(format!("only the owner may remove admin {user}")));
            }
        }
        let before = self.stores.groups.member_ids(id).await?;
        let removed = self.stores.groups.remove_members(id, &users).await?;
        let group = self.require_group(id).await?;
        if !removed.is_empty() {
            let change = self.change(GroupChangeKind::MembersRemoved, &group, actor, removed);
            self.announce(&before, change).await?;
        }
        Ok(group)
    }

    pub(crate) async fn set_admin_impl(
        &self,
        actor: &Actor,
        id: &GroupId,
        user: &UserId,
        admin: bool,
    ) -> Result<Group> {
        let role = self.require_member(actor, id).await?;
        if role.is_some_and(|r| r != GroupRole::Owner) {
            return Err(Error::forbidden(format!("only the owner of group {id} may change admins")));
        }
        let target = self
            .stores
            .groups
            .get_member(id, user)
            .await?
            .ok_or_else(|| Error::not_found(format!("{user} is not a member of group {id}")))?;
        if target.role == GroupRole::Owner {
            return Err(Error::bad_request("user_id", "the owner's role cannot be changed"));
        }
        let role = if admin { GroupRole::Admin } else { GroupRole::Member };
        let group = self.require_group(id).await?;
        if target.role != role {
            self.stores.groups.set_role(id, user, role).await?;
            let kind = if admin { GroupChangeKind::AdminAdded } else { GroupChangeKind::AdminRemoved };
            let everyone = self.stores.groups.member_ids(id).await?;
            self.announce(&everyone, self.change(kind, &group, actor, vec![user.clone()])).await?;
        }
        Ok(group)
    }

    pub(crate) async fn leave_group_impl(&self, user: &UserId, id: &GroupId) -> Result<()> {
        let actor = Actor::User(user.clone());
        if self.require_member(&actor, id).await? == Some(GroupRole::Owner) {
            return Err(Error::forbidden(format!("the owner cannot leave group {id}; dissolve it instead")));
        }
        let before = self.stores.groups.member_ids(id).await?;
        self.stores.groups.remove_members(id, std::slice::from_ref(user)).await?;
        let group = self.require_group(id).await?;
        self.announce(&before, self.change(GroupChangeKind::MemberLeft, &group, &actor, vec![user.clone()])).await
    }

    pub(crate) async fn dissolve_group_impl(&self, actor: &Actor, id: &GroupId) -> Result<()> {
        let role = self.require_member(actor, id).await?;
        if role.is_some_and(|r| r != GroupRole::Owner) {
            return Err(Error::forbidden(format!("only the owner may dissolve group {id}")));
        }
        let group = self.require_group(id).await?;
        let everyone = self.stores.groups.member_ids(id).await?;
        // Announce first: if the delete then fails, a retry finds the group
        // and completes; the other order could leave members never told.
        self.announce(&everyone, self.change(GroupChangeKind::Destroyed, &group, actor, Vec::new())).await?;
        self.stores.groups.delete_group(id).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use futures::StreamExt;
    use natter_bus::{Bus, Live, local::LocalBus};
    use natter_runtime::Tasks;
    use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
    use natter_types::{ChatType, ErrorCode, Limits, MessageBody, NewMessage};

    use super::*;
    use natter_api::MessageApi;

    use crate::MessageOptions;

    fn user(name: &str) -> UserId {
        UserId::parse(name, "user").unwrap()
    }

    /// `storage` runs the store: it must outlive the service.
    fn service(dir: &std::path::Path, storage: &Tasks) -> (MessageService, LocalBus, natter_store::Stores) {
        let stores = EmbeddedStore::open(dir, EmbeddedOptions::default(), storage).unwrap().stores();
        let bus = LocalBus::new();
        let limits = Limits { max_group_members: 4, ..Limits::default() };
        let service = MessageService::new(
            MessageOptions { node_id: 1, limits, ..MessageOptions::default() },
            stores.clone(),
            Arc::new(bus.clone()),
        );
        (service, bus, stores)
    }

    fn text(to: &str, chat_type: ChatType, id: &str) -> NewMessage {
        NewMessage::validate(
            id.into(),
            Some(chat_type),
            to,
            Some(MessageBody::Text("hi".into())),
            BTreeMap::new(),
            &Limits::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn group_roles_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Tasks::new();
        let (svc, _, _) = service(dir.path(), &storage);
        let (owner, a, b, out) = (user("owner"), user("a"), user("b"), user("out"));
        let group = svc
            .create_group(&owner, NewGroup { name: "g".into(), members: vec![a.clone()], ..NewGroup::default() })
            .await
            .unwrap();
        assert_eq!(group.max_members, 4, "configured default");
        let member = Actor::User(a.clone());
        let err = svc.add_members(&member, &group.id, vec![b.clone()]).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        let err = svc.send(Actor::User(out.clone()), text(group.id.as_str(), ChatType::Group, "x")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        let err = svc.list_members(&Actor::User(out), &group.id, None, 10).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);

        let owner_actor = Actor::User(owner.clone());
        svc.set_admin(&owner_actor, &group.id, &a, true).await.unwrap();
        let g = svc.add_members(&member, &group.id, vec![b.clone()]).await.unwrap();
        assert_eq!(g.member_count, 3);
        let err = svc.add_members(&member, &group.id, vec![user("c"), user("d")]).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded, "max 4 members");
        let err = svc.remove_members(&member, &group.id, vec![owner.clone()]).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        let err = svc.leave_group(&owner, &group.id).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        svc.leave_group(&b, &group.id).await.unwrap();
        let err = svc.dissolve_group(&member, &group.id).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        svc.dissolve_group(&owner_actor, &group.id).await.unwrap();
        let err = svc.get_group(&owner_actor, &group.id).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(svc.user_groups(&a).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn send_is_idempotent_and_reaches_every_recipient_log_and_live() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Tasks::new();
        let (svc, bus, stores) = service(dir.path(), &storage);
        let (alice, bob) = (user("alice"), user("bob"));
        let mut live = bus.subscribe_user(&bob).await.unwrap();
        let first = svc.send(Actor::User(alice.clone()), text("bob", ChatType::Single, "c1")).await.unwrap();
        let again = svc.send(Actor::User(alice.clone()), text("bob", ChatType::Single, "c1")).await.unwrap();
        assert_eq!((again.id, again.timestamp, again.duplicate), (first.id, first.timestamp, true));
        for user in [&alice, &bob] {
            let page = stores.log.read(user, 0, 10).await.unwrap().unwrap();
            assert_eq!(page.events.len(), 1, "stored and fanned out once for {user}");
        }
        match live.next().await {
            Some(Live::Event(e)) => assert_eq!((e.seq, e.prev), (1, 0)),
            other => panic!("expected a live event, got {other:?}"),
        }
    }
}
