//! One run from start to end: servers up, every point measured, figures read, servers
//! stopped, goals checked, markdown printed (and written when asked).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::cli::Args;
use crate::fleet::Fleet;
use crate::report::{self, Meta};
use crate::results::{Point, Results};
use crate::{goals, sockets, wrk};

/// Runs the benchmark; an error is one line saying why it could not run.
pub fn run(args: &Args) -> Result<(), String> {
    let conns = args.checked_conns()?;
    wrk::check_installed()?;
    // Ctrl-C reaches wrk (same session) and sets this; the servers, in sessions of their own,
    // are then stopped by the fleet's drop.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let mut meta = Meta::default();
    machine(&mut meta);
    let work = WorkDir::create(args.keep)?;
    eprintln!(
        "==> starting the servers on free loopback ports (logs in {})",
        work.0.display()
    );
    let fleet = Fleet::start(args, &work.0)?;
    for note in &fleet.notes {
        eprintln!("    {note}");
    }
    let load = wrk::Load {
        threads: args.threads,
        timeout: args.wrk_timeout.clone(),
    };
    let total = conns.len() * fleet.targets.len();
    eprintln!(
        "==> measuring: {} s per point (+{} s warm-up), connections {conns:?}, {total} points",
        args.duration, args.warmup
    );
    let started = Instant::now();
    let mut results = Results::default();
    for &c in &conns {
        for target in &fleet.targets {
            let check = || match interrupted.load(Ordering::SeqCst) {
                true => Err("interrupted: servers stopped, nothing written".to_string()),
                false => Ok(()),
            };
            check()?;
            let warmup = match args.warmup {
                0 => None,
                secs => Some(load.run(&target.url, c, secs)?),
            };
            let measured = load.run(&target.url, c, args.duration)?;
            check()?;
            let point = Point {
                kind: target.kind,
                conns: c,
                measured,
                warmup,
            };
            eprintln!(
                "  [{}/{total}] {}",
                results.points.len() + 1,
                progress(&point)
            );
            results.points.push(point);
        }
    }
    meta.elapsed_secs = started.elapsed().as_secs();
    results.peak_rss_kib = fleet
        .servers
        .iter()
        .map(|s| (s.name().to_string(), s.peak_rss_kib()))
        .collect();
    (results.time_wait_on_ports, results.time_wait_machine) = sockets::time_wait(&fleet.ports());
    meta.notes = fleet.notes.clone();
    drop(fleet);

    let goals = goals::check(&results);
    meta.command = command_line();
    meta.duration = args.duration;
    meta.warmup = args.warmup;
    meta.threads = args.threads;
    meta.wrk_timeout = args.wrk_timeout.clone();
    let markdown = report::render(&meta, &results, &goals);
    print!("{markdown}");
    if let Some(path) = &args.write {
        std::fs::write(path, &markdown)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("==> written to {}", path.display());
    }
    Ok(())
}

fn progress(p: &Point) -> String {
    let m = &p.measured;
    let bad: u64 = p.runs().map(|r| r.non_2xx + r.errors.total()).sum();
    format!(
        "{:<22} c={:<3} {:>9.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms{}",
        p.kind.label(),
        p.conns,
        m.rps,
        m.p50_ms.unwrap_or(f64::NAN),
        m.p99_ms.unwrap_or(f64::NAN),
        if bad > 0 {
            format!("  {bad} non-2xx or socket errors")
        } else {
            String::new()
        }
    )
}

/// The command as a reader would type it again.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut line = "cargo run --release -p bench --".to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg);
    }
    line
}

/// The machine rows and the date.
fn machine(meta: &mut Meta) {
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
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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

/// The work directory (server logs): removed at the end unless kept.
struct WorkDir(PathBuf, bool);

impl WorkDir {
    fn create(keep: bool) -> Result<WorkDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("bench.{}.{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(WorkDir(path, keep))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("==> work directory kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
