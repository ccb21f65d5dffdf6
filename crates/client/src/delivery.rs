//! The pure bookkeeping behind exactly-once delivery: which seqs were already
//! surfaced, and which messages are echoes of this client's own sends. No I/O,
//! so it is unit-tested directly.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

use natter_proto::v1;

/// How many own message ids (and client message ids) to remember. An echo
/// arrives within moments of its send; this only has to outlast the sends in
/// flight plus a reconnect's replay.
const OWN_SENDS_REMEMBERED: usize = 4096;

/// The highest seq handed to the application. Seqs increase per user but need
/// not be contiguous, so only "not above the mark" can be judged a repeat;
/// gaps are the server's to report (`resync_required`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeqMark(u64);

impl SeqMark {
    pub(crate) fn new(seq: u64) -> Self {
        Self(seq)
    }

    pub(crate) fn get(self) -> u64 {
        self.0
    }

    /// True if `seq` is new and moves the mark; false for a repeat.
    pub(crate) fn accept(&mut self, seq: u64) -> bool {
        if seq <= self.0 {
            return false;
        }
        self.0 = seq;
        true
    }

    /// Move the mark forward (never back) without an event, e.g. when the
    /// server says delivery starts later than we asked.
    pub(crate) fn advance_to(&mut self, seq: u64) -> bool {
        self.accept(seq)
    }
}

/// A set that forgets its oldest entries past a capacity.
#[derive(Debug)]
pub(crate) struct RecentSet<T> {
    order: VecDeque<T>,
    members: HashSet<T>,
    cap: usize,
}

impl<T: Hash + Eq + Clone> RecentSet<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self { order: VecDeque::new(), members: HashSet::new(), cap: cap.max(1) }
    }

    pub(crate) fn insert(&mut self, value: T) {
        if !self.members.insert(value.clone()) {
            return;
        }
        self.order.push_back(value);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, value: &T) -> bool {
        self.members.contains(value)
    }
}

/// Recognises the server's copy of a message this client instance sent (the
/// server fans a message out to every device of the sender, this one too).
///
/// Both keys are needed: the echo can overtake the `sent` response (only the
/// client_msg_id is known then), and once the response is in, the server id
/// identifies the message for certain.
#[derive(Debug)]
pub(crate) struct EchoFilter {
    user_id: String,
    client_msg_ids: RecentSet<String>,
    server_ids: RecentSet<u64>,
}

impl EchoFilter {
    pub(crate) fn new() -> Self {
        Self {
            user_id: String::new(),
            client_msg_ids: RecentSet::new(OWN_SENDS_REMEMBERED),
            server_ids: RecentSet::new(OWN_SENDS_REMEMBERED),
        }
    }

    /// The user this connection is authenticated as (from `hello`).
    pub(crate) fn set_user(&mut self, user_id: &str) {
        if self.user_id != user_id {
            self.user_id = user_id.to_owned();
        }
    }

    pub(crate) fn user(&self) -> &str {
        &self.user_id
    }

    pub(crate) fn note_sending(&mut self, client_msg_id: &str) {
        if !client_msg_id.is_empty() {
            self.client_msg_ids.insert(client_msg_id.to_owned());
        }
    }

    pub(crate) fn note_sent(&mut self, server_msg_id: u64) {
        if server_msg_id != 0 {
            self.server_ids.insert(server_msg_id);
        }
    }

    pub(crate) fn is_echo(&self, m: &v1::Message) -> bool {
        // client_msg_id is unique per sender only, so it must be this user's:
        // another user's message may carry the same client_msg_id.
        if m.from_system || self.user_id.is_empty() || m.from != self.user_id {
            return false;
        }
        (m.id != 0 && self.server_ids.contains(&m.id))
            || (!m.client_msg_id.is_empty() && self.client_msg_ids.contains(&m.client_msg_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, id: u64, cmid: &str) -> v1::Message {
        v1::Message { id, client_msg_id: cmid.into(), from: from.into(), ..Default::default() }
    }

    #[test]
    fn seq_mark_drops_repeats_and_accepts_gaps() {
        let mut m = SeqMark::new(3);
        assert!(!m.accept(1));
        assert!(!m.accept(3));
        assert!(m.accept(4));
        assert!(!m.accept(4));
        assert!(m.accept(10), "seqs need not be contiguous");
        assert!(!m.accept(7), "an older seq after a newer one is a repeat");
        assert_eq!(m.get(), 10);
        assert!(!m.advance_to(5), "never moves back");
        assert_eq!(m.get(), 10);
    }

    #[test]
    fn recent_set_forgets_the_oldest() {
        let mut s = RecentSet::new(3);
        for i in 0..5 {
            s.insert(i);
        }
        assert!(!s.contains(&0) && !s.contains(&1));
        assert!(s.contains(&2) && s.contains(&3) && s.contains(&4));
        s.insert(4); // a repeat must not evict anything
        assert!(s.contains(&2));
    }

    #[test]
    fn echo_is_recognised_by_client_msg_id_before_the_response() {
        let mut f = EchoFilter::new();
        f.set_user("alice");
        f.note_sending("c1");
        assert!(f.is_echo(&msg("alice", 100, "c1")));
        assert!(!f.is_echo(&msg("alice", 101, "c2")), "another device of alice sent this one");
        assert!(!f.is_echo(&msg("bob", 102, "c1")), "same client_msg_id from another user");
    }

    #[test]
    fn echo_is_recognised_by_server_id_after_the_response() {
        let mut f = EchoFilter::new();
        f.set_user("alice");
        f.note_sent(100);
        assert!(f.is_echo(&msg("alice", 100, "")));
        assert!(!f.is_echo(&msg("alice", 0, "")), "id 0 means unknown");
    }

    #[test]
    fn system_messages_and_unknown_user_are_never_echoes() {
        let mut f = EchoFilter::new();
        f.note_sending("c1");
        assert!(!f.is_echo(&msg("", 1, "c1")), "no hello yet");
        f.set_user("alice");
        let mut m = msg("alice", 1, "c1");
        m.from_system = true;
        assert!(!f.is_echo(&m));
    }
}
