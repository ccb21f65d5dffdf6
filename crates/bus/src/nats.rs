//! The NATS backend of the bus (distributed mode): core NATS subjects, no
//! JetStream — the bus carries no truth (see the crate docs), so at-most-once
//! delivery is enough: a gateway that misses a live event notices the gap by
//! `prev` at the next one and reads the durable log.
//!
//! Subjects (`<prefix>` defaults to `natter`):
//! - `<prefix>.user.<user>`: live events and transient frames for one user;
//!   only gateways holding that user's sessions subscribe, so a message goes
//!   only where the recipient is connected — no broadcast to every gateway.
//! - `<prefix>.gateway.<gateway>`: control messages (kicks) to one gateway.
//!
//! `.` separates subject tokens and may appear in user ids, so ids are
//! written with `.` as `~` (not a user-id character, so the mapping is
//! one-to-one). Payloads are `natter.v1.BusMessage` protobuf.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use natter_proto::v1;
use natter_types::{Appended, Error, Result, SessionId, UserId};
use prost::Message as _;

use crate::{Bus, Control, Live, LiveEvent, SharedEvent, Transient};

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    prefix: String,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("nats {what}: {e}"))
}

fn token(raw: &str) -> String {
    raw.replace('.', "~")
}

impl NatsBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`, or several separated
    /// by commas); the client reconnects by itself after a server restart.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("natter")
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| unavailable("connect", e))?;
        Ok(Self { client, prefix: prefix.to_owned() })
    }

    fn user_subject(&self, user: &UserId) -> String {
        format!("{}.user.{}", self.prefix, token(user.as_str()))
    }

    fn gateway_subject(&self, gateway: &str) -> String {
        format!("{}.gateway.{}", self.prefix, token(gateway))
    }

    async fn publish(&self, subject: String, body: v1::bus_message::Body) -> Result<()> {
        let payload = v1::BusMessage { body: Some(body) }.encode_to_vec();
        self.client.publish(subject, payload.into()).await.map_err(|e| unavailable("publish", e))
    }

    /// Subscribes and waits until the server has the subscription, so that
    /// a publish after this returns is seen.
    /// Subscribes and returns once the server has registered the
    /// subscription, so a publish that follows from any connection reaches
    /// it (callers read the durable log right after and rely on that).
    async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber> {
        let subscriber = self.client.subscribe(subject).await.map_err(|e| unavailable("subscribe", e))?;
        self.round_trip().await?;
        Ok(subscriber)
    }

    /// Waits until the server has processed everything this connection sent
    /// before: NATS handles one connection's operations in order, and
    /// `flush` only writes the socket (a SUB still in flight would miss a
    /// publish another gateway makes meanwhile). A request nobody answers
    /// comes back from the server itself as "no responders".
    async fn round_trip(&self) -> Result<()> {
        let subject = format!("{}.sync", self.prefix);
        match self.client.request(subject, bytes::Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(unavailable("subscribe round trip", e)),
        }
    }
}

fn decode(payload: &[u8]) -> Option<v1::bus_message::Body> {
    match v1::BusMessage::decode(payload) {
        Ok(message) => message.body,
        Err(e) => {
            // Not ours (or a newer version's); skipping costs at most latency.
            tracing::warn!(error = %e, "undecodable bus message");
            None
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish_event(&self, event: Arc<SharedEvent>, users: &[UserId], at: &[Appended]) -> Result<()> {
        // The event is converted and encoded once; each recipient's message
        // only adds its seq and prev.
        let body = natter_proto::live_event_body(&event);
        let mut failed = None;
        for (user, at) in users.iter().zip(at) {
            let payload = natter_proto::live_bus_message_bytes(at.seq, at.prev, &body);
            // One recipient's failure does not keep the others from theirs.
            if let Err(e) = self.client.publish(self.user_subject(user), payload.into()).await {
                failed = Some(unavailable("publish", e));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn publish_transient(&self, users: &[UserId], frame: Arc<Transient>) -> Result<()> {
        // Encoded once; the same bytes go to every recipient's subject.
        let payload: bytes::Bytes = v1::BusMessage {
            body: Some(v1::bus_message::Body::Transient(v1::TransientWire {
                proto: frame.proto.to_vec(),
                json: frame.json.to_vec(),
            })),
        }
        .encode_to_vec()
        .into();
        for user in users {
            self.client
                .publish(self.user_subject(user), payload.clone())
                .await
                .map_err(|e| unavailable("publish", e))?;
        }
        Ok(())
    }

    async fn subscribe_user(&self, user: &UserId) -> Result<BoxStream<'static, Live>> {
        let subscriber = self.subscribe(self.user_subject(user)).await?;
        // Dropping the stream drops the subscriber, which unsubscribes.
        let stream = subscriber.filter_map(|message| async move {
            match decode(&message.payload)? {
                v1::bus_message::Body::Live(wire) => {
                    let event = wire.event?.try_into().ok()?;
                    Some(Live::Event(LiveEvent { seq: wire.seq, prev: wire.prev, event: SharedEvent::new(event) }))
                }
                v1::bus_message::Body::Transient(wire) => {
                    Some(Live::Transient(Arc::new(Transient { proto: wire.proto.into(), json: wire.json.into() })))
                }
                v1::bus_message::Body::Kick(_) => None,
            }
        });
        Ok(Box::pin(stream))
    }

    async fn publish_control(&self, gateway: &str, control: Control) -> Result<()> {
        let Control::Kick { user, sessions } = control;
        let kick =
            v1::KickSessions { user_id: user.to_string(), session_ids: sessions.into_iter().map(|s| s.0).collect() };
        self.publish(self.gateway_subject(gateway), v1::bus_message::Body::Kick(kick)).await
    }

    async fn subscribe_control(&self, gateway: &str) -> Result<BoxStream<'static, Control>> {
        let subscriber = self.subscribe(self.gateway_subject(gateway)).await?;
        let stream = subscriber.filter_map(|message| async move {
            match decode(&message.payload)? {
                v1::bus_message::Body::Kick(kick) => Some(Control::Kick {
                    user: UserId::parse(&kick.user_id, "user_id").ok()?,
                    sessions: kick.session_ids.into_iter().map(SessionId).collect(),
                }),
                _ => None,
            }
        });
        Ok(Box::pin(stream))
    }
}
