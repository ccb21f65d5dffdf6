//! Turns a client request into a call on the message service and its answer
//! into a response. Validation errors name the full field path
//! (`send.to`, `add_members.members`).

use std::collections::BTreeMap;

use natter_message::NewGroup;
use natter_proto::v1::{self, client_frame::Body, response::Result as Reply};
use natter_types::{Actor, Error, GroupId, NewMessage, Result, UserId, now_ms};

use crate::Shared;

fn users(raw: &[String], field: &str) -> Result<Vec<UserId>> {
    raw.iter().map(|u| UserId::parse(u, field)).collect()
}

/// Answers one request of `user`. Never panics; every failure is an `Error`.
pub(crate) async fn handle(shared: &Shared, user: &UserId, body: Body) -> Result<Reply> {
    let api = &shared.deps.messages;
    let presence = &shared.deps.presence;
    let me = Actor::User(user.clone());
    match body {
        Body::Ping(p) => Ok(Reply::Pong(v1::Pong { client_time: p.client_time, server_time: now_ms() })),
        Body::Ack(_) => Err(Error::bad_request("ack", "ack is one-way and handled by the session")),
        Body::Send(s) => {
            let new = NewMessage::validate(
                s.client_msg_id,
                natter_proto::chat_type(s.chat_type),
                &s.to,
                natter_proto::send_body(s.body),
                s.ext.into_iter().collect::<BTreeMap<_, _>>(),
                &shared.options.limits,
            )
            .map_err(|e| e.within("send"))?;
            let sent = api.send(me, new).await?;
            Ok(Reply::Sent(v1::SendResult {
                client_msg_id: sent.client_msg_id,
                server_msg_id: sent.id.0,
                timestamp: sent.timestamp,
                duplicate: sent.duplicate,
            }))
        }
        Body::CreateGroup(g) => {
            let members = users(&g.members, "members").map_err(|e| e.within("create_group"))?;
            let new = NewGroup { name: g.name, description: g.description, members, max_members: g.max_members };
            let group = api.create_group(user, new).await.map_err(|e| e.within("create_group"))?;
            Ok(Reply::Group((&group).into()))
        }
        Body::AddMembers(r) => {
            let (group, members) = group_and_members(&r.group_id, &r.members).map_err(|e| e.within("add_members"))?;
            let group = api.add_members(&me, &group, members).await.map_err(|e| e.within("add_members"))?;
            Ok(Reply::Group((&group).into()))
        }
        Body::RemoveMembers(r) => {
            let (group, members) =
                group_and_members(&r.group_id, &r.members).map_err(|e| e.within("remove_members"))?;
            let group = api.remove_members(&me, &group, members).await.map_err(|e| e.within("remove_members"))?;
            Ok(Reply::Group((&group).into()))
        }
        Body::SetAdmin(r) => {
            let group = GroupId::parse(&r.group_id, "group_id").map_err(|e| e.within("set_admin"))?;
            let target = UserId::parse(&r.user_id, "user_id").map_err(|e| e.within("set_admin"))?;
            let group = api.set_admin(&me, &group, &target, r.admin).await.map_err(|e| e.within("set_admin"))?;
            Ok(Reply::Group((&group).into()))
        }
        Body::LeaveGroup(r) => {
            let group = GroupId::parse(&r.group_id, "group_id").map_err(|e| e.within("leave_group"))?;
            api.leave_group(user, &group).await?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::DissolveGroup(r) => {
            let group = GroupId::parse(&r.group_id, "group_id").map_err(|e| e.within("dissolve_group"))?;
            api.dissolve_group(&me, &group).await?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::GetGroup(r) => {
            let group = GroupId::parse(&r.group_id, "group_id").map_err(|e| e.within("get_group"))?;
            Ok(Reply::Group((&api.get_group(&me, &group).await?).into()))
        }
        Body::ListMembers(r) => {
            let group = GroupId::parse(&r.group_id, "group_id").map_err(|e| e.within("list_members"))?;
            let (after, limit) = member_page(&r.cursor, r.page_size).map_err(|e| e.within("list_members"))?;
            let page = api.list_members(&me, &group, after, limit).await?;
            Ok(Reply::Members(member_page_to_wire(page)))
        }
        Body::SubscribePresence(r) => {
            let targets = users(&r.usernames, "usernames").map_err(|e| e.within("subscribe_presence"))?;
            let presences =
                presence.subscribe(user, targets, r.expiry).await.map_err(|e| e.within("subscribe_presence"))?;
            Ok(Reply::Presences(presence_list(&presences)))
        }
        Body::UnsubscribePresence(r) => {
            let targets = users(&r.usernames, "usernames").map_err(|e| e.within("unsubscribe_presence"))?;
            presence.unsubscribe(user, targets).await.map_err(|e| e.within("unsubscribe_presence"))?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::PublishPresence(r) => {
            let mine = presence.publish(user, r.description).await.map_err(|e| e.within("publish_presence"))?;
            Ok(Reply::Presences(presence_list(std::slice::from_ref(&mine))))
        }
        Body::GetSubscribedPresenceList(r) => {
            let page = presence
                .subscriptions(user, r.page_num, r.page_size)
                .await
                .map_err(|e| e.within("get_subscribed_presence_list"))?;
            Ok(Reply::Subscriptions(subscription_page_to_wire(&page)))
        }
        Body::GetPresenceStatus(r) => {
            let targets = users(&r.usernames, "usernames").map_err(|e| e.within("get_presence_status"))?;
            let presences = presence.query(targets).await.map_err(|e| e.within("get_presence_status"))?;
            Ok(Reply::Presences(presence_list(&presences)))
        }
        Body::Logout(_) => Err(Error::bad_request("logout", "is handled by the session")),
        Body::ListMyGroups(_) => {
            let groups = api.user_groups(user).await?;
            Ok(Reply::Groups(v1::GroupList { groups: groups.iter().map(Into::into).collect() }))
        }
    }
}

pub fn group_and_members(group: &str, members: &[String]) -> Result<(GroupId, Vec<UserId>)> {
    Ok((GroupId::parse(group, "group_id")?, users(members, "members")?))
}

/// Validates a member-page request: cursor is a user id (exclusive), page
/// size 1–1000 with 0 meaning 100.
pub fn member_page(cursor: &str, page_size: u32) -> Result<(Option<UserId>, usize)> {
    let after = if cursor.is_empty() { None } else { Some(UserId::parse(cursor, "cursor")?) };
    let limit = match page_size {
        0 => 100,
        n @ 1..=1000 => n as usize,
        n => {
            return Err(Error::limit("page_size", format!("is {n}, the limit is 1000")));
        }
    };
    Ok((after, limit))
}

pub fn member_page_to_wire(page: natter_message::MemberPage) -> v1::MemberPage {
    v1::MemberPage {
        members: page.members.iter().map(Into::into).collect(),
        next_cursor: page.next.map(|u| u.to_string()).unwrap_or_default(),
    }
}

pub fn presence_list(presences: &[natter_types::Presence]) -> v1::PresenceList {
    v1::PresenceList { presences: presences.iter().map(Into::into).collect() }
}

pub fn subscription_page_to_wire(page: &natter_presence::SubscriptionPage) -> v1::SubscriptionPage {
    v1::SubscriptionPage {
        subscriptions: page
            .subscriptions
            .iter()
            .map(|s| v1::PresenceSubscription { user_id: s.target.to_string(), expiry: s.expires_at })
            .collect(),
        total: page.total as u32,
    }
}
