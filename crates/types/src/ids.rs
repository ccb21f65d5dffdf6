use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A user id: 1–64 chars of `a-z 0-9 _ - .`, case-insensitive and kept in
/// lower case (mixed case would split one user's conversations in two).
/// Shared, not owned: a group send hands every member's id to the store, the
/// writer and the bus, and a clone is then a count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

pub const MAX_USER_ID_LEN: usize = 64;

impl UserId {
    /// Validates and normalises; `field` names the request field in the error.
    pub fn parse(raw: &str, field: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::bad_request(field, "user id must not be empty"));
        }
        if raw.len() > MAX_USER_ID_LEN {
            return Err(Error::bad_request(
                field,
                format!("user id is {} chars, the limit is {MAX_USER_ID_LEN}", raw.len()),
            ));
        }
        if let Some(c) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
            return Err(Error::bad_request(field, format!("user id contains {c:?}; allowed are a-z 0-9 _ - .")));
        }
        if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            return Ok(Self(raw.to_ascii_lowercase().into()));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pseudo-user that system messages come from.
    pub fn system() -> Self {
        Self("system".into())
    }
}

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::parse(&s, "user_id").map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A group id: server-assigned decimal digits of a time-ordered id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(String);

impl GroupId {
    pub fn parse(raw: &str, field: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::bad_request(field, "group id must not be empty"));
        }
        if raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::bad_request(field, "group id must be 1-20 decimal digits"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn from_id(id: u64) -> Self {
        Self(id.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connection of one device; unique across the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub String);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server-assigned, time-ordered 64-bit id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn timestamp_ms(self) -> i64 {
        ((self.0 >> IdGenerator::TIME_SHIFT) as i64) + IdGenerator::EPOCH_MS
    }
}

impl MessageId {
    /// The smallest id made at or after `ms` (ms since the Unix epoch): the
    /// ids of messages stamped before `ms` are all below it.
    pub fn first_at(ms: i64) -> Self {
        let since = (ms - IdGenerator::EPOCH_MS).max(0) as u64;
        Self(
            since
                .checked_shl(IdGenerator::TIME_SHIFT)
                .filter(|v| v >> IdGenerator::TIME_SHIFT == since)
                .unwrap_or(u64::MAX),
        )
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Makes time-ordered ids: 41 bits of milliseconds since 2024-01-01, 10 bits
/// of node id, 12 bits of sequence. Never goes backwards: when the clock
/// does, or a millisecond's 4096 ids are used up, it borrows from the next
/// millisecond, so ids stay unique and increasing per node.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    last: AtomicU64,
}

impl IdGenerator {
    const EPOCH_MS: i64 = 1_704_067_200_000;
    const TIME_SHIFT: u32 = 22;
    const NODE_BITS: u32 = 10;
    pub const MAX_NODE: u16 = (1 << Self::NODE_BITS) - 1;

    pub fn new(node: u16) -> Self {
        Self { node: u64::from(node.min(Self::MAX_NODE)), last: AtomicU64::new(0) }
    }

    pub fn next(&self) -> MessageId {
        self.next_at(crate::now_ms())
    }

    /// The next id for a clock that reads `now_ms` (a service's own clock,
    /// which paused-time tests move).
    pub fn next_at(&self, now_ms: i64) -> MessageId {
        let now = (now_ms - Self::EPOCH_MS).max(0) as u64;
        let floor = (now << Self::TIME_SHIFT) | (self.node << 12);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            // Same node bits in both, so +1 on the 12-bit sequence either
            // stays in the millisecond or carries into the next one.
            let candidate = if floor > prev { floor } else { next_after(prev, self.node) };
            match self.last.compare_exchange_weak(prev, candidate, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return MessageId(candidate),
                Err(actual) => prev = actual,
            }
        }
    }
}

fn next_after(prev: u64, node: u64) -> u64 {
    let seq = prev & 0xfff;
    if seq < 0xfff {
        prev + 1
    } else {
        // Sequence exhausted: next millisecond, sequence 0.
        (((prev >> IdGenerator::TIME_SHIFT) + 1) << IdGenerator::TIME_SHIFT) | (node << 12)
    }
}

/// Where a conversation's history is kept: both sides of a 1:1 chat share one
/// key (the two user ids in order), a group or thread has its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationKey(String);

impl ConversationKey {
    pub fn single(a: &UserId, b: &UserId) -> Self {
        Self::single_of(a.as_str(), b.as_str())
    }

    /// [`ConversationKey::single`] of two ids already validated (a stored
    /// message's sender and recipient).
    pub(crate) fn single_of(a: &str, b: &str) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        Self(format!("s:{lo}:{hi}"))
    }

    pub fn group(group: &GroupId) -> Self {
        Self(format!("g:{group}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    /// What the key names: the two users of a 1:1 chat, or a group. `None`
    /// for a key no current build makes.
    pub fn parts(&self) -> Option<KeyParts> {
        if let Some(rest) = self.0.strip_prefix("s:") {
            let (a, b) = rest.split_once(':')?;
            return Some(KeyParts::Single(UserId::parse(a, "key").ok()?, UserId::parse(b, "key").ok()?));
        }
        let group = self.0.strip_prefix("g:")?;
        Some(KeyParts::Group(GroupId::parse(group, "key").ok()?))
    }
}

/// A [`ConversationKey`] taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParts {
    Single(UserId, UserId),
    Group(GroupId),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn user_id_is_normalised_and_validated() {
        assert_eq!(UserId::parse("Alice.B-1_x", "to").unwrap().as_str(), "alice.b-1_x");
        let err = UserId::parse("al ice", "send.to").unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::BadRequest);
        assert_eq!(err.field.as_deref(), Some("send.to"));
        assert!(err.message.contains("' '"), "{}", err.message);
        assert!(UserId::parse("", "to").is_err());
        assert!(UserId::parse(&"a".repeat(64), "to").is_ok());
        let long = UserId::parse(&"a".repeat(65), "to").unwrap_err();
        assert!(long.message.contains("limit is 64"), "{}", long.message);
        assert!(UserId::parse("ünï", "to").is_err());
    }

    #[test]
    fn ids_increase_even_when_many_are_made_in_one_millisecond() {
        let generator = IdGenerator::new(3);
        let mut prev = generator.next();
        for _ in 0..20_000 {
            let id = generator.next();
            assert!(id > prev);
            assert_eq!((id.0 >> 12) & 0x3ff, 3, "node bits preserved");
            prev = id;
        }
        let age = crate::now_ms() - prev.timestamp_ms();
        assert!(age.abs() < 60_000, "timestamp is close to now: {age}");
    }

    #[test]
    fn single_conversation_key_is_symmetric() {
        let a = UserId::parse("alice", "a").unwrap();
        let b = UserId::parse("bob", "b").unwrap();
        assert_eq!(ConversationKey::single(&a, &b), ConversationKey::single(&b, &a));
        assert_eq!(ConversationKey::group(&GroupId::from_id(42)).as_str(), "g:42");
    }

    #[test]
    fn within_prefixes_field_and_message() {
        let e = Error::bad_request("to", "bad").within("send");
        assert_eq!(e.field.as_deref(), Some("send.to"));
        assert_eq!(e.message, "send.to: bad");
    }
}
