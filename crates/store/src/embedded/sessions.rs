//! The sessions open now (`SessionJournal`), for a start after a crash.

use async_trait::async_trait;
use natter_proto::v1;
use natter_types::{Result, SessionInfo, UserId};
use prost::Message as _;

use super::{EmbeddedStore, decode, key2, storage_err};
use crate::SessionJournal;

fn session_key(user: &UserId, session: &natter_types::SessionId) -> Vec<u8> {
    key2(user.as_str(), session.0.as_bytes())
}

#[async_trait]
impl SessionJournal for EmbeddedStore {
    async fn opened(&self, session: &SessionInfo) -> Result<()> {
        let (key, value) = (session_key(&session.user, &session.session), v1::SessionInfo::from(session));
        self.write_batch(move |inner, batch| {
            batch.insert(&inner.sessions, key, value.encode_to_vec());
            Ok(())
        })
        .await
    }

    async fn closed(&self, sessions: &[SessionInfo]) -> Result<()> {
        let keys: Vec<Vec<u8>> = sessions.iter().map(|s| session_key(&s.user, &s.session)).collect();
        self.writer
            .write_unsynced(move |round| {
                let inner = round.inner;
                let mut batch = inner.db.batch();
                for key in keys {
                    batch.remove(&inner.sessions, key);
                }
                round.commit(batch)
            })
            .await
    }

    async fn open_sessions(&self) -> Result<Vec<SessionInfo>> {
        self.inner
            .sessions
            .iter()
            .map(|item| {
                let (_, value) = item.into_inner().map_err(storage_err)?;
                Ok(decode::<v1::SessionInfo>(&value)?.try_into()?)
            })
            .collect()
    }
}
