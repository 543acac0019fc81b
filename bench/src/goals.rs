//! The goals (issue 22, and the run's own hygiene), checked in one table: each a row of what
//! was asked, what was measured and whether it was met. A goal whose points did not run (anchors not built, a connection count
//! left out) is "not run", never met.

use crate::results::{Kind, Results};

/// Peak RSS of each of our services stays under this (32 MB).
pub const RSS_LIMIT_KIB: u64 = 32 * 1024;
/// Fewer TIME_WAIT sockets than this after the run, on the ports of the servers.
pub const TIME_WAIT_LIMIT: u64 = 1000;
/// A `/echo` against actix-web's A (issue 22): at (connections, at least this many times).
pub const A_VS_ACTIX: [(u32, f64); 3] = [(1, 1.0), (16, 1.1), (64, 1.1)];
/// The B→A chain against actix-web's chain (issue 22): at (connections, at least this).
pub const CHAIN_VS_ACTIX: [(u32, f64); 3] = [(1, 1.0), (16, 1.0), (64, 1.0)];
/// Connection counts at which A's and the chain's p99 must be no worse than actix-web's.
pub const P99_CONNS: [u32; 2] = [16, 64];
/// The connection count of the context-switch goals.
pub const SWITCHES_CONNS: u32 = 64;
/// A's voluntary context switches per request at most, all its threads (issue 22).
pub const A_SWITCHES_MAX: f64 = 0.15;
/// B's voluntary context switches per call at most (issue 22: one sleep while A answers is
/// the floor of a synchronous call).
pub const B_SWITCHES_MAX: f64 = 1.5;

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
    for (kind, vs_actix) in [(Kind::A, A_VS_ACTIX), (Kind::B, CHAIN_VS_ACTIX)] {
        for (conns, times) in vs_actix {
            goals.push(vs_actix_rps(r, kind, conns, times));
        }
        for conns in P99_CONNS {
            goals.push(vs_actix_p99(r, kind, conns));
        }
    }
    goals.push(switches(r, Kind::A, A_SWITCHES_MAX, "request"));
    goals.push(switches(r, Kind::B, B_SWITCHES_MAX, "call"));
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

/// What the goals call a target of ours.
fn role(kind: Kind) -> &'static str {
    match kind {
        Kind::B => "B→A chain",
        _ => "A /echo",
    }
}

/// actix-web's target in the same role as `kind` (ours).
fn actix(kind: Kind) -> Kind {
    kind.anchors().map_or(Kind::ActixA, |(actix, _)| actix)
}

fn vs_actix_rps(r: &Results, kind: Kind, conns: u32, times: f64) -> Goal {
    let (name, actix) = (role(kind), actix(kind));
    let goal = format!("{name} ≥ {times:.1}× actix-web's at {}", connections(conns));
    let (Some(ours), Some(theirs)) = (r.get(kind, conns), r.get(actix, conns)) else {
        return not_run(goal, &missing(r, actix, conns));
    };
    let (a, b) = (ours.measured.rps, theirs.measured.rps);
    let x = if b > 0.0 { a / b } else { 0.0 };
    let measured = format!("{x:.2}× ({a:.0} vs {b:.0} req/s)");
    row(goal, measured, Verdict::of(b > 0.0 && x >= times))
}

fn vs_actix_p99(r: &Results, kind: Kind, conns: u32) -> Goal {
    let (name, actix) = (role(kind), actix(kind));
    let goal = format!(
        "{name} p99 no worse than actix-web's at {}",
        connections(conns)
    );
    let (Some(ours), Some(theirs)) = (r.get(kind, conns), r.get(actix, conns)) else {
        return not_run(goal, &missing(r, actix, conns));
    };
    match (ours.measured.p99_ms, theirs.measured.p99_ms) {
        (Some(a), Some(b)) => row(goal, format!("{a:.3} vs {b:.3} ms"), Verdict::of(a <= b)),
        _ => row(goal, "wrk printed no p99".into(), Verdict::Missed),
    }
}

/// Voluntary context switches per request of `kind`'s server; the involuntary ones (a
/// runnable thread preempted, by wrk too, on the shared CPUs) are shown, not judged.
fn switches(r: &Results, kind: Kind, max: f64, per: &str) -> Goal {
    let conns = SWITCHES_CONNS;
    let goal = format!(
        "{} voluntary context switches per {per} ≤ {max} at {conns} connections (all its \
         threads; involuntary shown, not judged)",
        role(kind)
    );
    let Some(point) = r.get(kind, conns) else {
        return not_run(goal, &missing(r, kind, conns));
    };
    let (Some(s), Some((vol, invol))) = (point.switches, point.switches_per_request()) else {
        return not_run(goal, "not read (/proc/PID/task/*/status)");
    };
    let mut measured = format!(
        "{vol:.3} voluntary, {invol:.3} involuntary ({} and {} over {} requests)",
        s.voluntary, s.involuntary, point.measured.requests
    );
    if s.threads_gone > 0 {
        let n = s.threads_gone;
        measured += &format!("; {n} thread(s) ended during the run, their switches not counted");
    }
    row(goal, measured, Verdict::of(vol <= max))
}

/// Why a comparison did not run: its connection count was left out, or its target was.
fn missing(r: &Results, kind: Kind, conns: u32) -> String {
    if r.points.iter().any(|p| p.conns == conns) {
        format!("not run ({} not measured)", kind.label())
    } else {
        format!("not run (no point at {conns} connections)")
    }
}

/// `1 connection`, `16 connections`.
fn connections(n: u32) -> String {
    match n {
        1 => "1 connection".to_string(),
        n => format!("{n} connections"),
    }
}

/// KiB as MB with one decimal.
pub fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

#[cfg(test)]
#[path = "goals_tests.rs"]
mod tests;
