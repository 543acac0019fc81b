//! The machine the run is on: what the report says about it, and how busy it is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::Meta;
use crate::wrk;

/// A point starts once the machine is less busy than this, in percent (or after the wait).
pub const QUIET_PCT: u32 = 10;

/// Waits, at most `limit`, until the machine is under [`QUIET_PCT`] busy over half a second,
/// so that a point does not start while something else (a build) holds the CPUs. Returns the
/// last busy percentage measured (none when `limit` is zero). Stops waiting as soon as
/// `stop` says so.
pub fn wait_quiet(limit: Duration, stop: impl Fn() -> bool) -> Option<u32> {
    let deadline = Instant::now() + limit;
    let mut pct = None;
    while Instant::now() < deadline && !stop() {
        let before = cpu_ticks();
        thread::sleep(Duration::from_millis(500));
        let busy = busy_pct(before, cpu_ticks());
        pct = Some(busy);
        if busy < QUIET_PCT {
            break;
        }
    }
    pct
}

/// (busy, total) clock ticks of all CPUs since boot, from the `cpu` line of /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    parse_cpu_line(line)
}

/// `cpu  user nice system idle iowait irq softirq …` → (all but idle and iowait, all).
fn parse_cpu_line(line: &str) -> (u64, u64) {
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn busy_pct((busy0, total0): (u64, u64), (busy1, total1): (u64, u64)) -> u32 {
    let total = total1.saturating_sub(total0);
    match total {
        0 => 0,
        t => (100 * busy1.saturating_sub(busy0) / t) as u32,
    }
}

/// The workspace this program was built in (the parent of the `bench` package).
pub fn workspace_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// Fills in the date and the machine rows of the report.
pub fn describe(meta: &mut Meta) {
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_default();
    meta.date = date.clone();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let workspace = workspace_root();
    let git = output(
        "git",
        &[
            "-C",
            &workspace.to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = output(
        "git",
        &[
            "-C",
            &workspace.to_string_lossy(),
            "status",
            "--porcelain",
            "--",
            "echo_core",
            "service_a",
            "service_b",
        ],
    );
    let commit = match dirty.is_empty() {
        true => git,
        false => format!("{git}, with uncommitted changes to the services"),
    };
    meta.machine = vec![
        ("CPUs".into(), cpus.to_string()),
        ("CPU model".into(), model),
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
        ("load generator".into(), wrk::version()),
        ("commit".into(), commit),
        (
            "load average before the run".into(),
            read("/proc/loadavg")
                .split(' ')
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("date".into(), date),
    ];
}

/// A command's stdout, trimmed; empty if it cannot run.
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_from_proc_stat() {
        let a = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0");
        let b = parse_cpu_line("cpu  130 0 60 850 60 0 0 0 0 0");
        assert_eq!(a, (150, 1000));
        assert_eq!(busy_pct(a, b), 40);
        assert_eq!(busy_pct(a, a), 0);
        assert_eq!(parse_cpu_line(""), (0, 0));
    }
}
