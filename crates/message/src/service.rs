use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_bus::{Bus, SharedEvent};
use natter_runtime::Clock;
use natter_store::{Appended, Stored, Stores};
use natter_types::{
    Actor, ChatType, DEFAULT_RECALL_WINDOW, Error, ErrorCode, Group, GroupId, IdGenerator, Limits, LogEvent,
    MemberPage, Message, NewGroup, NewMessage, ReaderPage, ReaderQuery, RecallRequest, ReceiptRequest, Result,
    SendOutcome, UserId,
};

use crate::read_counts::ReadCounts;

use natter_api::MessageApi;

#[derive(Debug, Clone)]
pub struct MessageOptions {
    /// Distinguishes id generators of several message-service instances.
    pub node_id: u16,
    pub limits: Limits,
    /// R8: how long after its server timestamp a sender may recall a
    /// message (at most [`natter_types::MAX_RECALL_WINDOW`]).
    pub recall_window: Duration,
}

impl Default for MessageOptions {
    fn default() -> Self {
        Self { node_id: 0, limits: Limits::default(), recall_window: DEFAULT_RECALL_WINDOW }
    }
}

/// The local implementation of [`MessageApi`]; cheap to share behind an `Arc`.
pub struct MessageService {
    pub(crate) stores: Stores,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) ids: IdGenerator,
    pub(crate) limits: Limits,
    pub(crate) recall_window: Duration,
    /// The server clock of the recall window.
    pub(crate) clock: Clock,
    pub(crate) read_counts: ReadCounts,
}

impl std::fmt::Debug for MessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageService").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl MessageService {
    pub fn new(options: MessageOptions, stores: Stores, bus: Arc<dyn Bus>) -> Self {
        Self {
            stores,
            bus,
            ids: IdGenerator::new(options.node_id),
            limits: options.limits,
            recall_window: options.recall_window,
            clock: Clock::new(),
            read_counts: ReadCounts::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Who gets a message: both sides of a 1:1 chat (the sender for their
    /// other devices), every member of a group.
    async fn recipients(&self, from: &Actor, message: &NewMessage) -> Result<Vec<UserId>> {
        match message.chat_type {
            ChatType::Single => {
                let to = UserId::parse(&message.to, "to")?;
                Ok(match from {
                    Actor::User(me) if *me != to => vec![me.clone(), to],
                    _ => vec![to],
                })
            }
            ChatType::Group => {
                let group = GroupId::parse(&message.to, "to")?;
                let role = self.require_member(from, &group).await?;
                if message.allow_group_ack && role.is_some_and(|r| !r.can_manage()) {
                    return Err(Error::field(
                        ErrorCode::Forbidden,
                        "msg_config.allow_group_ack",
                        format!("only the owner or an admin of group {group} may ask for read receipts"),
                    ));
                }
                self.stores.groups.member_ids(&group).await
            }
            ChatType::Thread => Err(Error::bad_request("chat_type", "thread messages are not supported yet")),
        }
    }

    pub(crate) async fn require_group(&self, group: &GroupId) -> Result<Group> {
        self.stores
            .groups
            .get_group(group)
            .await?
            .ok_or_else(|| Error::not_found(format!("group {group} does not exist")))
    }

    /// Appends the event to every recipient's durable log, then tells their
    /// live sessions. Returns once the logs are durable.
    pub(crate) async fn fan_out(&self, recipients: &[UserId], event: LogEvent) -> Result<()> {
        if recipients.is_empty() {
            return Ok(());
        }
        let appended = self.stores.log.append(recipients, &event).await?;
        self.publish(recipients, &appended, event).await;
        Ok(())
    }

    /// Tells the recipients' live sessions about an event already durable in
    /// their logs.
    async fn publish(&self, recipients: &[UserId], appended: &[Appended], event: LogEvent) {
        if let Err(e) = self.bus.publish_event(SharedEvent::new(event), recipients, appended).await {
            // The event is durable; the recipients' sessions will find it in
            // their logs at the next event or reconnect.
            tracing::warn!(recipients = recipients.len(), error = %e, "live publish failed");
        }
    }
}

#[async_trait]
impl MessageApi for MessageService {
    async fn send(&self, from: Actor, new: NewMessage) -> Result<SendOutcome> {
        let recipients = self.recipients(&from, &new).await?;
        let id = self.ids.next_at(self.clock.now_ms());
        let message = Message {
            id,
            client_msg_id: new.client_msg_id,
            from: from.user_id(),
            to: new.to,
            chat_type: new.chat_type,
            // The server's clock, never the client's.
            timestamp: id.timestamp_ms(),
            body: new.body,
            ext: new.ext,
            from_system: from == Actor::System,
            // Given by the store.
            pos: 0,
            allow_group_ack: new.allow_group_ack,
        };
        let counted = new.updates_conversations;
        let stored =
            self.stores.messages.insert_and_append(&message, &recipients, counted, self.stores.log.as_ref()).await?;
        let Stored { message, duplicate, appended } = stored;
        let outcome = SendOutcome {
            client_msg_id: message.client_msg_id.clone(),
            id: message.id,
            timestamp: message.timestamp,
            duplicate,
        };
        self.publish(&recipients, &appended, LogEvent::Message(message)).await;
        Ok(outcome)
    }

    async fn create_group(&self, owner: &UserId, group: NewGroup) -> Result<Group> {
        self.create_group_impl(owner, group).await
    }

    async fn get_group(&self, actor: &Actor, group: &GroupId) -> Result<Group> {
        self.require_member(actor, group).await?;
        self.require_group(group).await
    }

    async fn add_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group> {
        self.add_members_impl(actor, group, members).await
    }

    async fn remove_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group> {
        self.remove_members_impl(actor, group, members).await
    }

    async fn set_admin(&self, actor: &Actor, group: &GroupId, user: &UserId, admin: bool) -> Result<Group> {
        self.set_admin_impl(actor, group, user, admin).await
    }

    async fn leave_group(&self, user: &UserId, group: &GroupId) -> Result<()> {
        self.leave_group_impl(user, group).await
    }

    async fn dissolve_group(&self, actor: &Actor, group: &GroupId) -> Result<()> {
        self.dissolve_group_impl(actor, group).await
    }

    async fn list_members(
        &self,
        actor: &Actor,
        group: &GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<MemberPage> {
        self.require_member(actor, group).await?;
        let limit = limit.clamp(1, 1000);
        let mut members = self.stores.groups.list_members(group, after.as_ref(), limit + 1).await?;
        let next = if members.len() > limit {
            members.truncate(limit);
            members.last().map(|m| m.user_id.clone())
        } else {
            None
        };
        Ok(MemberPage { members, next })
    }

    async fn receipt(&self, reader: &UserId, receipt: ReceiptRequest) -> Result<()> {
        self.receipt_impl(reader, receipt).await
    }

    async fn recall(&self, actor: &Actor, recall: RecallRequest) -> Result<()> {
        self.recall_impl(actor, recall).await
    }

    async fn group_read_users(&self, actor: &Actor, query: ReaderQuery) -> Result<ReaderPage> {
        self.group_read_users_impl(actor, query).await
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<Group>> {
        let mut groups = Vec::new();
        for id in self.stores.groups.user_groups(user).await? {
            // A group deleted between the two reads is simply left out.
            if let Some(group) = self.stores.groups.get_group(&id).await? {
                groups.push(group);
            }
        }
        Ok(groups)
    }
}
