use crate::{GroupId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupRole {
    Member,
    Admin,
    Owner,
}

impl GroupRole {
    /// Owners and admins manage members and threads.
    pub fn can_manage(self) -> bool {
        self >= Self::Admin
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    pub owner: UserId,
    pub created_at: i64,
    pub member_count: u32,
    pub max_members: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub user_id: UserId,
    pub role: GroupRole,
    pub joined_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChangeKind {
    Created,
    MembersAdded,
    MembersRemoved,
    MemberLeft,
    AdminAdded,
    AdminRemoved,
    Destroyed,
}

/// What every member (and every removed member) is told when a group changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    pub kind: GroupChangeKind,
    pub group_id: GroupId,
    pub group_name: String,
    pub operator: UserId,
    pub members: Vec<UserId>,
    pub time: i64,
}

/// A group as requested by its creator (validated by the message service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
