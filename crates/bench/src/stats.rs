//! Measurement: one monotonic clock for the whole process (sender and
//! recipient are both in this process, so their timestamps compare), latency
//! histograms, and the counters the progress line shows.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (monotonic).
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The `Instant` that `ns` (from [`now_ns`]) stands for.
pub fn instant_of(ns: u64) -> Instant {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch + std::time::Duration::from_nanos(ns)
}

/// A latency histogram shared by many tasks. Values are microseconds,
/// 1 µs to 10 minutes at 3 significant digits.
pub struct Latency {
    hist: Mutex<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts; fall back to an
        // auto-resizing histogram rather than panic if that ever changed.
        let hist = Histogram::new_with_bounds(1, 600_000_000, 3)
            .or_else(|_| Histogram::new(3))
            .unwrap_or_else(|_| unreachable_histogram());
        Self { hist: Mutex::new(hist) }
    }

    pub fn record_ns(&self, ns: u64) {
        self.hist.lock().saturating_record((ns / 1000).max(1));
    }

    /// Records a batch under one lock (tasks buffer locally, see [`LocalLatency`]).
    pub fn record_many_ns(&self, values: &[u64]) {
        let mut hist = self.hist.lock();
        for ns in values {
            hist.saturating_record((ns / 1000).max(1));
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let hist = self.hist.lock();
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }
}

#[allow(clippy::unwrap_used)] // only reached if both constructors above fail
fn unreachable_histogram() -> Histogram<u64> {
    Histogram::new(2).unwrap()
}

/// A task-local buffer in front of a shared [`Latency`], so that hot paths
/// take the lock once per 256 samples, not per sample. Flushes on drop.
pub struct LocalLatency<'a> {
    sink: &'a Latency,
    buf: Vec<u64>,
}

impl<'a> LocalLatency<'a> {
    pub fn new(sink: &'a Latency) -> Self {
        Self { sink, buf: Vec::new() }
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.buf.push(ns);
        if self.buf.len() >= 256 {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.sink.record_many_ns(&self.buf);
            self.buf.clear();
        }
    }
}

impl Drop for LocalLatency<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Counters every scenario shares; the progress line prints them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sockets that finished the WebSocket handshake.
    pub connected: AtomicU64,
    /// Sessions that received `caught_up` (ready for the scenario).
    pub ready: AtomicU64,
    /// Connect attempts that failed.
    pub connect_failed: AtomicU64,
    /// Sockets that ended before the scenario let them go.
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
    /// `send` responses that were a success.
    pub acked: AtomicU64,
    /// Error responses (any code) and undecodable frames.
    pub errors: AtomicU64,
    /// Benchmark messages delivered to a recipient that counts.
    pub delivered: AtomicU64,
    /// Benchmark messages that arrived but belong to an earlier phase.
    pub stale: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            connected: Self::get(&self.connected),
            ready: Self::get(&self.ready),
            connect_failed: Self::get(&self.connect_failed),
            dropped: Self::get(&self.dropped),
            sent: Self::get(&self.sent),
            acked: Self::get(&self.acked),
            errors: Self::get(&self.errors),
            delivered: Self::get(&self.delivered),
            stale: Self::get(&self.stale),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub connected: u64,
    pub ready: u64,
    pub connect_failed: u64,
    pub dropped: u64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub delivered: u64,
    pub stale: u64,
}

impl CounterSnapshot {
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            connected: self.connected.saturating_sub(earlier.connected),
            ready: self.ready.saturating_sub(earlier.ready),
            connect_failed: self.connect_failed.saturating_sub(earlier.connect_failed),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            sent: self.sent.saturating_sub(earlier.sent),
            acked: self.acked.saturating_sub(earlier.acked),
            errors: self.errors.saturating_sub(earlier.errors),
            delivered: self.delivered.saturating_sub(earlier.delivered),
            stale: self.stale.saturating_sub(earlier.stale),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn latency_summary_reports_milliseconds() {
        let lat = Latency::new();
        {
            let mut local = LocalLatency::new(&lat);
            for ms in 1..=100u64 {
                local.record_ns(ms * 1_000_000);
            }
        }
        let s = lat.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.5, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.5, "{s:?}");
    }
}
