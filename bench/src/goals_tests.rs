//! The goal checks on made-up results: no sockets, no processes.

use super::*;
use crate::results::Point;
use crate::switches::Switches;
use crate::wrk::{SocketErrors, WrkResult};

fn run(rps: f64, p99_ms: f64) -> WrkResult {
    WrkResult {
        requests: (rps * 5.0) as u64,
        rps,
        p50_ms: Some(p99_ms / 4.0),
        p99_ms: Some(p99_ms),
        ..WrkResult::default()
    }
}

fn point(kind: Kind, conns: u32, rps: f64, p99_ms: f64) -> Point {
    let measured = run(rps, p99_ms);
    // 0.1 voluntary and 0.5 involuntary context switches per request.
    let switches = Switches {
        voluntary: measured.requests / 10,
        involuntary: measured.requests / 2,
        threads_gone: 0,
    };
    Point {
        kind,
        conns,
        measured,
        warmup: Some(run(rps, p99_ms)),
        busy_before: None,
        switches: Some(switches),
    }
}

/// A run where every goal is met, anchors included: A 1.2× actix-web's A, the chain 1.25×
/// actix-web's chain, each with a lower p99.
fn good() -> Results {
    let mut points = Vec::new();
    for conns in [1, 16, 64] {
        points.push(point(Kind::Ceiling, conns, 60_000.0, 3.0));
        points.push(point(Kind::A, conns, 48_000.0, 2.0));
        points.push(point(Kind::B, conns, 20_000.0, 4.0));
        points.push(point(Kind::AxumA, conns, 35_000.0, 3.0));
        points.push(point(Kind::AxumB, conns, 14_000.0, 5.0));
        points.push(point(Kind::ActixA, conns, 40_000.0, 3.0));
        points.push(point(Kind::ActixB, conns, 16_000.0, 5.0));
    }
    Results {
        points,
        peak_rss_kib: vec![
            ("service_a".into(), Some(6_000)),
            ("service_b".into(), Some(20_000)),
        ],
        time_wait_on_ports: 12,
        time_wait_machine: 40,
    }
}

fn find(r: &mut Results, kind: Kind, conns: u32) -> &mut Point {
    r.points
        .iter_mut()
        .find(|p| p.kind == kind && p.conns == conns)
        .unwrap()
}

fn verdict(goals: &[Goal], starts: &str) -> Verdict {
    let found: Vec<&Goal> = goals
        .iter()
        .filter(|g| g.goal.starts_with(starts))
        .collect();
    assert_eq!(found.len(), 1, "{starts:?} in {goals:#?}");
    found[0].verdict
}

#[test]
fn all_met() {
    let goals = check(&good());
    assert_eq!(goals.len(), 17);
    for g in &goals {
        assert_eq!(g.verdict, Verdict::Met, "{g:?}");
    }
    let a = goals
        .iter()
        .find(|g| g.goal.starts_with("A /echo ≥ 1.1× actix-web's at 64"))
        .unwrap();
    assert_eq!(a.measured, "1.20× (48000 vs 40000 req/s)");
    let cs = goals
        .iter()
        .find(|g| g.goal.starts_with("A /echo voluntary context switches"))
        .unwrap();
    assert_eq!(
        cs.measured,
        "0.100 voluntary, 0.500 involuntary (24000 and 120000 over 240000 requests)"
    );
}

#[test]
fn one_error_anywhere_misses() {
    let mut r = good();
    r.points[4].warmup.as_mut().unwrap().errors = SocketErrors {
        timeout: 1,
        ..SocketErrors::default()
    };
    r.points[7].measured.non_2xx = 3;
    let goals = check(&r);
    assert_eq!(verdict(&goals, "zero socket errors"), Verdict::Missed);
    assert_eq!(verdict(&goals, "zero non-2xx"), Verdict::Missed);
    let e = goals
        .iter()
        .find(|g| g.goal.starts_with("zero socket"))
        .unwrap();
    assert_eq!(e.measured, "1 (0 connect, 0 read, 0 write, 1 timeout)");
}

#[test]
fn a_run_with_no_request_misses() {
    let mut r = good();
    r.points[0].measured.requests = 0;
    assert_eq!(verdict(&check(&r), "zero non-2xx"), Verdict::Missed);
}

#[test]
fn memory_and_time_wait_limits() {
    let mut r = good();
    r.peak_rss_kib[1].1 = Some(RSS_LIMIT_KIB);
    r.time_wait_on_ports = TIME_WAIT_LIMIT;
    let goals = check(&r);
    assert_eq!(verdict(&goals, "service_a peak RSS"), Verdict::Met);
    assert_eq!(verdict(&goals, "service_b peak RSS"), Verdict::Missed);
    assert_eq!(verdict(&goals, "fewer than"), Verdict::Missed);
    r.peak_rss_kib[0].1 = None;
    assert_eq!(verdict(&check(&r), "service_a peak RSS"), Verdict::NotRun);
}

#[test]
fn a_against_actix() {
    let mut r = good();
    // 16 connections: 1.09× is under the 1.1× asked; 64: exactly 1.1× is enough; 1: 0.99×
    // is slower than actix-web.
    find(&mut r, Kind::A, 16).measured.rps = 43_600.0;
    find(&mut r, Kind::A, 64).measured.rps = 44_000.0;
    find(&mut r, Kind::A, 1).measured.rps = 39_600.0;
    find(&mut r, Kind::A, 64).measured.p99_ms = Some(3.001);
    let goals = check(&r);
    assert_eq!(
        verdict(&goals, "A /echo ≥ 1.1× actix-web's at 16"),
        Verdict::Missed
    );
    assert_eq!(
        verdict(&goals, "A /echo ≥ 1.1× actix-web's at 64"),
        Verdict::Met
    );
    assert_eq!(
        verdict(&goals, "A /echo ≥ 1.0× actix-web's at 1 "),
        Verdict::Missed
    );
    assert_eq!(
        verdict(&goals, "A /echo p99 no worse than actix-web's at 16"),
        Verdict::Met
    );
    assert_eq!(
        verdict(&goals, "A /echo p99 no worse than actix-web's at 64"),
        Verdict::Missed
    );
    // The chain's goals are its own.
    assert_eq!(
        verdict(&goals, "B→A chain ≥ 1.0× actix-web's at 16"),
        Verdict::Met
    );
}

#[test]
fn chain_against_actix() {
    let mut r = good();
    // 16 connections: 0.99× misses; 64: exactly 1.0× is enough, its p99 a hair worse.
    find(&mut r, Kind::B, 16).measured.rps = 15_840.0;
    find(&mut r, Kind::B, 64).measured.rps = 16_000.0;
    find(&mut r, Kind::B, 64).measured.p99_ms = Some(5.001);
    find(&mut r, Kind::B, 16).measured.p99_ms = Some(5.0);
    let goals = check(&r);
    assert_eq!(
        verdict(&goals, "B→A chain ≥ 1.0× actix-web's at 16"),
        Verdict::Missed
    );
    assert_eq!(
        verdict(&goals, "B→A chain ≥ 1.0× actix-web's at 64"),
        Verdict::Met
    );
    assert_eq!(
        verdict(&goals, "B→A chain ≥ 1.0× actix-web's at 1 "),
        Verdict::Met
    );
    assert_eq!(
        verdict(&goals, "B→A chain p99 no worse than actix-web's at 16"),
        Verdict::Met
    );
    assert_eq!(
        verdict(&goals, "B→A chain p99 no worse than actix-web's at 64"),
        Verdict::Missed
    );
    assert_eq!(
        verdict(&goals, "A /echo ≥ 1.1× actix-web's at 64"),
        Verdict::Met
    );
}

#[test]
fn a_missing_p99_misses() {
    let mut r = good();
    find(&mut r, Kind::ActixB, 16).measured.p99_ms = None;
    let goals = check(&r);
    let g = goals
        .iter()
        .find(|g| {
            g.goal
                .starts_with("B→A chain p99 no worse than actix-web's at 16")
        })
        .unwrap();
    assert_eq!(
        (g.verdict, g.measured.as_str()),
        (Verdict::Missed, "wrk printed no p99")
    );
}

#[test]
fn context_switches_per_request() {
    let mut r = good();
    let a = find(&mut r, Kind::A, 64);
    a.switches = Some(Switches {
        voluntary: a.measured.requests * 15 / 100, // exactly 0.15: met
        involuntary: a.measured.requests * 9,      // not judged
        threads_gone: 0,
    });
    let b = find(&mut r, Kind::B, 64);
    b.switches = Some(Switches {
        voluntary: b.measured.requests * 3 / 2 + 1, // just over 1.5: missed
        involuntary: 0,
        threads_gone: 2,
    });
    let goals = check(&r);
    assert_eq!(
        verdict(
            &goals,
            "A /echo voluntary context switches per request ≤ 0.15"
        ),
        Verdict::Met
    );
    let b = goals
        .iter()
        .find(|g| {
            g.goal
                .starts_with("B→A chain voluntary context switches per call ≤ 1.5")
        })
        .unwrap();
    assert_eq!(b.verdict, Verdict::Missed);
    assert!(
        b.measured
            .ends_with("; 2 thread(s) ended during the run, their switches not counted"),
        "{b:?}"
    );
    // Only the point at 64 connections counts.
    find(&mut r, Kind::A, 16).switches = None;
    find(&mut r, Kind::A, 64).switches = None;
    let goals = check(&r);
    let a = goals
        .iter()
        .find(|g| g.goal.starts_with("A /echo voluntary context switches"))
        .unwrap();
    assert_eq!(
        (a.verdict, a.measured.as_str()),
        (Verdict::NotRun, "not read (/proc/PID/task/*/status)")
    );
}

#[test]
fn anchors_not_built_are_not_run() {
    let mut r = good();
    r.points
        .retain(|p| !matches!(p.kind, Kind::ActixA | Kind::ActixB));
    let goals = check(&r);
    let against: Vec<&Goal> = goals.iter().filter(|g| g.goal.contains("actix")).collect();
    assert_eq!(against.len(), 10);
    for g in against {
        assert_eq!(g.verdict, Verdict::NotRun, "{g:?}");
        let target = if g.goal.starts_with("A /echo") {
            "actix A /echo"
        } else {
            "actix B→A /call-echo"
        };
        assert_eq!(
            g.measured,
            format!("not run ({target} not measured)"),
            "{g:?}"
        );
    }
    let not_run = goals
        .iter()
        .filter(|g| g.verdict == Verdict::NotRun)
        .count();
    assert_eq!(not_run, 10);
}

#[test]
fn a_connection_count_left_out_is_not_run() {
    let mut r = good();
    r.points.retain(|p| p.conns != 64);
    let goals = check(&r);
    assert_eq!(
        verdict(&goals, "A /echo ≥ 1.1× actix-web's at 64"),
        Verdict::NotRun
    );
    assert_eq!(
        verdict(&goals, "B→A chain ≥ 1.0× actix-web's at 64"),
        Verdict::NotRun
    );
    assert_eq!(
        verdict(&goals, "A /echo voluntary context switches"),
        Verdict::NotRun
    );
    assert_eq!(
        verdict(&goals, "B→A chain ≥ 1.0× actix-web's at 16"),
        Verdict::Met
    );
    let g = goals
        .iter()
        .find(|g| g.goal.starts_with("B→A chain voluntary"))
        .unwrap();
    assert_eq!(g.measured, "not run (no point at 64 connections)");
}

#[test]
fn no_run_at_all() {
    let r = Results::default();
    let goals = check(&r);
    assert_eq!(verdict(&goals, "zero non-2xx"), Verdict::NotRun);
    assert_eq!(verdict(&goals, "service_b peak RSS"), Verdict::NotRun);
}
