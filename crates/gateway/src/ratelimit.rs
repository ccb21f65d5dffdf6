/// Per-connection token bucket: `burst` requests at once, `rate` per second
/// sustained. Time comes from tokio so paused-time tests drive it.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate.max(1)), burst, tokens: burst, last: tokio::time::Instant::now() }
    }

    pub(crate) fn try_take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_sustained_rate() {
        let mut bucket = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take(), "burst used up");
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(bucket.try_take(), "one token per 100 ms at 10/s");
        assert!(!bucket.try_take());
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!((0..3).all(|_| bucket.try_take()), "refill caps at the burst");
        assert!(!bucket.try_take());
    }
}
