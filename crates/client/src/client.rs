//! The request side: a cheap handle over the background driver.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use natter_proto::v1;
use natter_proto::v1::client_frame::Body as Req;
use natter_proto::v1::response::Result as Res;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::driver::{Command, Driver, Reply};
use crate::events::{Events, Shared};
use crate::{ClientError, ClientOptions, conn};

/// A connected client. Clones share one connection; the connection stays up
/// while any clone or the [`Events`] stream is alive, or until [`Client::close`].
#[derive(Debug, Clone)]
pub struct Client {
    cmds: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    request_timeout: Duration,
}

impl Client {
    /// Connect and wait for the server's `hello`. The first event on the
    /// returned stream is [`crate::ClientEvent::Connected`]. A failure here is
    /// returned as is, without retrying; reconnects only follow a connection
    /// that was established.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let (socket, hello) = conn::open(&options, options.cursor).await?;
        let shared = Arc::new(Shared::new(options.cursor.unwrap_or(0), hello.clone()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let request_timeout = options.request_timeout;
        let span = tracing::info_span!("natter_client", user_id = %hello.user_id);
        let driver = Driver::new(options, shared.clone(), cmd_rx, event_tx);
        // Detached on purpose: the task stops by itself once no handle and no
        // event stream can observe it (see the driver module docs).
        tokio::spawn(driver.run(socket, hello).instrument(span));
        Ok((Client { cmds: cmd_tx, shared: shared.clone(), request_timeout }, Events::new(event_rx, shared)))
    }

    /// The resume position: the seq of the last event the application took
    /// from [`Events`] (the `cursor` option until then). Pass it as
    /// `ClientOptions::cursor` to a later client to continue without gaps or
    /// repeats.
    pub fn cursor(&self) -> u64 {
        self.shared.consumed.load(Ordering::Acquire)
    }

    /// The server's `hello` of the current (or last) connection.
    pub fn hello(&self) -> v1::Hello {
        self.shared.hello()
    }

    /// The user this client is authenticated as.
    pub fn user_id(&self) -> String {
        self.shared.hello().user_id
    }

    /// True once the client has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed()
    }

    /// Acknowledge what was consumed, close the connection and stop. Events
    /// already queued stay readable; then the stream ends. Requests still
    /// waiting fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        if self.cmds.send(Command::Close).is_ok() {
            // Resolves when the driver drops its end, i.e. has stopped.
            self.cmds.closed().await;
        }
    }

    /// Send one request and wait for its response, at most `request_timeout`
    /// (which includes waiting for a reconnect). An `error` result becomes
    /// [`ClientError::Server`].
    pub async fn request(&self, body: Req) -> Result<Res, ClientError> {
        let (reply, rx) = oneshot::channel();
        let reply = Reply::Caller(reply);
        self.cmds.send(Command::Request { body, reply }).map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            // The driver stopped without answering.
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Send a message; an empty `client_msg_id` is filled with a unique one.
    /// Survives reconnects: the same client_msg_id is sent again and the
    /// server answers a repeat with the original id (`duplicate: true`).
    pub async fn send(&self, mut message: v1::SendMessage) -> Result<v1::SendResult, ClientError> {
        if message.client_msg_id.is_empty() {
            message.client_msg_id = new_client_msg_id();
        }
        match self.request(Req::Send(message)).await? {
            Res::Sent(sent) => Ok(sent),
            other => Err(unexpected("sent", &other)),
        }
    }

    pub async fn send_text(
        &self,
        to: impl Into<String>,
        chat_type: v1::ChatType,
        text: impl Into<String>,
    ) -> Result<v1::SendResult, ClientError> {
        self.send(v1::SendMessage {
            to: to.into(),
            chat_type: chat_type as i32,
            body: Some(v1::send_message::Body::Text(v1::TextBody { text: text.into() })),
            ..Default::default()
        })
        .await
    }

    pub async fn create_group(&self, group: v1::CreateGroup) -> Result<v1::Group, ClientError> {
        match self.request(Req::CreateGroup(group)).await? {
            Res::Group(g) => Ok(g),
            other => Err(unexpected("group", &other)),
        }
    }

    pub async fn get_group(&self, group_id: impl Into<String>) -> Result<v1::Group, ClientError> {
        match self.request(Req::GetGroup(v1::GetGroup { group_id: group_id.into() })).await? {
            Res::Group(g) => Ok(g),
            other => Err(unexpected("group", &other)),
        }
    }

    pub async fn add_members<S: Into<String>>(
        &self,
        group_id: impl Into<String>,
        members: impl IntoIterator<Item = S>,
    ) -> Result<(), ClientError> {
        let body = v1::AddMembers { group_id: group_id.into(), members: members.into_iter().map(Into::into).collect() };
        done(self.request(Req::AddMembers(body)).await?)
    }

    pub async fn remove_members<S: Into<String>>(
        &self,
        group_id: impl Into<String>,
        members: impl IntoIterator<Item = S>,
    ) -> Result<(), ClientError> {
        let body =
            v1::RemoveMembers { group_id: group_id.into(), members: members.into_iter().map(Into::into).collect() };
        done(self.request(Req::RemoveMembers(body)).await?)
    }

    pub async fn set_admin(
        &self,
        group_id: impl Into<String>,
        user_id: impl Into<String>,
        admin: bool,
    ) -> Result<(), ClientError> {
        let body = v1::SetAdmin { group_id: group_id.into(), user_id: user_id.into(), admin };
        done(self.request(Req::SetAdmin(body)).await?)
    }

    pub async fn leave_group(&self, group_id: impl Into<String>) -> Result<(), ClientError> {
        done(self.request(Req::LeaveGroup(v1::LeaveGroup { group_id: group_id.into() })).await?)
    }

    pub async fn dissolve_group(&self, group_id: impl Into<String>) -> Result<(), ClientError> {
        done(self.request(Req::DissolveGroup(v1::DissolveGroup { group_id: group_id.into() })).await?)
    }

    /// One page of members; pass the page's `next_cursor` for the next one
    /// (empty on the last page). `page_size` 0 means the server default.
    pub async fn list_members(
        &self,
        group_id: impl Into<String>,
        cursor: impl Into<String>,
        page_size: u32,
    ) -> Result<v1::MemberPage, ClientError> {
        let body = v1::ListMembers { group_id: group_id.into(), cursor: cursor.into(), page_size };
        match self.request(Req::ListMembers(body)).await? {
            Res::Members(page) => Ok(page),
            other => Err(unexpected("members", &other)),
        }
    }

    /// P1: follow these users' presence for `expiry_secs`; returns their
    /// current presence.
    pub async fn subscribe_presence<S: Into<String>>(
        &self,
        usernames: impl IntoIterator<Item = S>,
        expiry_secs: u64,
    ) -> Result<Vec<v1::PresenceStatus>, ClientError> {
        let body =
            v1::SubscribePresence { usernames: usernames.into_iter().map(Into::into).collect(), expiry: expiry_secs };
        presences(self.request(Req::SubscribePresence(body)).await?)
    }

    /// P5
    pub async fn unsubscribe_presence<S: Into<String>>(
        &self,
        usernames: impl IntoIterator<Item = S>,
    ) -> Result<(), ClientError> {
        let body = v1::UnsubscribePresence { usernames: usernames.into_iter().map(Into::into).collect() };
        done(self.request(Req::UnsubscribePresence(body)).await?)
    }

    /// P3: set my custom status; returns my presence.
    pub async fn publish_presence(&self, description: impl Into<String>) -> Result<v1::PresenceStatus, ClientError> {
        let body = v1::PublishPresence { description: description.into() };
        presences(self.request(Req::PublishPresence(body)).await?)?
            .pop()
            .ok_or_else(|| ClientError::Protocol("publish_presence answered no presence".into()))
    }

    /// P6: my subscriptions, `page_num` from 0.
    pub async fn get_subscribed_presence_list(
        &self,
        page_num: u32,
        page_size: u32,
    ) -> Result<v1::SubscriptionPage, ClientError> {
        let body = v1::GetSubscribedPresenceList { page_num, page_size };
        match self.request(Req::GetSubscribedPresenceList(body)).await? {
            Res::Subscriptions(page) => Ok(page),
            other => Err(unexpected("subscriptions", &other)),
        }
    }

    /// P7: current presence without subscribing.
    pub async fn get_presence_status<S: Into<String>>(
        &self,
        usernames: impl IntoIterator<Item = S>,
    ) -> Result<Vec<v1::PresenceStatus>, ClientError> {
        let body = v1::GetPresenceStatus { usernames: usernames.into_iter().map(Into::into).collect() };
        presences(self.request(Req::GetPresenceStatus(body)).await?)
    }

    /// Logs this device out (webhook status "2"); the session then ends and
    /// the client does not reconnect.
    pub async fn logout(&self) -> Result<(), ClientError> {
        done(self.request(Req::Logout(v1::Logout {})).await?)
    }

    pub async fn list_my_groups(&self) -> Result<Vec<v1::Group>, ClientError> {
        match self.request(Req::ListMyGroups(v1::ListMyGroups {})).await? {
            Res::Groups(list) => Ok(list.groups),
            other => Err(unexpected("groups", &other)),
        }
    }

    /// C1: my conversations, newest activity first; `cursor` empty for the
    /// first page, then the page's `cursor` (empty on the last page).
    pub async fn get_server_conversations(
        &self,
        page_size: u32,
        cursor: impl Into<String>,
    ) -> Result<v1::ConversationPage, ClientError> {
        let body = v1::GetServerConversations { page_size, cursor: cursor.into() };
        conversations(self.request(Req::GetServerConversations(body)).await?)
    }

    /// C3: my pinned conversations, newest pin first.
    pub async fn get_server_pinned_conversations(
        &self,
        page_size: u32,
        cursor: impl Into<String>,
    ) -> Result<v1::ConversationPage, ClientError> {
        let body = v1::GetServerPinnedConversations { page_size, cursor: cursor.into() };
        conversations(self.request(Req::GetServerPinnedConversations(body)).await?)
    }

    /// C4: my other devices get `pinnedConversation` / `unpinnedConversation`.
    pub async fn pin_conversation(
        &self,
        conversation_id: impl Into<String>,
        conversation_type: v1::ChatType,
        is_pinned: bool,
    ) -> Result<(), ClientError> {
        let body = v1::PinConversation {
            conversation_id: conversation_id.into(),
            conversation_type: conversation_type as i32,
            is_pinned,
        };
        done(self.request(Req::PinConversation(body)).await?)
    }

    /// C5: a page of one conversation's history.
    pub async fn get_history_messages(&self, query: v1::GetHistoryMessages) -> Result<v1::HistoryPage, ClientError> {
        match self.request(Req::GetHistoryMessages(query)).await? {
            Res::History(page) => Ok(page),
            other => Err(unexpected("history", &other)),
        }
    }

    /// C6: deletes messages for me only (by time or by at most 50 ids); my
    /// other devices get `deleteRoaming`.
    pub async fn remove_history_messages(&self, removal: v1::RemoveHistoryMessages) -> Result<(), ClientError> {
        done(self.request(Req::RemoveHistoryMessages(removal)).await?)
    }

    /// C7: removes the conversation from my list, with `delete_roam` also my
    /// server-side history of it.
    pub async fn delete_conversation(
        &self,
        channel: impl Into<String>,
        chat_type: v1::ChatType,
        delete_roam: bool,
    ) -> Result<(), ClientError> {
        let body = v1::DeleteConversation { channel: channel.into(), chat_type: chat_type as i32, delete_roam };
        done(self.request(Req::DeleteConversation(body)).await?)
    }

    /// The conversation read receipt: the conversation's unread count
    /// becomes 0, and my devices get `onChannelMessage`.
    pub async fn send_channel_ack(&self, to: impl Into<String>, chat_type: v1::ChatType) -> Result<(), ClientError> {
        let body = v1::SendChannelAck { to: to.into(), chat_type: chat_type as i32 };
        done(self.request(Req::ChannelAck(body)).await?)
    }

    /// R2/R4/R5: a delivery or read receipt for message `id` of the
    /// conversation with `to` (its sender, or the group). With
    /// [`ClientOptions::delivery_receipts`] the SDK sends delivery receipts
    /// by itself.
    pub async fn send_receipt(
        &self,
        kind: v1::ReceiptType,
        to: impl Into<String>,
        chat_type: v1::ChatType,
        id: u64,
    ) -> Result<(), ClientError> {
        let body = v1::SendReceipt { r#type: kind as i32, to: to.into(), chat_type: chat_type as i32, id };
        done(self.request(Req::Receipt(body)).await?)
    }

    /// R4/R5: "I read message `id`" (the seed's `type: "read"` message).
    pub async fn send_read_ack(
        &self,
        to: impl Into<String>,
        chat_type: v1::ChatType,
        id: u64,
    ) -> Result<(), ClientError> {
        self.send_receipt(v1::ReceiptType::Read, to, chat_type, id).await
    }

    /// R8: takes back message `mid` of the conversation with `to`; every
    /// recipient's devices get `onRecallMessage`.
    pub async fn recall_message(
        &self,
        mid: u64,
        to: impl Into<String>,
        chat_type: v1::ChatType,
    ) -> Result<(), ClientError> {
        let body = v1::RecallMessage { mid, to: to.into(), chat_type: chat_type as i32 };
        done(self.request(Req::RecallMessage(body)).await?)
    }

    /// R7: who read group message `msg_id` (its sender, or the group's
    /// owner and admins), page by page.
    pub async fn get_group_msg_read_user(
        &self,
        query: v1::GetGroupMsgReadUser,
    ) -> Result<v1::GroupReadUsers, ClientError> {
        match self.request(Req::GetGroupMsgReadUser(query)).await? {
            Res::GroupReadUsers(page) => Ok(page),
            other => Err(unexpected("group_read_users", &other)),
        }
    }

    pub async fn ping(&self) -> Result<v1::Pong, ClientError> {
        match self.request(Req::Ping(v1::Ping { client_time: natter_types::now_ms() })).await? {
            Res::Pong(pong) => Ok(pong),
            other => Err(unexpected("pong", &other)),
        }
    }
}

/// A client_msg_id unique across clients and processes: a random per-process
/// prefix and a counter (well under the server's 64-byte limit).
pub fn new_client_msg_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(crate::random_u64);
    format!("{prefix:016x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Group mutations answer `ok` (or the updated group); either means done.
fn done(result: Res) -> Result<(), ClientError> {
    match result {
        Res::Ok(_) | Res::Group(_) => Ok(()),
        other => Err(unexpected("ok", &other)),
    }
}

fn presences(result: Res) -> Result<Vec<v1::PresenceStatus>, ClientError> {
    match result {
        Res::Presences(list) => Ok(list.presences),
        other => Err(unexpected("presences", &other)),
    }
}

fn conversations(result: Res) -> Result<v1::ConversationPage, ClientError> {
    match result {
        Res::Conversations(page) => Ok(page),
        other => Err(unexpected("conversations", &other)),
    }
}

fn unexpected(wanted: &str, got: &Res) -> ClientError {
    let got = match got {
        Res::Error(_) => "error",
        Res::Pong(_) => "pong",
        Res::Sent(_) => "sent",
        Res::Group(_) => "group",
        Res::Members(_) => "members",
        Res::Groups(_) => "groups",
        Res::Ok(_) => "ok",
        Res::Presences(_) => "presences",
        Res::Subscriptions(_) => "subscriptions",
        Res::Conversations(_) => "conversations",
        Res::History(_) => "history",
        Res::GroupReadUsers(_) => "group_read_users",
    };
    ClientError::Protocol(format!("expected a {wanted} result, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_unique_and_short() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_client_msg_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() <= 64 && id.is_ascii()));
    }

    #[test]
    fn group_mutations_accept_ok_or_group() {
        assert!(done(Res::Ok(v1::Empty {})).is_ok());
        assert!(done(Res::Group(v1::Group::default())).is_ok());
        assert!(matches!(done(Res::Pong(v1::Pong::default())), Err(ClientError::Protocol(_))));
    }
}
