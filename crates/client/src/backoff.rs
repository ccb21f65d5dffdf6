//! Reconnect delays: exponential with jitter, so a server restart is not met
//! by every client reconnecting in the same millisecond.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// The delay before the next attempt: `min * 2^attempt` capped at `max`,
    /// then drawn uniformly from its upper half ("equal jitter": spread out,
    /// yet never much faster than the schedule).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.base(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        let spread = half.as_nanos() as u64;
        let jitter = if spread == 0 { 0 } else { crate::random_u64() % (spread + 1) };
        half + Duration::from_nanos(jitter) + (base - half * 2)
    }

    /// Called once a connection has proved stable.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    fn base(&self, attempt: u32) -> Duration {
        // Past 2^20 the cap has long been reached; the shift must not overflow.
        let factor = 1u32 << attempt.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_stays_within_jitter_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        for attempt in 0..40u32 {
            let base = min.saturating_mul(1 << attempt.min(20)).min(max);
            let d = b.next_delay();
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?} not in [{:?}, {base:?}]", base / 2);
        }
        assert_eq!(b.attempt(), 40);
    }

    #[test]
    fn caps_at_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() <= Duration::from_millis(50));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn jitter_actually_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "every delay was identical: {seen:?}");
    }

    #[test]
    fn zero_min_and_max_below_min_are_harmless() {
        assert_eq!(Backoff::new(Duration::ZERO, Duration::ZERO).next_delay(), Duration::ZERO);
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(1));
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
