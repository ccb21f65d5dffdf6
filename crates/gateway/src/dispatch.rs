//! Turns a client request into a call on a service API and its answer into
//! a response: a thin map, the conversions are `natter_proto::api`'s.
//! Validation errors name the full field path (`send.to`,
//! `add_members.members`).

use natter_proto::api as wire;
use natter_proto::v1::{self, client_frame::Body, response::Result as Reply};
use natter_types::{Actor, Error, Result, UserId, now_ms};

use crate::Shared;

/// Answers one request of `user`. Never panics; every failure is an `Error`.
pub(crate) async fn handle(shared: &Shared, user: &UserId, body: Body) -> Result<Reply> {
    let messages = &shared.deps.messages;
    let presence = &shared.deps.presence;
    let conversations = &shared.deps.conversations;
    let me = Actor::User(user.clone());
    match body {
        Body::Ping(p) => Ok(Reply::Pong(v1::Pong { client_time: p.client_time, server_time: now_ms() })),
        Body::Ack(_) => Err(Error::bad_request("ack", "ack is one-way and handled by the session")),
        Body::Logout(_) => Err(Error::bad_request("logout", "is handled by the session")),
        Body::Send(s) => {
            let in_send = |e: Error| e.within("send");
            let new = natter_proto::new_message(s, &shared.options.limits).map_err(in_send)?;
            Ok(Reply::Sent((&messages.send(me, new).await.map_err(in_send)?).into()))
        }
        Body::CreateGroup(g) => {
            let within = |e: Error| e.within("create_group");
            let new = wire::new_group(g).map_err(within)?;
            Ok(Reply::Group((&messages.create_group(user, new).await.map_err(within)?).into()))
        }
        Body::AddMembers(r) => {
            let within = |e: Error| e.within("add_members");
            let (group, members) = wire::group_and_members(&r.group_id, &r.members).map_err(within)?;
            Ok(Reply::Group((&messages.add_members(&me, &group, members).await.map_err(within)?).into()))
        }
        Body::RemoveMembers(r) => {
            let within = |e: Error| e.within("remove_members");
            let (group, members) = wire::group_and_members(&r.group_id, &r.members).map_err(within)?;
            Ok(Reply::Group((&messages.remove_members(&me, &group, members).await.map_err(within)?).into()))
        }
        Body::SetAdmin(r) => {
            let within = |e: Error| e.within("set_admin");
            let group = wire::group_id(&r.group_id, "group_id").map_err(within)?;
            let target = wire::user(&r.user_id, "user_id").map_err(within)?;
            Ok(Reply::Group((&messages.set_admin(&me, &group, &target, r.admin).await.map_err(within)?).into()))
        }
        Body::LeaveGroup(r) => {
            let group = wire::group_id(&r.group_id, "group_id").map_err(|e| e.within("leave_group"))?;
            messages.leave_group(user, &group).await?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::DissolveGroup(r) => {
            let group = wire::group_id(&r.group_id, "group_id").map_err(|e| e.within("dissolve_group"))?;
            messages.dissolve_group(&me, &group).await?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::GetGroup(r) => {
            let group = wire::group_id(&r.group_id, "group_id").map_err(|e| e.within("get_group"))?;
            Ok(Reply::Group((&messages.get_group(&me, &group).await?).into()))
        }
        Body::ListMembers(r) => {
            let within = |e: Error| e.within("list_members");
            let group = wire::group_id(&r.group_id, "group_id").map_err(within)?;
            let (after, limit) = wire::member_page(&r.cursor, r.page_size).map_err(within)?;
            Ok(Reply::Members((&messages.list_members(&me, &group, after, limit).await?).into()))
        }
        Body::ListMyGroups(_) => Ok(Reply::Groups((&messages.user_groups(user).await?).into())),
        Body::SubscribePresence(r) => {
            let within = |e: Error| e.within("subscribe_presence");
            let targets = wire::users(&r.usernames, "usernames").map_err(within)?;
            Ok(Reply::Presences((&presence.subscribe(user, targets, r.expiry).await.map_err(within)?).into()))
        }
        Body::UnsubscribePresence(r) => {
            let within = |e: Error| e.within("unsubscribe_presence");
            let targets = wire::users(&r.usernames, "usernames").map_err(within)?;
            presence.unsubscribe(user, targets).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::PublishPresence(r) => {
            let mine = presence.publish(user, r.description).await.map_err(|e| e.within("publish_presence"))?;
            Ok(Reply::Presences((&vec![mine]).into()))
        }
        Body::GetSubscribedPresenceList(r) => {
            let within = |e: Error| e.within("get_subscribed_presence_list");
            Ok(Reply::Subscriptions(
                (&presence.subscriptions(user, r.page_num, r.page_size).await.map_err(within)?).into(),
            ))
        }
        Body::GetServerConversations(r) => {
            let within = |e: Error| e.within("get_server_conversations");
            let query = wire::list_query(r.page_size, r.cursor, false).map_err(within)?;
            Ok(Reply::Conversations((&conversations.conversations(user, query).await.map_err(within)?).into()))
        }
        Body::GetServerPinnedConversations(r) => {
            let within = |e: Error| e.within("get_server_pinned_conversations");
            let query = wire::list_query(r.page_size, r.cursor, true).map_err(within)?;
            Ok(Reply::Conversations((&conversations.conversations(user, query).await.map_err(within)?).into()))
        }
        Body::PinConversation(r) => {
            let within = |e: Error| e.within("pin_conversation");
            let (conversation, pinned) = wire::pin(&r).map_err(within)?;
            conversations.pin(user, &conversation, pinned).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::GetHistoryMessages(r) => {
            let within = |e: Error| e.within("get_history_messages");
            let (conversation, query) = wire::history_query(&r).map_err(within)?;
            Ok(Reply::History((&conversations.history(user, &conversation, query).await.map_err(within)?).into()))
        }
        Body::RemoveHistoryMessages(r) => {
            let within = |e: Error| e.within("remove_history_messages");
            let (conversation, removal) = wire::removal(&r).map_err(within)?;
            conversations.remove_messages(user, &conversation, removal).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::DeleteConversation(r) => {
            let within = |e: Error| e.within("delete_conversation");
            let (conversation, delete_roam) = wire::deletion(&r).map_err(within)?;
            conversations.delete_conversation(user, &conversation, delete_roam).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::ChannelAck(r) => {
            let within = |e: Error| e.within("channel_ack");
            let conversation = wire::channel_ack(&r).map_err(within)?;
            conversations.mark_read(user, &conversation).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::Receipt(r) => {
            let within = |e: Error| e.within("receipt");
            messages.receipt(user, wire::receipt(&r).map_err(within)?).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::RecallMessage(r) => {
            let within = |e: Error| e.within("recall_message");
            messages.recall(&me, wire::recall(&r, "").map_err(within)?).await.map_err(within)?;
            Ok(Reply::Ok(v1::Empty {}))
        }
        Body::GetGroupMsgReadUser(r) => {
            let within = |e: Error| e.within("get_group_msg_read_user");
            let query = wire::reader_query(&r).map_err(within)?;
            Ok(Reply::GroupReadUsers((&messages.group_read_users(&me, query).await.map_err(within)?).into()))
        }
        Body::GetPresenceStatus(r) => {
            let within = |e: Error| e.within("get_presence_status");
            let targets = wire::users(&r.usernames, "usernames").map_err(within)?;
            Ok(Reply::Presences((&presence.query(targets).await.map_err(within)?).into()))
        }
    }
}
