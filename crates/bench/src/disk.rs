//! A probe of the disk's own sync latency, run next to every measured
//! window. The store's tail at a fixed load is set by its fsyncs; on a
//! shared virtual disk they sometimes stall for hundreds of milliseconds
//! with nothing of ours running (docs/PERFORMANCE.md#11-tail-latency). A
//! window whose probe saw such a stall says so next to its latencies
//! (docs/PERFORMANCE.md#disk-probe).
//!
//! The probe overwrites one block of a file it wrote whole at the start and
//! `fdatasync`s it: no allocation and no metadata to commit, so each sync
//! is the device's write and cache flush, plus whatever the device has
//! queued before it. It costs the measured run about as little as a sync
//! can: one 4 KiB write per interval. When both cores are busy, the probe's
//! thread also waits for one after its sync completes; that wait (the
//! kernel's run-queue time for the thread) is not the disk's and is taken
//! out.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{Latency, LatencySummary};

/// How often the probe syncs: often enough to see a 20 ms stall, rarely
/// enough to add ~2 % to the writes of a 1:1 run at 10,000 msg/s.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// A sync slower than this counts as a stall (the 1:1 p99 target).
const STALL: Duration = Duration::from_millis(10);

const BLOCK: usize = 4096;
const BLOCKS: u64 = 16;

/// What the probe saw over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskSyncs {
    /// Latency of one 4 KiB overwrite and `fdatasync`.
    pub latency: LatencySummary,
    /// Syncs slower than 10 ms.
    pub stalls: u64,
    /// Their time added up, in ms: how long the disk held writes back.
    pub stalled_ms: f64,
}

/// The running probe; [`DiskProbe::stop`] ends it (so does dropping it).
pub struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<DiskSyncs>>,
}

impl DiskProbe {
    /// Starts syncing a file of its own in `dir` every `interval`; the file
    /// goes when the probe stops.
    pub fn start(dir: &Path, interval: Duration) -> std::io::Result<Self> {
        let mut file = tempfile::Builder::new().prefix("natter-bench-sync-probe-").tempfile_in(dir)?;
        file.write_all(&[0; BLOCK * BLOCKS as usize])?;
        file.as_file().sync_all()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("disk-probe".into())
            .spawn(move || probe(file.as_file(), interval, &flag))?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops the probe and says what it saw.
    pub fn stop(mut self) -> DiskSyncs {
        self.halt().unwrap_or_default()
    }

    fn halt(&mut self) -> Option<DiskSyncs> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl Drop for DiskProbe {
    fn drop(&mut self) {
        self.halt();
    }
}

fn probe(file: &File, interval: Duration, stop: &AtomicBool) -> DiskSyncs {
    let latency = Latency::new();
    let (mut stalls, mut stalled) = (0, Duration::ZERO);
    let block = [0xa5; BLOCK];
    let mut n = 0u64;
    // At least one sync, however soon the window closes.
    loop {
        let started = Instant::now();
        let queued_before = run_queue_wait();
        let synced = file.write_all_at(&block, (n % BLOCKS) * BLOCK as u64).and_then(|()| file.sync_data());
        let waited_for_core = run_queue_wait().saturating_sub(queued_before);
        let took = started.elapsed().saturating_sub(waited_for_core);
        if let Err(e) = synced {
            tracing::warn!(error = %e, "disk probe failed; its figures end here");
            break;
        }
        latency.record_ns(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        if took > STALL {
            stalls += 1;
            stalled += took;
        }
        n += 1;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(interval.saturating_sub(took));
    }
    DiskSyncs { latency: latency.summary(), stalls, stalled_ms: stalled.as_secs_f64() * 1e3 }
}

/// How long this thread has waited for a core so far (the second field of
/// `/proc/thread-self/schedstat`); zero where that is not available.
fn run_queue_wait() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| parse_run_queue_wait(&s))
        .unwrap_or_default()
}

/// `schedstat` is "time on a core, time waiting for one (both ns), slices".
fn parse_run_queue_wait(schedstat: &str) -> Option<Duration> {
    schedstat.split_whitespace().nth(1)?.parse().ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_probe_times_each_sync_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let probe = DiskProbe::start(dir.path(), Duration::from_millis(1)).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the probe's file");
        // Stopped at once: a probe times at least one sync, however short its window.
        let seen = probe.stop();
        assert!(seen.latency.count >= 1, "{seen:?}");
        assert!(seen.latency.max_ms >= seen.latency.p50_ms && seen.latency.p50_ms > 0.0, "{seen:?}");
        assert!(seen.stalled_ms >= seen.stalls as f64 * 10.0, "{seen:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file is removed");
    }

    #[test]
    fn the_run_queue_wait_is_schedstats_second_field() {
        assert_eq!(parse_run_queue_wait("275640 1200 2\n"), Some(Duration::from_nanos(1200)));
        assert_eq!(parse_run_queue_wait("275640"), None);
        assert_eq!(parse_run_queue_wait("a b c"), None);
    }
}
