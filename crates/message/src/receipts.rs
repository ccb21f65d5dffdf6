//! Receipts (R2, R4–R7) and recall (R8).
//!
//! A 1:1 receipt is one event in the sender's log. A group read receipt is
//! one row (the reader and the time) beside the message, whatever the
//! group's size, and the sender learns the message's count through
//! [`crate::read_counts`]. A receipt is accepted only for a message
//! addressed to its reader: the 1:1 message's recipient, or a member of the
//! group who was one when it was sent, for a message that asked for them.
//!
//! Recall: the message joins its conversation's recalled set (gone from
//! history, previews and unread counts for everyone), then every recipient
//! is told through their log. Its sender may recall it within the window on
//! the server's clock; a group's owner and admins may recall any message of
//! the group at any time, as the system may any message.

use natter_types::{
    Actor, ChatType, ConversationKey, Error, ErrorCode, GroupId, LogEvent, Message, MessageId, ReaderPage, ReaderQuery,
    Recall, RecallRequest, Receipt, ReceiptKind, ReceiptRequest, Result, UserId,
};

use crate::MessageService;

fn no_message(field: &str, id: MessageId, conversation: &str) -> Error {
    Error::field(ErrorCode::NotFound, field, format!("message {id} is not in {conversation}"))
}

impl MessageService {
    /// A stored message, recalled or not.
    async fn stored(&self, key: &ConversationKey, id: MessageId, field: &str, what: &str) -> Result<Message> {
        self.stores.messages.get_message(key, id).await?.ok_or_else(|| no_message(field, id, what))
    }

    /// A message not recalled: what receipts and reader lists are for.
    async fn message_in(&self, key: &ConversationKey, id: MessageId, field: &str, what: &str) -> Result<Message> {
        let (message, recalled) = futures::try_join!(
            self.stored(key, id, field, what),
            self.stores.conversations.recalled(key, MessageId(id.0.saturating_sub(1))),
        )?;
        if recalled.first().is_some_and(|(r, _)| *r == id) {
            return Err(Error::field(ErrorCode::NotFound, field, format!("message {id} in {what} was recalled")));
        }
        Ok(message)
    }

    pub(crate) async fn receipt_impl(&self, reader: &UserId, receipt: ReceiptRequest) -> Result<()> {
        let now = self.clock.now_ms();
        match receipt.chat_type {
            ChatType::Single => {
                let peer = UserId::parse(&receipt.to, "to")?;
                let what = format!("the conversation with {peer}");
                let key = ConversationKey::single(reader, &peer);
                let message = self.message_in(&key, receipt.message_id, "id", &what).await?;
                if message.from != peer || message.from_system {
                    return Err(Error::bad_request(
                        "id",
                        format!("message {} was not sent to you by {peer}", message.id),
                    ));
                }
                let event = Receipt {
                    kind: receipt.kind,
                    message_id: message.id,
                    chat_type: ChatType::Single,
                    from: reader.clone(),
                    to: peer.to_string(),
                    time: now,
                    read_count: 0,
                };
                self.fan_out(std::slice::from_ref(&peer), LogEvent::Receipt(event)).await
            }
            ChatType::Group => {
                let group = GroupId::parse(&receipt.to, "to")?;
                if receipt.kind != ReceiptKind::Read {
                    return Err(Error::bad_request("type", "delivery receipts are for 1:1 messages"));
                }
                let key = ConversationKey::group(&group);
                let what = format!("group {group}");
                let (member, message) = futures::try_join!(
                    self.stores.groups.get_member(&group, reader),
                    self.message_in(&key, receipt.message_id, "id", &what),
                )?;
                let Some(member) = member else {
                    return Err(Error::forbidden(format!("{reader} is not a member of group {group}")));
                };
                if !message.allow_group_ack {
                    return Err(Error::bad_request(
                        "id",
                        format!("message {} did not ask for read receipts (msg_config.allow_group_ack)", message.id),
                    ));
                }
                if message.from == *reader {
                    return Err(Error::bad_request("id", format!("message {} is your own", message.id)));
                }
                if member.joined_at > message.timestamp {
                    return Err(Error::forbidden(format!(
                        "{reader} joined group {group} after message {} was sent",
                        message.id
                    )));
                }
                self.stores.receipts.record_read(&key, message.id, reader, now).await?;
                self.read_counts.tell(self, &message.from, (key, message.id), group, reader.clone(), now).await
            }
            ChatType::Thread => Err(Error::bad_request("chat_type", "thread messages are not supported yet")),
        }
    }

    pub(crate) async fn group_read_users_impl(&self, actor: &Actor, query: ReaderQuery) -> Result<ReaderPage> {
        let role = self.require_member(actor, &query.group).await?;
        let key = ConversationKey::group(&query.group);
        let message = self.message_in(&key, query.message_id, "msg_id", &format!("group {}", query.group)).await?;
        if let Actor::User(user) = actor
            && message.from != *user
            && !role.is_some_and(|r| r.can_manage())
        {
            return Err(Error::forbidden(format!(
                "only the sender of message {} or an owner or admin of group {} may see who read it",
                message.id, query.group
            )));
        }
        let receipts = &self.stores.receipts;
        let (mut readers, read_count) = futures::try_join!(
            receipts.readers(&key, message.id, query.after.as_ref(), query.limit + 1),
            receipts.read_count(&key, message.id),
        )?;
        let cursor = if readers.len() > query.limit {
            readers.truncate(query.limit);
            readers.last().map(|r| r.user.clone())
        } else {
            None
        };
        Ok(ReaderPage { readers, cursor, read_count })
    }

    pub(crate) async fn recall_impl(&self, actor: &Actor, recall: RecallRequest) -> Result<()> {
        let now = self.clock.now_ms();
        let (key, message, recipients) = match recall.chat_type {
            ChatType::Single => {
                let peer = UserId::parse(&recall.to, "to")?;
                let side = match (actor, &recall.from) {
                    (Actor::User(me), _) => me.clone(),
                    (Actor::System, Some(from)) => from.clone(),
                    (Actor::System, None) => {
                        return Err(Error::bad_request(
                            "from",
                            "names the 1:1 message's sender when the system recalls",
                        ));
                    }
                };
                let key = ConversationKey::single(&side, &peer);
                let what = format!("{side}'s chat with {peer}");
                // Recalling a recalled message again is harmless: its
                // recipients are told again.
                let message = self.stored(&key, recall.message_id, "mid", &what).await?;
                if let Actor::User(me) = actor {
                    if message.from != *me {
                        return Err(Error::forbidden(format!("message {} is not yours to recall", message.id)));
                    }
                    self.check_window(&message, now)?;
                }
                let mut recipients = vec![message.from.clone()];
                if let Ok(to) = UserId::parse(&message.to, "to")
                    && to != message.from
                {
                    recipients.push(to);
                }
                recipients.retain(|u| *u != UserId::system());
                (key, message, recipients)
            }
            ChatType::Group => {
                let group = GroupId::parse(&recall.to, "to")?;
                let role = self.require_member(actor, &group).await?;
                let key = ConversationKey::group(&group);
                let message = self.stored(&key, recall.message_id, "mid", &format!("group {group}")).await?;
                if let Actor::User(me) = actor
                    && !role.is_some_and(|r| r.can_manage())
                {
                    if message.from != *me {
                        return Err(Error::forbidden(format!(
                            "only the sender of message {} or an owner or admin of group {group} may recall it",
                            message.id
                        )));
                    }
                    self.check_window(&message, now)?;
                }
                (key, message, self.stores.groups.member_ids(&group).await?)
            }
            ChatType::Thread => return Err(Error::bad_request("chat_type", "thread messages are not supported yet")),
        };
        self.stores.conversations.recall(&key, message.id, message.pos).await?;
        let event = Recall {
            message_id: message.id,
            chat_type: message.chat_type,
            from: message.from.clone(),
            to: message.to.clone(),
            by: actor.user_id(),
            time: now,
        };
        self.fan_out(&recipients, LogEvent::Recall(event)).await
    }

    /// R8: a sender's own recall, within the window after the message's
    /// server timestamp.
    fn check_window(&self, message: &Message, now: i64) -> Result<()> {
        let window = self.recall_window.as_millis() as i64;
        let age = now.saturating_sub(message.timestamp);
        if age > window {
            return Err(Error::field(
                ErrorCode::Forbidden,
                "mid",
                format!(
                    "message {} was sent {} s ago; messages can be recalled for {} s after sending (messages.recall_window)",
                    message.id,
                    age / 1000,
                    window / 1000
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use natter_api::MessageApi;
    use natter_bus::local::LocalBus;
    use natter_runtime::Tasks;
    use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
    use natter_types::{Limits, MessageBody, NewMessage};

    use super::*;
    use crate::MessageOptions;

    fn user(name: &str) -> UserId {
        UserId::parse(name, "user").unwrap()
    }

    fn recall_of(id: MessageId, to: &str) -> RecallRequest {
        RecallRequest { chat_type: ChatType::Single, to: to.into(), message_id: id, from: None }
    }

    /// R8 on the server's clock: paused tokio time moves it, not the wall.
    #[tokio::test(start_paused = true)]
    async fn r8_recall_outside_window_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Tasks::new();
        let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
        let options = MessageOptions { recall_window: Duration::from_secs(120), ..MessageOptions::default() };
        let service = MessageService::new(options, stores, Arc::new(LocalBus::new()));
        let (ann, ben) = (user("ann"), user("ben"));
        let send = |n: &str| {
            let body = Some(MessageBody::Text(n.into()));
            NewMessage::validate(n.into(), Some(ChatType::Single), "ben", body, BTreeMap::new(), &Limits::default())
                .unwrap()
        };
        let early = service.send(Actor::User(ann.clone()), send("early")).await.unwrap().id;
        tokio::time::advance(Duration::from_secs(100)).await;
        let late = service.send(Actor::User(ann.clone()), send("late")).await.unwrap().id;
        tokio::time::advance(Duration::from_secs(21)).await;

        let e = service.recall(&Actor::User(ann.clone()), recall_of(early, "ben")).await.unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::Forbidden, Some("mid")));
        assert!(e.message.contains("recalled for 120 s"), "{}", e.message);
        service.recall(&Actor::User(ann.clone()), recall_of(late, "ben")).await.expect("within the window");
        // The system is not bound by the window.
        let system = RecallRequest { from: Some(ann.clone()), ..recall_of(early, "ben") };
        service.recall(&Actor::System, system).await.expect("the system recalls any time");
        let e = service.recall(&Actor::User(ben), recall_of(late, "ann")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "not ben's message");
    }
}
