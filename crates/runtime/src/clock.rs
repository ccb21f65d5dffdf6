//! The server clock: wall time anchored once, then advanced by tokio's
//! monotonic clock. Time rules (presence expiry, the recall window) use it,
//! never a client's clock, and paused-time tests drive it with `tokio::time`.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self { base_ms: natter_types::now_ms(), base: Instant::now() }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// A clock that reads `by_ms` later than this one (benchmarks use it to
    /// be "after" an expiry without waiting for it).
    pub fn shifted(&self, by_ms: i64) -> Self {
        Self { base_ms: self.base_ms + by_ms, base: self.base }
    }

    /// The instant at which the clock reads `ms` (now, if that is past).
    pub fn instant_at(&self, ms: i64) -> Instant {
        let offset = (ms - self.base_ms).max(0) as u64;
        (self.base + Duration::from_millis(offset)).max(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
