//! The goals, checked in one table: each a row of what was asked, what was measured and
//! whether it was met. A goal whose points did not run (anchors not built, a connection count
//! left out) is "not run", never met.

use crate::results::{Kind, Results};

/// Peak RSS of each of our services stays under this (32 MB).
pub const RSS_LIMIT_KIB: u64 = 32 * 1024;
/// Fewer TIME_WAIT sockets than this after the run, on the ports of the servers.
pub const TIME_WAIT_LIMIT: u64 = 1000;
/// The chain against actix-web's chain, at (connections, at least this many times).
pub const CHAIN_VS_ACTIX: [(u32, f64); 2] = [(64, 1.0), (16, 1.2)];
/// Connection counts at which the chain's p99 must be no worse than actix-web's.
pub const CHAIN_P99_CONNS: [u32; 2] = [16, 64];
/// A `/echo` at 64 connections as a share of the ceiling before the work of issue 15, in
/// percent: bench/RESULTS.md as `bench/run.sh` wrote it on 2026-11-25 10:45 UTC (commit
/// e28a5ce), 40,929 of the ceiling's 49,110 req/s. "A no slower than today".
pub const A_OF_CEILING_BEFORE_PCT: f64 = 83.3;
/// The connection count of that figure.
pub const A_OF_CEILING_CONNS: u32 = 64;

/// Whether a goal was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Met.
    Met,
    /// Missed.
    Missed,
    /// Could not be judged: its points did not run.
    NotRun,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    /// As the table shows it.
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotRun => "not run",
        }
    }
}

/// One row of the goal table.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    /// What was asked.
    pub goal: String,
    /// What was measured, or why nothing was.
    pub measured: String,
    /// Met, missed or not run.
    pub verdict: Verdict,
}

fn row(goal: String, measured: String, verdict: Verdict) -> Goal {
    Goal {
        goal,
        measured,
        verdict,
    }
}

fn not_run(goal: String, why: &str) -> Goal {
    row(goal, why.to_string(), Verdict::NotRun)
}

/// Checks every goal against a run's results.
pub fn check(r: &Results) -> Vec<Goal> {
    let mut goals = vec![non_2xx(r), socket_errors(r)];
    for name in ["service_a", "service_b"] {
        goals.push(rss(r, name));
    }
    goals.push(row(
        format!(
            "fewer than {TIME_WAIT_LIMIT} TIME_WAIT sockets after the run (ports of the servers)"
        ),
        r.time_wait_on_ports.to_string(),
        Verdict::of(r.time_wait_on_ports < TIME_WAIT_LIMIT),
    ));
    for (conns, times) in CHAIN_VS_ACTIX {
        goals.push(chain_vs_actix(r, conns, times));
    }
    for conns in CHAIN_P99_CONNS {
        goals.push(chain_p99(r, conns));
    }
    goals.push(a_of_ceiling(r));
    goals
}

fn non_2xx(r: &Results) -> Goal {
    let runs = r.runs().count();
    let goal = format!("zero non-2xx in every wrk run ({runs} runs, warm-ups included)");
    if runs == 0 {
        return not_run(goal, "no wrk run");
    }
    let (n, empty) = (r.non_2xx(), r.empty_runs());
    let mut measured = n.to_string();
    if empty > 0 {
        measured += &format!("; {empty} run(s) completed no request");
    }
    row(goal, measured, Verdict::of(n == 0 && empty == 0))
}

fn socket_errors(r: &Results) -> Goal {
    let runs = r.runs().count();
    let goal = format!(
        "zero socket errors (connect, read, write, timeout) in every wrk run ({runs} runs)"
    );
    if runs == 0 {
        return not_run(goal, "no wrk run");
    }
    let e = r.errors();
    let measured = format!(
        "{} ({} connect, {} read, {} write, {} timeout)",
        e.total(),
        e.connect,
        e.read,
        e.write,
        e.timeout
    );
    row(goal, measured, Verdict::of(e.total() == 0))
}

fn rss(r: &Results, name: &str) -> Goal {
    let goal = format!("{name} peak RSS under {} MB", RSS_LIMIT_KIB / 1024);
    match r.rss_of(name) {
        Some(kib) => row(goal, mb(kib), Verdict::of(kib < RSS_LIMIT_KIB)),
        None => not_run(goal, "not read (/proc/PID/status)"),
    }
}

fn chain_vs_actix(r: &Results, conns: u32, times: f64) -> Goal {
    let goal = format!("B→A chain ≥ {times:.1}× actix-web's chain at {conns} connections");
    let (Some(ours), Some(actix)) = (r.get(Kind::B, conns), r.get(Kind::ActixB, conns)) else {
        return not_run(goal, &missing(r, Kind::ActixB, conns));
    };
    let (a, b) = (ours.measured.rps, actix.measured.rps);
    let x = if b > 0.0 { a / b } else { 0.0 };
    let measured = format!("{x:.2}× ({a:.0} vs {b:.0} req/s)");
    row(goal, measured, Verdict::of(b > 0.0 && x >= times))
}

fn chain_p99(r: &Results, conns: u32) -> Goal {
    let goal = format!("B→A chain p99 no worse than actix-web's at {conns} connections");
    let (Some(ours), Some(actix)) = (r.get(Kind::B, conns), r.get(Kind::ActixB, conns)) else {
        return not_run(goal, &missing(r, Kind::ActixB, conns));
    };
    match (ours.measured.p99_ms, actix.measured.p99_ms) {
        (Some(a), Some(b)) => row(goal, format!("{a:.3} vs {b:.3} ms"), Verdict::of(a <= b)),
        _ => row(goal, "wrk printed no p99".into(), Verdict::Missed),
    }
}

fn a_of_ceiling(r: &Results) -> Goal {
    let conns = A_OF_CEILING_CONNS;
    let before = A_OF_CEILING_BEFORE_PCT;
    let goal = format!(
        "A /echo at {conns} connections ≥ {before} % of the ceiling (before: bench/RESULTS.md, 2026-11-25, e28a5ce)"
    );
    let (Some(a), Some(c)) = (r.get(Kind::A, conns), r.get(Kind::Ceiling, conns)) else {
        return not_run(goal, &missing(r, Kind::A, conns));
    };
    let pct = r.of_ceiling(Kind::A, conns).map_or(0.0, |x| 100.0 * x);
    let measured = format!(
        "{pct:.1} % ({:.0} vs {:.0} req/s)",
        a.measured.rps, c.measured.rps
    );
    row(goal, measured, Verdict::of(pct >= before))
}

/// Why a comparison did not run: its connection count was left out, or its target was.
fn missing(r: &Results, kind: Kind, conns: u32) -> String {
    if r.points.iter().any(|p| p.conns == conns) {
        format!("not run ({} not measured)", kind.label())
    } else {
        format!("not run (no point at {conns} connections)")
    }
}

/// KiB as MB with one decimal.
pub fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

#[cfg(test)]
#[path = "goals_tests.rs"]
mod tests;
