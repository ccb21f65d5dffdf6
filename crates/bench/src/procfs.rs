//! What the kernel says about a process and the machine: resident memory and
//! CPU time from `/proc/<pid>`, kernel TCP memory from `/proc/net/sockstat`,
//! and a description of the machine for the report. Read by hand: a few
//! lines each, no dependency.

use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times. 100 on every Linux
/// architecture Natter targets (USER_HZ is fixed by the kernel ABI).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_bytes: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub at: Instant,
}

/// Samples `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> std::io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    // The command name (field 2) may contain spaces: fields are counted after
    // its closing parenthesis. utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(ProcSample { rss_bytes: rss_kib * 1024, cpu_ticks: field(14) + field(15), at: Instant::now() })
}

/// The sum over several processes (a cluster's roles): RSS and CPU time
/// add up. `None` if there are none or one cannot be read (it died): a
/// partial sum would pass for the whole.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    let mut total = ProcSample { rss_bytes: 0, cpu_ticks: 0, at: Instant::now() };
    for &pid in pids {
        let s = sample(Some(pid)).ok()?;
        total.rss_bytes += s.rss_bytes;
        total.cpu_ticks += s.cpu_ticks;
    }
    (!pids.is_empty()).then_some(total)
}

/// Busy CPU time of the whole machine so far, in clock ticks (everything
/// but idle and iowait, all cores).
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find_map(|l| l.strip_prefix("cpu ")) else {
        return 0;
    };
    let ticks: Vec<u64> = cpu.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum()
}

/// CPU used between two samples, in percent of one core (200 = both cores).
pub fn cpu_percent(from: &ProcSample, to: &ProcSample) -> f64 {
    let secs = to.at.duration_since(from.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let used = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / TICKS_PER_SEC;
    100.0 * used / secs
}

/// Kernel memory that sockets cost: slab (socket, inode, file and epoll
/// objects) plus TCP buffer pages. Machine-wide, so the caller takes the
/// difference over a window in which little else happens; with loopback
/// connections it covers both ends.
pub fn kernel_socket_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    slab_kib * 1024 + kernel_tcp_bytes()
}

/// Kernel memory held by TCP socket buffers, in bytes (all sockets on the
/// machine).
pub fn kernel_tcp_bytes() -> u64 {
    let Ok(sockstat) = std::fs::read_to_string("/proc/net/sockstat") else {
        return 0;
    };
    sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let mut words = l.split_whitespace();
            while let Some(w) = words.next() {
                if w == "mem" {
                    return words.next()?.parse::<u64>().ok();
                }
            }
            None
        })
        .map_or(0, |pages| pages * 4096)
}

/// The soft open-file limit of `pid` (`None`: this process).
pub fn fd_limit(pid: Option<u32>) -> Option<u64> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let limits = std::fs::read_to_string(format!("{dir}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub hostname: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: mem_kib as f64 / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn samples_this_process() {
        let a = sample(None).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample(None).unwrap();
        assert!(a.rss_bytes > 0);
        assert!(cpu_percent(&a, &b) >= 0.0);
        assert!(machine().cores >= 1);
    }
}
