//! The message service: the send pipeline and groups.
//!
//! Send: validate → resolve recipients → store the message with its
//! idempotency record (durable) → append one event to every recipient's log
//! (durable) → publish live → answer. The answer (R1) therefore means the
//! message and every recipient's copy of the event survive a crash. A retry
//! with the same client message id returns the stored id and completes a
//! fan-out that a crash interrupted.
//!
//! Callers hold an `Arc<dyn MessageApi>`: the local [`MessageService`] in the
//! single-node mode, a gRPC client in the distributed mode.

mod groups;
pub mod remote;
mod service;

use async_trait::async_trait;
use natter_types::{Actor, Group, GroupId, GroupMember, MessageId, NewMessage, Result, UserId};

pub use service::{MessageOptions, MessageService};

/// The R1 server ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub client_msg_id: String,
    pub id: MessageId,
    pub timestamp: i64,
    /// True when this was a retry of a message stored before.
    pub duplicate: bool,
}

/// A group as requested by its creator (validated by the service).
#[derive(Debug, Clone, Default)]
pub struct NewGroup {
    pub name: String,
    pub description: String,
    pub members: Vec<UserId>,
    /// 0 means the configured default maximum.
    pub max_members: u32,
}

/// A page of members; `next` is the cursor of the following page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPage {
    pub members: Vec<GroupMember>,
    pub next: Option<UserId>,
}

#[async_trait]
pub trait MessageApi: Send + Sync + 'static {
    async fn send(&self, from: Actor, message: NewMessage) -> Result<SendOutcome>;

    async fn create_group(&self, owner: &UserId, group: NewGroup) -> Result<Group>;
    async fn get_group(&self, actor: &Actor, group: &GroupId) -> Result<Group>;
    async fn add_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group>;
    async fn remove_members(&self, actor: &Actor, group: &GroupId, members: Vec<UserId>) -> Result<Group>;
    async fn set_admin(&self, actor: &Actor, group: &GroupId, user: &UserId, admin: bool) -> Result<Group>;
    async fn leave_group(&self, user: &UserId, group: &GroupId) -> Result<()>;
    async fn dissolve_group(&self, actor: &Actor, group: &GroupId) -> Result<()>;
    async fn list_members(
        &self,
        actor: &Actor,
        group: &GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<MemberPage>;
    async fn user_groups(&self, user: &UserId) -> Result<Vec<Group>>;
}
