//! `ConversationStore` over CQL, and what a counted send writes of it: the
//! conversation's head (its positions), the 1:1 users' states and the
//! sender's read position. See the module docs of [`super`],
//! "Conversations", for why positions are taken this way and what a send
//! that dies halfway leaves.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use futures::{StreamExt, stream};
use natter_types::{ChatType, ConversationKey, Error, Message, MessageId, Result, UserId};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::oneshot;

use super::messages::id_value;
use super::statements::Preparer;
use super::{CACHE_CAP, CqlStore, Inner, backoff, error};
use crate::{ConversationChange, ConversationHead, ConversationStore, UserConversation};

/// Ids of the newest counted messages a head keeps (`recent`): a send that
/// took its position and died before recording it finds it there on retry
/// while fewer than this many counted messages followed it.
pub(crate) const RECENT_IDS: usize = 64;

/// Claims one conditional update of a head takes at most (all of them must
/// fit in `recent`, or a claim could not see its own position).
const MAX_BATCH_CLAIMS: usize = RECENT_IDS;

/// Attempts of a conditional update that keeps losing to concurrent ones.
const MAX_ATTEMPTS: u32 = 500;

/// Removed-message rows per single-partition batch.
const REMOVED_BATCH: usize = 50;

const HEAD_COLUMNS: &str = "SELECT pos, recent FROM {ks}.conversation_heads WHERE conversation = ?";
const STATE_COLUMNS: &str = "SELECT conversation, created_at, read_pos, cleared_pos, cleared_id, hidden, hidden_pos, \
                             pinned_at FROM {ks}.user_conversations WHERE user_id = ?";

pub(crate) struct ConversationStatements {
    head_get: PreparedStatement,
    head_get_serial: PreparedStatement,
    head_read: PreparedStatement,
    head_create: PreparedStatement,
    head_advance: PreparedStatement,
    state_get: PreparedStatement,
    state_get_serial: PreparedStatement,
    states_scan: PreparedStatement,
    state_create: PreparedStatement,
    state_read_cas: PreparedStatement,
    state_clear_cas: PreparedStatement,
    state_pin: PreparedStatement,
    state_hide: PreparedStatement,
    removed_insert: PreparedStatement,
    removed_scan: PreparedStatement,
    recall_insert: PreparedStatement,
    recalled_scan: PreparedStatement,
}

impl ConversationStatements {
    pub(crate) async fn prepare(p: &Preparer<'_>) -> Result<Self> {
        let state_one = format!("{STATE_COLUMNS} AND conversation = ?");
        let key = "WHERE user_id = ? AND conversation = ?";
        Ok(Self {
            head_get: p.prepare(HEAD_COLUMNS, true).await?,
            head_get_serial: p.serial_read(HEAD_COLUMNS).await?,
            head_read: p
                .prepare("SELECT pos, last_id, last_time FROM {ks}.conversation_heads WHERE conversation = ?", true)
                .await?,
            head_create: p
                .prepare(
                    "INSERT INTO {ks}.conversation_heads (conversation, pos, last_id, last_time, recent) \
                     VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                    false,
                )
                .await?,
            head_advance: p
                .prepare(
                    "UPDATE {ks}.conversation_heads SET pos = ?, last_id = ?, last_time = ?, recent = ? \
                     WHERE conversation = ? IF pos = ?",
                    false,
                )
                .await?,
            state_get: p.prepare(&state_one, true).await?,
            state_get_serial: p.serial_read(&state_one).await?,
            states_scan: p.prepare(STATE_COLUMNS, true).await?,
            state_create: p
                .prepare(
                    &format!("UPDATE {{ks}}.user_conversations SET created_at = ? {key} IF created_at = null"),
                    false,
                )
                .await?,
            state_read_cas: p
                .prepare(&format!("UPDATE {{ks}}.user_conversations SET read_pos = ? {key} IF read_pos = ?"), false)
                .await?,
            state_clear_cas: p
                .prepare(
                    &format!(
                        "UPDATE {{ks}}.user_conversations SET cleared_pos = ?, cleared_id = ? {key} \
                         IF cleared_pos = ? AND cleared_id = ?"
                    ),
                    false,
                )
                .await?,
            state_pin: p.prepare(&format!("UPDATE {{ks}}.user_conversations SET pinned_at = ? {key}"), true).await?,
            state_hide: p
                .prepare(
                    &format!("UPDATE {{ks}}.user_conversations SET hidden = true, hidden_pos = ?, pinned_at = 0 {key}"),
                    true,
                )
                .await?,
            removed_insert: p
                .prepare(
                    "INSERT INTO {ks}.user_removed_messages (user_id, conversation, msg_id, pos) VALUES (?, ?, ?, ?)",
                    true,
                )
                .await?,
            removed_scan: p
                .prepare(&format!("SELECT msg_id, pos FROM {{ks}}.user_removed_messages {key} AND msg_id > ?"), true)
                .await?,
            recall_insert: p
                .prepare("INSERT INTO {ks}.recalled_messages (conversation, msg_id, pos) VALUES (?, ?, ?)", true)
                .await?,
            recalled_scan: p
                .prepare("SELECT msg_id, pos FROM {ks}.recalled_messages WHERE conversation = ? AND msg_id > ?", true)
                .await?,
        })
    }
}

// ------------------------------------------------------------------ heads

/// A conversation head row (`pos` 0: the conversation has none yet).
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadRow {
    pos: i64,
    /// The ids at `pos - recent.len() + 1 ..= pos`.
    recent: Vec<i64>,
}

impl HeadRow {
    /// The position of message `id` if it is one of the newest.
    fn position_of(&self, id: i64) -> Option<i64> {
        let index = self.recent.iter().rposition(|r| *r == id)?;
        Some(self.pos - (self.recent.len() - 1 - index) as i64)
    }
}

type HeadValues = (Option<i64>, Option<Vec<i64>>);

fn head_row(conversation: &str, row: Option<HeadValues>) -> Result<HeadRow> {
    let Some((pos, recent)) = row else { return Ok(HeadRow::default()) };
    let corrupt = |why: &str| Error::internal(format!("corrupt conversation head of {conversation}: {why}"));
    let pos = pos.ok_or_else(|| corrupt("no position"))?;
    let recent = recent.unwrap_or_default();
    if pos < 1 || recent.len() as i64 > pos || recent.len() > RECENT_IDS {
        return Err(corrupt(&format!("position {pos} with {} recent ids", recent.len())));
    }
    Ok(HeadRow { pos, recent })
}

/// One message asking for the next position of its conversation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    pub id: MessageId,
    pub time: i64,
}

/// Position claims of this process waiting for their conversation's turn,
/// by conversation. A conversation with an entry here has a claim running;
/// the waiting ones go next.
pub(crate) type ClaimQueues = parking_lot::Mutex<HashMap<String, VecDeque<WaitingClaim>>>;

pub(crate) struct WaitingClaim {
    claim: Claim,
    turn: oneshot::Sender<ClaimTurn>,
}

enum ClaimTurn {
    /// Positioned by another call (this claim's position), or failed.
    Done(Result<u64>),
    /// This call claims now: its claim back, with whatever waits behind it.
    Lead(Claim),
}

/// The running claim of one conversation in this process; dropping it
/// (done, failed or cancelled) hands the turn to the next waiting claim.
struct HeadTurn<'a> {
    queues: &'a ClaimQueues,
    key: &'a str,
}

impl HeadTurn<'_> {
    fn take_batch(&self) -> Vec<WaitingClaim> {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(self.key) else { return Vec::new() };
        let take = queue.len().min(MAX_BATCH_CLAIMS - 1);
        queue.drain(..take).collect()
    }
}

impl Drop for HeadTurn<'_> {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(self.key) else { return };
        while let Some(next) = queue.pop_front() {
            // A waiter whose call was dropped meanwhile is skipped: it never
            // got a position.
            if next.turn.send(ClaimTurn::Lead(next.claim)).is_ok() {
                return;
            }
        }
        queues.remove(self.key);
    }
}

/// A waiting claim's side of its turn: dropped after the turn was handed to
/// it but before it ran, it hands the turn on.
struct ClaimWait<'a> {
    rx: oneshot::Receiver<ClaimTurn>,
    queues: &'a ClaimQueues,
    key: &'a str,
}

impl Drop for ClaimWait<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(ClaimTurn::Lead(_)) = self.rx.try_recv() {
            drop(HeadTurn { queues: self.queues, key: self.key });
        }
    }
}

fn position(pos: i64) -> u64 {
    u64::try_from(pos).unwrap_or(0)
}

impl Inner {
    async fn read_conversation_head(&self, conversation: &str, serial: bool) -> Result<HeadRow> {
        let st = &self.st.conversations;
        let statement = if serial { &st.head_get_serial } else { &st.head_get };
        let row: Option<HeadValues> = self.first_row("read conversation head", statement, (conversation,)).await?;
        head_row(conversation, row)
    }

    /// The next position of the message's conversation (or the one it took
    /// before, if it is still among the head's `recent` ids).
    ///
    /// Claims of one conversation from this process take turns, like user-log
    /// appends (`append_user_entry`): the one whose turn it is takes a
    /// position for every claim waiting behind it in one conditional update,
    /// so a busy group costs a Paxos round per batch, and only other
    /// processes make a round fail.
    pub(crate) async fn take_position(&self, conversation: &str, claim: Claim) -> Result<u64> {
        let waiting = {
            let mut queues = self.claims.lock();
            match queues.get_mut(conversation) {
                Some(queue) => {
                    let (turn, rx) = oneshot::channel();
                    queue.push_back(WaitingClaim { claim, turn });
                    Err(rx)
                }
                None => {
                    queues.insert(conversation.to_owned(), VecDeque::new());
                    Ok(claim)
                }
            }
        };
        let own = match waiting {
            Ok(claim) => claim,
            Err(rx) => match (&mut ClaimWait { rx, queues: &self.claims, key: conversation }.rx).await {
                Ok(ClaimTurn::Done(result)) => return result,
                Ok(ClaimTurn::Lead(claim)) => claim,
                Err(_) => {
                    return Err(Error::unavailable(format!(
                        "position in {conversation} was cut short (the call taking it was cancelled); \
                         a retry of the send finds it if it was taken"
                    )));
                }
            },
        };
        let turn = HeadTurn { queues: &self.claims, key: conversation };
        let batch = turn.take_batch();
        let claims: Vec<Claim> = std::iter::once(own).chain(batch.iter().map(|w| w.claim)).collect();
        let positions = self.advance_head(conversation, &claims).await;
        for (i, waiting) in batch.into_iter().enumerate() {
            let result = positions.as_ref().map(|p| p[i + 1]).map_err(Clone::clone);
            // A waiter whose call was dropped no longer needs its answer.
            let _ = waiting.turn.send(ClaimTurn::Done(result));
        }
        drop(turn);
        positions.map(|p| p[0])
    }

    /// Positions for `claims` in one conditional update of the head (`IF
    /// pos = ?`): a claim whose id is already among the head's `recent` ids
    /// keeps that position, the others take the next ones in order. Every
    /// head read is checked that way, so neither a retry nor an update whose
    /// outcome was unknown gives one message two positions.
    async fn advance_head(&self, conversation: &str, claims: &[Claim]) -> Result<Vec<u64>> {
        let st = &self.st.conversations;
        let ids: Vec<i64> = claims.iter().map(|c| id_value(c.id)).collect::<Result<_>>()?;
        let hint = self.conversation_heads.lock().get(conversation).cloned();
        let mut head = match hint {
            Some(head) => head,
            None => self.read_conversation_head(conversation, false).await?,
        };
        for attempt in 0..MAX_ATTEMPTS {
            let mut fresh: Vec<(i64, i64)> = Vec::new();
            for (id, claim) in ids.iter().zip(claims) {
                if head.position_of(*id).is_none() && !fresh.iter().any(|(f, _)| f == id) {
                    fresh.push((*id, claim.time));
                }
            }
            let Some(&(last_id, last_time)) = fresh.last() else {
                return ids.iter().map(|id| head.position_of(*id).map(position).ok_or_else(lost_claim)).collect();
            };
            let pos = head.pos + fresh.len() as i64;
            let mut recent = head.recent.clone();
            recent.extend(fresh.iter().map(|(id, _)| *id));
            recent.drain(..recent.len().saturating_sub(RECENT_IDS));
            let result = if head.pos == 0 {
                self.conditional(
                    "advance conversation head",
                    &st.head_create,
                    (conversation, pos, last_id, last_time, &recent),
                )
                .await
            } else {
                self.conditional(
                    "advance conversation head",
                    &st.head_advance,
                    (pos, last_id, last_time, &recent, conversation, head.pos),
                )
                .await
            };
            match result {
                Ok(lwt) => {
                    let lwt = lwt.checked()?;
                    if lwt.applied {
                        let head = HeadRow { pos, recent };
                        let positions = ids.iter().map(|id| head.position_of(*id).map(position).ok_or_else(lost_claim));
                        let positions = positions.collect::<Result<Vec<_>>>()?;
                        let mut hints = self.conversation_heads.lock();
                        if hints.len() >= CACHE_CAP {
                            hints.clear();
                        }
                        // Claims of one conversation take turns in this
                        // process, so none here moved the head since.
                        hints.insert(conversation.to_owned(), head);
                        return Ok(positions);
                    }
                    self.conversation_heads.lock().remove(conversation);
                    head = match lwt.bigint("pos") {
                        Some(at_least) => {
                            let read = self.read_conversation_head(conversation, false).await?;
                            if read.pos >= at_least {
                                read
                            } else {
                                self.read_conversation_head(conversation, true).await?
                            }
                        }
                        None => self.read_conversation_head(conversation, true).await?,
                    };
                }
                Err(e) if error::outcome_unknown(&e) => {
                    // The serial read settles the round; if ours won, the ids
                    // are in `recent` and the next turn of the loop returns.
                    tracing::warn!(conversation, pos, error = %e, "conversation head outcome unknown; checking");
                    self.conversation_heads.lock().remove(conversation);
                    head = self.read_conversation_head(conversation, true).await?;
                }
                Err(e) => return Err(error::execution("advance conversation head", e)),
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!(
            "head of {conversation} is advanced concurrently; gave up after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// What a counted, positioned message writes of its users' states: the
    /// 1:1 peer's state if it had none (its list shows the conversation
    /// again once the head passes a hide by itself), and the sender's state
    /// with its read position at the message (the system sender has none).
    pub(crate) async fn counted_effects(&self, message: &Message) -> Result<()> {
        let conversation = message.conversation();
        let sender = async {
            if message.from_system {
                return Ok(());
            }
            let read = ConversationChange::Read { pos: message.pos };
            self.change_state(&message.from, &conversation, read, message.timestamp).await.map(|_| ())
        };
        let peer = async {
            if message.chat_type != ChatType::Single {
                return Ok(());
            }
            let to = UserId::parse(&message.to, "to")?;
            if to == message.from && !message.from_system {
                return Ok(());
            }
            let row = self.read_state(&to, &conversation, false).await?;
            if row.as_ref().is_none_or(|r| r.created_at.is_none()) {
                self.create_state(&to, &conversation, message.timestamp).await?;
            }
            Ok(())
        };
        futures::try_join!(sender, peer).map(|_| ())
    }
}

fn lost_claim() -> Error {
    Error::internal("a claimed conversation position is not among the head's recent ids")
}

// ----------------------------------------------------------------- states

/// A `user_conversations` row as stored (every field its own column, null
/// until first written).
#[derive(Debug, Clone, Default)]
struct StateRow {
    created_at: Option<i64>,
    read_pos: Option<i64>,
    cleared_pos: Option<i64>,
    cleared_id: Option<i64>,
    hidden: Option<bool>,
    hidden_pos: Option<i64>,
    pinned_at: Option<i64>,
}

type StateValues = (String, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<bool>, Option<i64>, Option<i64>);

fn state_row(values: StateValues) -> (String, StateRow) {
    let (conversation, created_at, read_pos, cleared_pos, cleared_id, hidden, hidden_pos, pinned_at) = values;
    (conversation, StateRow { created_at, read_pos, cleared_pos, cleared_id, hidden, hidden_pos, pinned_at })
}

fn stored_u64(conversation: &ConversationKey, field: &str, value: Option<i64>) -> Result<u64> {
    u64::try_from(value.unwrap_or(0)).map_err(|_| {
        Error::internal(format!("corrupt conversation state of {}: negative {field}", conversation.as_str()))
    })
}

/// A missing field is its default (a field is written only by the changes
/// that touch it); `created_at` is written with the row's first change.
fn state_of(conversation: ConversationKey, row: &StateRow) -> Result<UserConversation> {
    let hidden_pos = match row.hidden {
        Some(true) => Some(stored_u64(&conversation, "hidden_pos", row.hidden_pos)?),
        _ => None,
    };
    Ok(UserConversation {
        created_at: row.created_at.unwrap_or(0),
        read_pos: stored_u64(&conversation, "read_pos", row.read_pos)?,
        cleared_pos: stored_u64(&conversation, "cleared_pos", row.cleared_pos)?,
        cleared_id: MessageId(stored_u64(&conversation, "cleared_id", row.cleared_id)?),
        hidden_pos,
        pinned_at: row.pinned_at.unwrap_or(0),
        conversation,
    })
}

fn bound(value: u64, field: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::bad_request(field, "does not fit a cql bigint"))
}

impl Inner {
    async fn read_state(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        serial: bool,
    ) -> Result<Option<StateRow>> {
        let st = &self.st.conversations;
        let statement = if serial { &st.state_get_serial } else { &st.state_get };
        let row: Option<StateValues> =
            self.first_row("read conversation state", statement, (user.as_str(), conversation.as_str())).await?;
        Ok(row.map(|values| state_row(values).1))
    }

    /// Gives the state its creation time if it has none; returns the one it
    /// has. Conditional, so concurrent first changes agree on one.
    async fn create_state(&self, user: &UserId, conversation: &ConversationKey, created_at: i64) -> Result<i64> {
        let st = &self.st.conversations;
        let values = (created_at, user.as_str(), conversation.as_str());
        match self.conditional("create conversation state", &st.state_create, values).await {
            Ok(lwt) => {
                let lwt = lwt.checked()?;
                if lwt.applied {
                    return Ok(created_at);
                }
                match lwt.bigint("created_at") {
                    Some(existing) => Ok(existing),
                    None => self.settled_created_at(user, conversation).await,
                }
            }
            Err(e) if error::outcome_unknown(&e) => self.settled_created_at(user, conversation).await,
            Err(e) => Err(error::execution("create conversation state", e)),
        }
    }

    async fn settled_created_at(&self, user: &UserId, conversation: &ConversationKey) -> Result<i64> {
        let row = self.read_state(user, conversation, true).await?;
        row.and_then(|r| r.created_at).ok_or_else(|| {
            Error::unavailable(format!(
                "conversation state of {user} in {} changed concurrently, retry",
                conversation.as_str()
            ))
        })
    }

    /// Raises `read_pos` to `target` unless it is there already, by
    /// compare-and-set on the value read (`current`); returns where it is.
    async fn raise_read(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        mut current: Option<i64>,
        target: i64,
    ) -> Result<i64> {
        let st = &self.st.conversations;
        for attempt in 0..MAX_ATTEMPTS {
            // A read position never written is 0.
            let at = current.unwrap_or(0);
            if at >= target {
                return Ok(at);
            }
            let values = (target, user.as_str(), conversation.as_str(), current);
            match self.conditional("move read position", &st.state_read_cas, values).await {
                Ok(lwt) => {
                    let lwt = lwt.checked()?;
                    if lwt.applied {
                        return Ok(target);
                    }
                    let now = lwt.bigint("read_pos");
                    current = if now == current {
                        self.read_state(user, conversation, true).await?.and_then(|r| r.read_pos)
                    } else {
                        now
                    };
                }
                Err(e) if error::outcome_unknown(&e) => {
                    current = self.read_state(user, conversation, true).await?.and_then(|r| r.read_pos);
                }
                Err(e) => return Err(error::execution("move read position", e)),
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!(
            "read position of {user} in {} is moved concurrently, retry",
            conversation.as_str()
        )))
    }

    /// Raises `(cleared_pos, cleared_id)` to at least `target`, each on its
    /// own, by compare-and-set on the pair read; returns where they are.
    async fn raise_cleared(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        mut current: (Option<i64>, Option<i64>),
        target: (i64, i64),
    ) -> Result<(i64, i64)> {
        let st = &self.st.conversations;
        for attempt in 0..MAX_ATTEMPTS {
            let (pos, id) = (current.0.unwrap_or(0), current.1.unwrap_or(0));
            let want = (pos.max(target.0), id.max(target.1));
            if want == (pos, id) {
                return Ok(want);
            }
            let values = (want.0, want.1, user.as_str(), conversation.as_str(), current.0, current.1);
            match self.conditional("move cleared position", &st.state_clear_cas, values).await {
                Ok(lwt) => {
                    let lwt = lwt.checked()?;
                    if lwt.applied {
                        return Ok(want);
                    }
                    let now = (lwt.bigint("cleared_pos"), lwt.bigint("cleared_id"));
                    current = if now == current {
                        let row = self.read_state(user, conversation, true).await?.unwrap_or_default();
                        (row.cleared_pos, row.cleared_id)
                    } else {
                        now
                    };
                }
                Err(e) if error::outcome_unknown(&e) => {
                    let row = self.read_state(user, conversation, true).await?.unwrap_or_default();
                    current = (row.cleared_pos, row.cleared_id);
                }
                Err(e) => return Err(error::execution("move cleared position", e)),
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!(
            "cleared position of {user} in {} is moved concurrently, retry",
            conversation.as_str()
        )))
    }

    /// Applies `change` by writing only the columns it touches: plain
    /// writes for the fields a later change simply replaces (pin, hide), a
    /// compare-and-set for the positions that never move back, so a change
    /// never undoes a concurrent one to another field.
    async fn change_state(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        change: ConversationChange,
        now: i64,
    ) -> Result<UserConversation> {
        let st = &self.st.conversations;
        let row = self.read_state(user, conversation, false).await?.unwrap_or_default();
        let mut state = state_of(conversation.clone(), &row)?;
        if row.created_at.is_none() {
            state.created_at = self.create_state(user, conversation, now).await?;
        }
        let key = (user.as_str(), conversation.as_str());
        match change {
            ConversationChange::Read { pos } => {
                let read = self.raise_read(user, conversation, row.read_pos, bound(pos, "pos")?).await?;
                state.read_pos = position(read);
            }
            ConversationChange::Pin { at } => {
                self.execute("pin conversation", &st.state_pin, (at, key.0, key.1)).await?;
                state.pinned_at = at;
            }
            ConversationChange::Unpin => {
                self.execute("unpin conversation", &st.state_pin, (0i64, key.0, key.1)).await?;
                state.pinned_at = 0;
            }
            ConversationChange::Clear { pos, id } => {
                let target = (bound(pos, "pos")?, id_value(id)?);
                let (pos, id) =
                    self.raise_cleared(user, conversation, (row.cleared_pos, row.cleared_id), target).await?;
                state.cleared_pos = position(pos);
                state.cleared_id = MessageId(position(id));
            }
            ConversationChange::Hide { pos } => {
                let hidden = bound(pos, "pos")?;
                self.execute("hide conversation", &st.state_hide, (hidden, key.0, key.1)).await?;
                state.hidden_pos = Some(pos);
                state.pinned_at = 0;
                state.read_pos = position(self.raise_read(user, conversation, row.read_pos, hidden).await?);
            }
        }
        Ok(state)
    }
}

impl Inner {
    /// A head as `ConversationStore::heads` returns it (without `recent`).
    async fn conversation_head(&self, conversation: &ConversationKey) -> Result<Option<ConversationHead>> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = self
            .first_row("read conversation head", &self.st.conversations.head_read, (conversation.as_str(),))
            .await?;
        let Some((pos, last_id, last_time)) = row else { return Ok(None) };
        let corrupt =
            |why: &str| Error::internal(format!("corrupt conversation head of {}: {why}", conversation.as_str()));
        let pos =
            u64::try_from(pos.ok_or_else(|| corrupt("no position"))?).map_err(|_| corrupt("negative position"))?;
        let last_id = u64::try_from(last_id.unwrap_or(0)).map_err(|_| corrupt("negative message id"))?;
        Ok(Some(ConversationHead { pos, last_id: MessageId(last_id), last_time: last_time.unwrap_or(0) }))
    }
}

#[async_trait]
impl ConversationStore for CqlStore {
    async fn heads(&self, conversations: &[ConversationKey]) -> Result<Vec<Option<ConversationHead>>> {
        let inner = &*self.inner;
        let reads: Vec<_> = conversations.iter().map(|c| inner.conversation_head(c)).collect();
        let heads: Vec<Result<_>> =
            stream::iter(reads).buffered(inner.options.fanout_concurrency.max(1)).collect().await;
        heads.into_iter().collect()
    }

    async fn user_conversations(&self, user: &UserId) -> Result<Vec<UserConversation>> {
        let inner = &*self.inner;
        let rows: Vec<StateValues> = inner
            .scan("list conversation states", &inner.st.conversations.states_scan, (user.as_str(),), usize::MAX)
            .await?;
        rows.into_iter()
            .map(|values| {
                let (conversation, row) = state_row(values);
                state_of(ConversationKey::from_stored(conversation), &row)
            })
            .collect()
    }

    async fn user_conversation(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
    ) -> Result<Option<UserConversation>> {
        let row = self.inner.read_state(user, conversation, false).await?;
        row.map(|row| state_of(conversation.clone(), &row)).transpose()
    }

    async fn update(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        change: ConversationChange,
        now: i64,
    ) -> Result<UserConversation> {
        self.inner.change_state(user, conversation, change, now).await
    }

    async fn remove_messages(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        messages: &[(MessageId, u64)],
    ) -> Result<()> {
        let inner = &*self.inner;
        let st = &inner.st.conversations;
        let rows: Vec<(&str, &str, i64, i64)> = messages
            .iter()
            .map(|(id, pos)| Ok((user.as_str(), conversation.as_str(), id_value(*id)?, bound(*pos, "pos")?)))
            .collect::<Result<_>>()?;
        for chunk in rows.chunks(REMOVED_BATCH) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(st.removed_insert.clone());
            }
            batch.set_is_idempotent(true);
            inner.session.batch(&batch, chunk).await.map_err(|e| error::execution("remove messages", e))?;
        }
        Ok(())
    }

    async fn removed_messages(
        &self,
        user: &UserId,
        conversation: &ConversationKey,
        after: MessageId,
    ) -> Result<Vec<(MessageId, u64)>> {
        let inner = &*self.inner;
        // No stored id is above the bigint range.
        let Ok(after) = i64::try_from(after.0) else { return Ok(Vec::new()) };
        let rows: Vec<(i64, Option<i64>)> = inner
            .scan(
                "read removed messages",
                &inner.st.conversations.removed_scan,
                (user.as_str(), conversation.as_str(), after),
                usize::MAX,
            )
            .await?;
        rows.into_iter()
            .map(|(id, pos)| {
                let corrupt =
                    || Error::internal(format!("corrupt removed message {id} of {user} in {}", conversation.as_str()));
                let id = u64::try_from(id).map_err(|_| corrupt())?;
                let pos = u64::try_from(pos.unwrap_or(0)).map_err(|_| corrupt())?;
                Ok((MessageId(id), pos))
            })
            .collect()
    }

    async fn recall(&self, conversation: &ConversationKey, message: MessageId, pos: u64) -> Result<()> {
        let inner = &*self.inner;
        // A plain write of the same cells: recalling again changes nothing.
        let values = (conversation.as_str(), id_value(message)?, bound(pos, "pos")?);
        inner.execute("recall message", &inner.st.conversations.recall_insert, values).await?;
        Ok(())
    }

    async fn recalled(&self, conversation: &ConversationKey, after: MessageId) -> Result<Vec<(MessageId, u64)>> {
        let inner = &*self.inner;
        // No stored id is above the bigint range.
        let Ok(after) = i64::try_from(after.0) else { return Ok(Vec::new()) };
        let rows: Vec<(i64, Option<i64>)> = inner
            .scan(
                "read recalled messages",
                &inner.st.conversations.recalled_scan,
                (conversation.as_str(), after),
                usize::MAX,
            )
            .await?;
        rows.into_iter()
            .map(|(id, pos)| {
                let corrupt = || Error::internal(format!("corrupt recalled message {id} in {}", conversation.as_str()));
                let id = u64::try_from(id).map_err(|_| corrupt())?;
                let pos = u64::try_from(pos.unwrap_or(0)).map_err(|_| corrupt())?;
                Ok((MessageId(id), pos))
            })
            .collect()
    }
}
