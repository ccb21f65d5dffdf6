//! `Leases` over CQL: one row per lease name whose `owner` cell lives for
//! the lease's ttl (`USING TTL`), so a dead holder's lease frees itself.
//! Taking is `INSERT … IF NOT EXISTS`, renewing `UPDATE … IF owner = ?`,
//! releasing `DELETE … IF owner = ?`: every change is a Paxos round, so two
//! processes never both hold a name.

use std::time::Duration;

use async_trait::async_trait;
use natter_types::{Error, Result};

use super::{CqlStore, backoff, error};
use crate::Leases;

/// Rounds of take-then-renew before giving up: each lost round means the
/// lease was released or expired between two statements, which is rare.
const MAX_ATTEMPTS: u32 = 10;

/// Cassandra's largest TTL (20 years).
const MAX_TTL_SECS: u64 = 630_720_000;

/// The TTL that keeps a lease for at least `ttl`: whole seconds rounded up,
/// at least 1, plus one more, because Cassandra counts a TTL from the start
/// of the second the write happened in (a row with TTL n lives between n-1
/// and n seconds).
pub(crate) fn lease_ttl_secs(ttl: Duration) -> i32 {
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
    secs.saturating_add(1).min(MAX_TTL_SECS) as i32
}

#[async_trait]
impl Leases for CqlStore {
    async fn acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let inner = &*self.inner;
        let ttl = lease_ttl_secs(ttl);
        for attempt in 0..MAX_ATTEMPTS {
            let taken = inner
                .conditional("take lease", &inner.st.lease_take, (name, owner, ttl))
                .await
                .map_err(|e| error::execution("take lease", e))?
                .checked()?;
            if taken.applied {
                return Ok(true);
            }
            match taken.text("owner") {
                Some(holder) if holder != owner => return Ok(false),
                Some(_) => {
                    let renewed = inner
                        .conditional("renew lease", &inner.st.lease_renew, (ttl, owner, name, owner))
                        .await
                        .map_err(|e| error::execution("renew lease", e))?
                        .checked()?;
                    if renewed.applied {
                        return Ok(true);
                    }
                }
                // Expired between the database's check and its answer.
                None => {}
            }
            backoff(attempt).await;
        }
        Err(Error::unavailable(format!("lease {name} changed hands {MAX_ATTEMPTS} times in a row; try again")))
    }

    async fn release(&self, name: &str, owner: &str) -> Result<()> {
        let inner = &*self.inner;
        inner
            .conditional("release lease", &inner.st.lease_release, (name, owner))
            .await
            .map_err(|e| error::execution("release lease", e))?
            .checked()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_and_covers_the_partial_second() {
        assert_eq!(lease_ttl_secs(Duration::from_millis(1)), 2);
        assert_eq!(lease_ttl_secs(Duration::from_secs(1)), 2);
        assert_eq!(lease_ttl_secs(Duration::from_millis(1_001)), 3);
        assert_eq!(lease_ttl_secs(Duration::from_secs(30)), 31);
        assert_eq!(lease_ttl_secs(Duration::ZERO), 2);
        assert_eq!(lease_ttl_secs(Duration::from_secs(u64::MAX)), MAX_TTL_SECS as i32);
    }
}
