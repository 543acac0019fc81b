//! One run from start to end: servers up, every point measured, figures read, servers
//! stopped, goals checked, markdown printed (and written when asked).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::fleet::{Fleet, Target};
use crate::report::{self, Meta};
use crate::results::{Point, Results};
use crate::{goals, machine, sockets, switches, wrk};

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
    machine::describe(&mut meta);
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
            let point = measure(args, &load, target, c, &interrupted)?;
            let n = results.points.len() + 1;
            eprintln!("  [{n}/{total}] {}", progress(&point));
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
    meta.anchors = fleet.anchors.as_ref().map_or_else(
        || "nowhere: `--no-anchors`".to_string(),
        |dir| format!("`{}`", dir.display()),
    );
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

/// One point: wait for a quiet machine, warm up, measure.
fn measure(
    args: &Args,
    load: &wrk::Load,
    target: &Target,
    conns: u32,
    interrupted: &AtomicBool,
) -> Result<Point, String> {
    let stop = || interrupted.load(Ordering::SeqCst);
    let check = || match stop() {
        true => Err("interrupted: servers stopped, nothing written".to_string()),
        false => Ok(()),
    };
    let busy_before = machine::wait_quiet(Duration::from_secs(args.quiet_wait), stop);
    check()?;
    let warmup = match args.warmup {
        0 => None,
        secs => Some(load.run(&target.url, conns, secs)?),
    };
    check()?;
    let before = switches::sample(target.pid);
    let measured = load.run(&target.url, conns, args.duration)?;
    let after = switches::sample(target.pid);
    check()?;
    Ok(Point {
        kind: target.kind,
        conns,
        measured,
        warmup,
        busy_before,
        switches: switches::between(&before, &after),
    })
}

fn progress(p: &Point) -> String {
    let m = &p.measured;
    let bad: u64 = p.runs().map(|r| r.non_2xx + r.errors.total()).sum();
    let (vol, invol) = p.switches_per_request().unwrap_or((f64::NAN, f64::NAN));
    format!(
        "{:<22} c={:<3} {:>9.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  cs/req {vol:.2}+{invol:.2}  (busy before {:>5}){}",
        p.kind.label(),
        p.conns,
        m.rps,
        m.p50_ms.unwrap_or(f64::NAN),
        m.p99_ms.unwrap_or(f64::NAN),
        p.busy_before.map_or("—".to_string(), |b| format!("{b} %")),
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
