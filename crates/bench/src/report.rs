//! Results as JSON (everything) and a Markdown summary (the tables that go
//! into docs/PERFORMANCE.md#latest-results), written side by side as
//! `<dir>/<date>.{json,md}`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::scenarios::Usage;
use crate::stats::LatencySummary;
use crate::suite::SuiteReport;

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}{unit}"))
}

/// The server's CPU time per message or delivery: what one costs it, which
/// compares builds without the window's rate in the way.
fn cpu_per(cpu_percent: Option<f64>, per_sec: f64) -> String {
    match cpu_percent {
        Some(cpu) if per_sec > 0.0 => format!("{:.2}", cpu / 100.0 / per_sec * 1e6),
        _ => "–".into(),
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn ms(v: f64) -> String {
    if v < 10.0 { format!("{v:.2}") } else { format!("{v:.1}") }
}

fn lat(l: &LatencySummary) -> String {
    format!("{} / {} / {} / {}", ms(l.p50_ms), ms(l.p99_ms), ms(l.p999_ms), ms(l.max_ms))
}

/// The disk probe's sync p99 and max over a window, and how many syncs
/// took over 10 ms.
fn disk(usage: &Usage) -> String {
    match &usage.disk_syncs {
        Some(d) => format!("{} / {} ({})", ms(d.latency.p99_ms), ms(d.latency.max_ms), d.stalls),
        None => "–".into(),
    }
}

pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How the read scenarios measure (said once above each of their tables).
const READ_SCENARIOS: &str = "Latency is client-side: the request written to the WebSocket → its response read off it, one \
request at a time on one connection, at most 45 requests/s (under the server's per-connection limit of 50/s, so the \
limiter is never what is measured). Pages/s back to back is pages ÷ the time spent waiting for them: what one client \
paging without pause would get were it not for that limit. Ping is a `ping` request on the same socket between pages: \
the floor under every request (WebSocket, gateway, request worker), so a page's own cost is its latency minus the \
ping's. Server CPU per page is over the paced window, pings and the server's background work (heartbeats, \
compactions after seeding) included.";

/// How the receipts scenario measures (said once above its table).
const RECEIPTS: &str = "One sender, the owner of the group, sends messages that ask for read receipts \
(`msg_config.allow_group_ack`); every other member is online and, on receiving one, sends a read receipt for it \
at once, without waiting for the answer to its previous ones (the server runs a connection's requests one at a \
time). The sender keeps a window of messages open: sent, and not yet at their full read count. Receipts/s is the \
receipts answered ok ÷ the time from the first such answer to the last. Last receipt → sender is, per message, \
the send of its last member's receipt → the sender's `onReadMessage` whose `group_read_count` reaches the member \
count, read off the sender's socket (the server coalesces counts: while one write of the sender's log is in \
flight further receipts wait, and the next event carries the newest count; Count events is how many the sender \
got). Receipt answer is a receipt sent → its ok answer, which the server gives once an event covering it is \
durable. Wrong counts are acknowledged messages whose final count, as the sender was told it, is not the member \
count. A natter the bench starts gets a per-connection request limit it never reaches; a running one is \
measured as configured.";

pub fn markdown(r: &SuiteReport) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# Natter benchmark: {} suite, {}\n", r.suite, r.date);
    let _ = writeln!(
        md,
        "Machine: {} ({} cores), {:.1} GiB, Linux {}; the load generator runs on the same machine.  ",
        m.cpu, m.cores, m.memory_gib, m.kernel
    );
    let _ = writeln!(
        md,
        "Natter {} (commit {}); {:.0} s in all.  ",
        r.natter,
        r.git_rev.as_deref().unwrap_or("unknown"),
        r.duration_secs
    );
    if let Some(nats) = &r.nats {
        let _ = writeln!(md, "NATS baseline: nats-server {} at {}.  ", nats.version, nats.url);
    }
    let _ = writeln!(md, "Command: `{}`\n", r.command);

    if !r.checks.is_empty() {
        let _ = writeln!(md, "## Targets (2-core box, single node)\n");
        let _ = writeln!(md, "| Target | Goal | Measured | Met |\n|---|---|---|---|");
        for c in &r.checks {
            let _ =
                writeln!(md, "| {} | {} | {} | {} |", c.name, c.goal, c.measured, if c.met { "yes" } else { "**no**" });
        }
        md.push('\n');
    }

    if !r.idle.is_empty() {
        let _ = writeln!(md, "## Idle connections\n");
        let _ = writeln!(
            md,
            "| Server | Ready / requested | Connects/s | Server RSS before → after | Server RSS / conn | Bench RSS / conn | Kernel / conn (both ends) | Alive after hold | Server CPU while connecting | Bench CPU | Other CPU |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for i in &r.idle {
            let _ = writeln!(
                md,
                "| {} | {} / {} | {} | {} → {} MiB | {} | {} | {} | {} | {} | {:.0}% | {:.0}% |",
                i.target,
                thousands(i.ready as f64),
                thousands(i.requested as f64),
                thousands(i.connects_per_sec),
                opt(i.server_rss_before_mib, ""),
                opt(i.server_rss_after_mib, ""),
                i.server_rss_per_conn_bytes.map_or("–".into(), kib),
                kib(i.bench_rss_per_conn_bytes),
                kib(i.kernel_per_conn_bytes),
                thousands(i.alive_after_hold as f64),
                opt(i.connect_usage.server_cpu_percent, "%"),
                i.connect_usage.bench_cpu_percent,
                i.connect_usage.other_cpu_percent,
            );
        }
        md.push('\n');
    }

    if !r.direct.is_empty() {
        let _ = writeln!(md, "## 1:1 persisted messages\n");
        for d in &r.direct {
            let _ = writeln!(
                md,
                "{}: {} users in pairs, {}-byte texts; latency is intended send → delivered to the peer, in ms.\n",
                d.target, d.users, d.payload_bytes
            );
        }
        let _ = writeln!(
            md,
            "| Server | Load | Offered msg/s | Achieved msg/s | p50 / p99 / p99.9 / max | Ack p50 / p99 | Errors | Undelivered | Server CPU | Server CPU per message (µs) | Bench CPU | Other CPU | Disk sync p99 / max, ms (over 10 ms) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for d in &r.direct {
            for s in d.steps.iter().chain(d.saturation.iter()) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} |",
                    d.target,
                    if s.mode == "closed" { "saturation (closed loop)" } else { "fixed (open loop)" },
                    s.offered_per_sec.map_or("–".into(), thousands),
                    thousands(s.throughput_per_sec),
                    lat(&s.latency),
                    ms(s.ack_latency.p50_ms),
                    ms(s.ack_latency.p99_ms),
                    s.errors,
                    s.undelivered,
                    opt(s.usage.server_cpu_percent, "%"),
                    cpu_per(s.usage.server_cpu_percent, s.throughput_per_sec),
                    s.usage.bench_cpu_percent,
                    s.usage.other_cpu_percent,
                    disk(&s.usage),
                );
            }
        }
        md.push('\n');
    }

    if !r.fanout.is_empty() {
        let _ = writeln!(md, "## Group fan-out (every member online)\n");
        let _ = writeln!(
            md,
            "| Server | Group size × groups | Senders | Messages | Deliveries | Deliveries/s | vs natter | Time to last recipient p50 / p99 / p99.9 / max (ms) | Ack p99 (ms) | Server CPU | Server CPU per delivery (µs) | Bench CPU | Other CPU | Disk sync p99 / max, ms (over 10 ms) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for f in &r.fanout {
            let natter =
                r.fanout.iter().find(|n| n.target == "natter" && n.group_size == f.group_size && n.groups == f.groups);
            // A row that timed out has no rate: its deliveries stopped early.
            let vs = natter.map_or("–".into(), |n| {
                if !(f.complete && n.complete) {
                    "–".into()
                } else if f.target == "natter" {
                    "1.00".into()
                } else {
                    format!("natter = {:.2} ×", n.deliveries_per_sec / f.deliveries_per_sec.max(1.0))
                }
            });
            let _ = writeln!(
                md,
                "| {} | {} × {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} |",
                f.target,
                f.group_size,
                f.groups,
                f.senders,
                thousands(f.messages as f64),
                thousands(f.deliveries as f64),
                if f.complete {
                    String::new()
                } else {
                    format!(" of {} (timed out)", thousands(f.expected_deliveries as f64))
                },
                if f.complete { thousands(f.deliveries_per_sec) } else { "–".into() },
                vs,
                lat(&f.time_to_last),
                // No acks from a baseline that has none (NATS).
                if f.ack_latency.count == 0 { "–".to_owned() } else { ms(f.ack_latency.p99_ms) },
                opt(f.usage.server_cpu_percent, "%"),
                if f.complete { cpu_per(f.usage.server_cpu_percent, f.deliveries_per_sec) } else { "–".into() },
                f.usage.bench_cpu_percent,
                f.usage.other_cpu_percent,
                disk(&f.usage),
            );
        }
        md.push('\n');
    }

    if !r.presence.is_empty() {
        let _ = writeln!(md, "## Presence change fan-out\n");
        let _ = writeln!(
            md,
            "One user publishes a new status each round; every subscriber is online. Time is publish sent → the \
             last subscriber's `onPresenceStatusChange`.\n"
        );
        let _ = writeln!(
            md,
            "| Subscribers | Rounds (complete) | To last p50 / p99 / max (ms) | Deliveries/s |\n|---|---|---|---|"
        );
        for p in &r.presence {
            let _ = writeln!(
                md,
                "| {} | {} ({}) | {:.1} / {:.1} / {:.1} | {:.0} |",
                p.subscribers,
                p.rounds,
                p.complete_rounds,
                p.to_last.p50_ms,
                p.to_last.p99_ms,
                p.to_last.max_ms,
                p.deliveries_per_sec
            );
        }
        let _ = writeln!(md);
    }
    if let Some(s) = &r.sweeper {
        let _ = writeln!(md, "## Presence expiry sweeper\n");
        let _ = writeln!(
            md,
            "{} stored subscriptions that all expire at once, swept by the real sweeper over the embedded store \
             (in the bench process).\n",
            s.subscriptions
        );
        let _ = writeln!(
            md,
            "| Subscriptions | Write (s) | Load schedule (s) | Sweep (s) | Removed | CPU per removed (µs) | Schedule RSS per entry (B) |\n|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.2} | {:.2} | {} | {:.1} | {:.0} |\n",
            s.subscriptions,
            s.write_secs,
            s.load_secs,
            s.sweep_secs,
            s.removed,
            s.cpu_us_per_removed,
            s.schedule_rss_bytes_per_entry
        );
    }

    if !r.conversations.is_empty() {
        let _ = writeln!(md, "## Conversation list (C1)\n");
        let _ = writeln!(md, "{READ_SCENARIOS}\n");
        for c in &r.conversations {
            let _ = writeln!(
                md,
                "{}: one user with {} conversations ({} 1:1, each peer sent one message; {} groups), its client pages \
                 the whole list with pages of {}, {} times ({} pages).\n",
                c.target,
                c.seeded,
                c.seeded - c.groups,
                c.groups,
                c.page_size,
                c.passes,
                c.pages
            );
        }
        let _ = writeln!(
            md,
            "| Server | Listed / seeded | Pages | Page p50 / p99 / p99.9 / max (ms) | First page p50 / p99 | Last page p50 / p99 | Ping p50 / p99 | Pages/s back to back | Errors | Wrong passes | Server CPU | Server CPU per page (µs) | Bench CPU | Other CPU |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for c in &r.conversations {
            let _ = writeln!(
                md,
                "| {} | {} / {} | {} | {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% |",
                c.target,
                c.listed,
                c.seeded,
                c.pages,
                lat(&c.page_latency),
                ms(c.first_page.p50_ms),
                ms(c.first_page.p99_ms),
                ms(c.last_page.p50_ms),
                ms(c.last_page.p99_ms),
                ms(c.ping.p50_ms),
                ms(c.ping.p99_ms),
                thousands(c.pages_per_sec),
                c.errors,
                c.mismatched_passes,
                opt(c.usage.server_cpu_percent, "%"),
                cpu_per(c.usage.server_cpu_percent, c.wall_pages_per_sec),
                c.usage.bench_cpu_percent,
                c.usage.other_cpu_percent,
            );
        }
        md.push('\n');
    }

    if !r.history.is_empty() {
        let _ = writeln!(md, "## History (C5)\n");
        let _ = writeln!(md, "{READ_SCENARIOS}\n");
        for h in &r.history {
            let _ = writeln!(
                md,
                "{}: one group conversation with {} messages (seeded by {} members in {:.0} s, {} msg/s, not measured), \
                 paged with pages of {} in walks of {} pages: from the newest message up, from a random message up \
                 (older), from a random message down (newer), in turn.\n",
                h.target,
                thousands(h.messages as f64),
                h.senders,
                h.seed_secs,
                thousands(h.seed_messages_per_sec),
                h.page_size,
                h.walk_pages
            );
        }
        let _ = writeln!(
            md,
            "| Server | Walk | Pages | Page p50 / p99 / p99.9 / max (ms) | Pages/s back to back | Errors | Wrong pages | Server CPU | Server CPU per page (µs) | Bench CPU | Other CPU |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for h in &r.history {
            for (walk, l) in
                [("newest, up", &h.newest_up), ("random, up", &h.random_up), ("random, down", &h.random_down)]
            {
                let _ = writeln!(md, "| {} | {walk} | {} | {} | | | | | | | |", h.target, l.count, lat(l));
            }
            let _ = writeln!(
                md,
                "| {} | **all** | {} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% |",
                h.target,
                h.pages,
                lat(&h.page_latency),
                thousands(h.pages_per_sec),
                h.errors,
                h.mismatched_pages,
                opt(h.usage.server_cpu_percent, "%"),
                cpu_per(h.usage.server_cpu_percent, h.wall_pages_per_sec),
                h.usage.bench_cpu_percent,
                h.usage.other_cpu_percent,
            );
            let _ = writeln!(md, "| {} | ping (floor) | {} | {} | | | | | | | |", h.target, h.ping.count, lat(&h.ping));
        }
        md.push('\n');
    }

    if !r.receipts.is_empty() {
        let _ = writeln!(md, "## Group read receipts (R5/R6)\n");
        let _ = writeln!(md, "{RECEIPTS}\n");
        for c in &r.receipts {
            let _ = writeln!(
                md,
                "{}: a group of {} members and the sender; {} messages of {} bytes, at most {} open at once{}.\n",
                c.target,
                c.members,
                thousands(c.messages as f64),
                c.payload_bytes,
                c.window,
                if c.rate > 0.0 { format!(", sent at most {} a second", c.rate) } else { String::new() }
            );
        }
        let _ = writeln!(
            md,
            "| Server | Gateways | Members | Messages | Receipts ok / expected | Receipts/s | Count events | Last receipt → sender p50 / p99 / p99.9 / max (ms) | Receipt answer p50 / p99 (ms) | Ack p99 (ms) | Errors | Wrong counts | Server CPU | Server CPU per receipt (µs) | Server RSS | Bench CPU | Other CPU | Disk sync p99 / max, ms (over 10 ms) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for c in &r.receipts {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} / {}{} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} |",
                c.target,
                c.gateways,
                c.members,
                thousands(c.messages as f64),
                thousands(c.receipts as f64),
                thousands(c.expected_receipts as f64),
                if c.complete { "" } else { " (timed out)" },
                thousands(c.receipts_per_sec),
                thousands(c.count_events as f64),
                lat(&c.to_sender),
                ms(c.receipt_latency.p50_ms),
                ms(c.receipt_latency.p99_ms),
                ms(c.ack_latency.p99_ms),
                c.errors,
                c.wrong_counts,
                opt(c.usage.server_cpu_percent, "%"),
                cpu_per(c.usage.server_cpu_percent, c.receipts_per_sec),
                opt(c.usage.server_rss_mib, " MiB"),
                c.usage.bench_cpu_percent,
                c.usage.other_cpu_percent,
                disk(&c.usage),
            );
        }
        md.push('\n');
    }

    if !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// Writes `<dir>/<date>[-suite].json` and `.md`; a second run on the same
/// day gets a numbered name instead of overwriting the first.
pub fn write(report: &SuiteReport, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let stem =
        if report.suite == "standard" { report.date.clone() } else { format!("{}-{}", report.date, report.suite) };
    let mut n = 1;
    let mut name = stem.clone();
    while dir.join(format!("{name}.md")).exists() || dir.join(format!("{name}.json")).exists() {
        n += 1;
        name = format!("{stem}-{n}");
    }
    let json = dir.join(format!("{name}.json"));
    let md = dir.join(format!("{name}.md"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    std::fs::write(&md, markdown(report))?;
    Ok((json, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_unit_is_in_microseconds_and_needs_both_figures() {
        // 100 % of one core for 500,000 deliveries a second: 2 µs each.
        assert_eq!(cpu_per(Some(100.0), 500_000.0), "2.00");
        assert_eq!(cpu_per(Some(140.0), 20_000.0), "70.00");
        // A server whose CPU was not sampled (given by address), or nothing done.
        assert_eq!(cpu_per(None, 500_000.0), "–");
        assert_eq!(cpu_per(Some(100.0), 0.0), "–");
    }
}
