//! The goal checks on made-up results: no sockets, no processes.

use super::*;
use crate::results::Point;
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
    Point {
        kind,
        conns,
        measured: run(rps, p99_ms),
        warmup: Some(run(rps, p99_ms)),
        busy_before: None,
    }
}

/// A run where every goal is met, anchors included.
fn good() -> Results {
    let mut points = Vec::new();
    for conns in [1, 16, 64] {
        points.push(point(Kind::Ceiling, conns, 50_000.0, 3.0));
        points.push(point(Kind::A, conns, 45_000.0, 3.0));
        points.push(point(Kind::B, conns, 40_000.0, 4.0));
        points.push(point(Kind::ActixA, conns, 46_000.0, 3.0));
        points.push(point(Kind::ActixB, conns, 30_000.0, 5.0));
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
    assert_eq!(goals.len(), 10);
    for g in &goals {
        assert_eq!(g.verdict, Verdict::Met, "{g:?}");
    }
    let a = goals
        .iter()
        .find(|g| g.goal.starts_with("A /echo"))
        .unwrap();
    assert_eq!(a.measured, "90.0 % (45000 vs 50000 req/s)");
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
fn chain_against_actix() {
    let mut r = good();
    // 16 connections: 1.15× is under the 1.2× asked; 64: exactly 1.0× is enough.
    for p in r.points.iter_mut().filter(|p| p.kind == Kind::B) {
        p.measured.rps = if p.conns == 16 { 34_500.0 } else { 30_000.0 };
        p.measured.p99_ms = Some(if p.conns == 16 { 5.0 } else { 5.001 });
    }
    let goals = check(&r);
    assert_eq!(verdict(&goals, "B→A chain ≥ 1.0×"), Verdict::Met);
    assert_eq!(verdict(&goals, "B→A chain ≥ 1.2×"), Verdict::Missed);
    assert_eq!(
        verdict(&goals, "B→A chain p99 no worse than actix-web's at 16"),
        Verdict::Met
    );
    assert_eq!(
        verdict(&goals, "B→A chain p99 no worse than actix-web's at 64"),
        Verdict::Missed
    );
}

#[test]
fn anchors_not_built_are_not_run() {
    let mut r = good();
    r.points
        .retain(|p| !matches!(p.kind, Kind::ActixA | Kind::ActixB));
    let goals = check(&r);
    for g in goals.iter().filter(|g| g.goal.contains("actix")) {
        assert_eq!(g.verdict, Verdict::NotRun, "{g:?}");
        assert!(
            g.measured.contains("actix B→A /call-echo not measured"),
            "{g:?}"
        );
    }
    assert_eq!(
        goals
            .iter()
            .filter(|g| g.verdict == Verdict::NotRun)
            .count(),
        4
    );
}

#[test]
fn a_connection_count_left_out_is_not_run() {
    let mut r = good();
    r.points.retain(|p| p.conns != 64);
    let goals = check(&r);
    assert_eq!(verdict(&goals, "A /echo at 64"), Verdict::NotRun);
    assert_eq!(verdict(&goals, "B→A chain ≥ 1.0×"), Verdict::NotRun);
    assert_eq!(verdict(&goals, "B→A chain ≥ 1.2×"), Verdict::Met);
}

#[test]
fn a_against_the_ceiling_before() {
    let mut r = good();
    let a64 = r
        .points
        .iter_mut()
        .find(|p| p.kind == Kind::A && p.conns == 64)
        .unwrap();
    a64.measured.rps = 41_600.0; // 83.2 % of 50,000: under 83.3 %
    assert_eq!(verdict(&check(&r), "A /echo at 64"), Verdict::Missed);
}

#[test]
fn no_run_at_all() {
    let r = Results::default();
    let goals = check(&r);
    assert_eq!(verdict(&goals, "zero non-2xx"), Verdict::NotRun);
    assert_eq!(verdict(&goals, "service_b peak RSS"), Verdict::NotRun);
}
