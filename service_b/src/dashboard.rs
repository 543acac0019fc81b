//! B's live page (`GET /`, one embedded HTML file) and its data (`GET /replicas`): B's view
//! of the replicas, as Envoy's `/clusters` gives its own. What a call costs for them is
//! counting, in `window`'s [`CallStats`] and each replica's [`Window`], with a few atomic
//! operations; the document is built only when asked. Both reveal A's internal addresses: `--dashboard false` turns
//! them off (docs/OPERATIONS.md).

use std::net::SocketAddr;

use echo_core::Response;
use serde_json::{json, Map, Value};

use crate::balance::{now_ns, Replica};
use crate::call::Caller;
use crate::window::{outcome_index, p99_ms, unix_ms, CallStats, Window, OUTCOMES, SECONDS};

/// The page, embedded at build time: no external asset, no build step.
const PAGE: &str = include_str!("dashboard.html");

/// The page's Content-Security-Policy: its own inline script and style only, and requests
/// to B alone. Beside the page it guards, as text.
const POLICY: &str = include_str!("dashboard.csp");

/// `GET /`: the page, which may run only its own inline script and talk only to B.
pub(crate) fn page() -> Response {
    Response::text(200, "text/html; charset=utf-8", PAGE.to_string())
        .with_header("Content-Security-Policy", POLICY.trim_end())
        .with_header("Cache-Control", "no-store")
}

/// `GET /replicas`: B's view now, each replica named by the `--service-a-url` (of `urls`)
/// it came from.
pub(crate) fn replicas(caller: &Caller, urls: &[String]) -> Value {
    let set = caller.replicas.snapshot();
    let (max_inflight, in_flight) = caller.bulkhead();
    let (retry_percent, retries_available) = caller.retry_budget();
    let b = BView {
        timeout_ms: caller.client.timeout().as_millis() as u64,
        max_inflight,
        in_flight,
        retry_percent,
        retries_available,
    };
    let views: Vec<ReplicaView<'_>> = set
        .iter()
        .map(|r| view(r, urls.get(r.target).map_or("", String::as_str)))
        .collect();
    document(&b, &caller.stats, &views)
}

fn view<'a>(r: &'a Replica, from: &'a str) -> ReplicaView<'a> {
    let state = if r.departed() {
        State::Departed
    } else if let Some(out) = r.breaker.ejected() {
        State::Ejected {
            until_ms: unix_ms() + out.left.as_millis() as u64,
            in_a_row: r.breaker.ejections_in_a_row(),
        }
    } else if r.draining() {
        State::Draining
    } else if let Some(share) = r.slow_start_share() {
        State::SlowStart(share)
    } else {
        State::Serving
    };
    ReplicaView {
        address: r.addr,
        from,
        state,
        latency_ms: r.load.estimate_ns(now_ns()) / 1e6,
        in_flight: r.load.pending(),
        outcomes: &r.outcomes,
    }
}

/// A replica's state as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum State {
    /// Takes its full share of the calls.
    Serving,
    /// Joining or readmitted: may take this share of its full share.
    SlowStart(f64),
    /// It said it drains: no new calls while others can take them.
    Draining,
    /// Its breaker is open until `until_ms` (Unix), the `in_a_row`-th ejection in a row.
    Ejected { until_ms: u64, in_a_row: u32 },
    /// Its name no longer resolves to it.
    Departed,
}

/// What `/replicas` says of one replica, read from it when asked.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaView<'a> {
    pub(crate) address: SocketAddr,
    pub(crate) from: &'a str,
    pub(crate) state: State,
    pub(crate) latency_ms: f64,
    pub(crate) in_flight: usize,
    pub(crate) outcomes: &'a Window<7>,
}

/// What `/replicas` says of B as a whole beyond its counts.
#[derive(Debug, Clone)]
pub(crate) struct BView {
    pub(crate) timeout_ms: u64,
    pub(crate) max_inflight: usize,
    pub(crate) in_flight: usize,
    pub(crate) retry_percent: u32,
    pub(crate) retries_available: f64,
}

fn outcomes(counts: [u64; 7], zeros: bool) -> Value {
    let map: Map<String, Value> = OUTCOMES
        .iter()
        .zip(counts)
        .filter(|(_, n)| zeros || *n > 0)
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    Value::Object(map)
}

/// Calls per second over the last 10 s: what ended in them, over the seconds they span
/// (the current one counted by the part of it gone).
fn per_second(counts: [u64; 7], now_ms: u64) -> f64 {
    let seconds = 9.0 + (now_ms % 1000) as f64 / 1000.0;
    let rate = counts.iter().sum::<u64>() as f64 / seconds.max(1.0);
    (rate * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn replica_json(r: &ReplicaView<'_>, now: u64, now_ms: u64) -> Value {
    let (state, until, in_a_row, share) = match r.state {
        State::Serving => ("serving", None, 0, None),
        State::SlowStart(share) => ("slow_start", None, 0, Some(round2(share))),
        State::Draining => ("draining", None, 0, None),
        State::Ejected { until_ms, in_a_row } => ("ejected", Some(until_ms), in_a_row, None),
        State::Departed => ("departed", None, 0, None),
    };
    json!({
        "address": r.address.to_string(),
        "from": r.from,
        "state": state,
        "ejected_until_ms": until,
        "ejections_in_a_row": in_a_row,
        "slow_start_share": share,
        "latency_ms": round2(r.latency_ms),
        "in_flight": r.in_flight,
        "calls_per_s": per_second(r.outcomes.sum(now, 10), now_ms),
        "outcomes_60s": outcomes(r.outcomes.sum(now, 60), true),
    })
}

/// The `/replicas` document.
pub(crate) fn document(b: &BView, stats: &CallStats, replicas: &[ReplicaView<'_>]) -> Value {
    let now_ms = unix_ms();
    let now = now_ms / 1000;
    let history: Vec<Value> = (now + 1 - SECONDS as u64..=now)
        .map(|t| {
            json!({
                "t": t,
                "outcomes": outcomes(stats.outcomes.at(t), false),
                "p99_ms": p99_ms(&stats.latency.at(t)).map(round2),
            })
        })
        .collect();
    let [retries, denied] = stats.retries.sum(now, 60);
    let failures: Vec<Value> = {
        let list = stats.failures();
        list.iter()
            .map(|f| {
                json!({
                    "at_ms": f.at_ms,
                    "request_id": f.request_id,
                    "kind": f.kind,
                    "details": f.details,
                    "replica": f.replica.map(|a| a.to_string()),
                })
            })
            .collect()
    };
    let last_minute = stats.outcomes.sum(now, 60);
    json!({
        "now_ms": now_ms,
        "service_b": {
            "timeout_ms": b.timeout_ms,
            "calls_per_s": per_second(stats.outcomes.sum(now, 10), now_ms),
            "outcomes_10s": outcomes(stats.outcomes.sum(now, 10), true),
            "outcomes_60s": outcomes(last_minute, true),
            "bulkhead": {
                "max_inflight": b.max_inflight,
                "in_flight": b.in_flight,
                "refused_60s": last_minute[outcome_index("overloaded")],
            },
            "retry_budget": {
                "percent": b.retry_percent,
                "available": round2(b.retries_available),
                "retries_60s": retries,
                "denied_60s": denied,
            },
            "per_second": history,
        },
        "replicas": replicas.iter().map(|r| replica_json(r, now, now_ms)).collect::<Vec<_>>(),
        "recent_failures": failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{Failure, RECENT_FAILURES};
    use std::time::{Duration, Instant};

    fn b() -> BView {
        BView {
            timeout_ms: 2000,
            max_inflight: 64,
            in_flight: 1,
            retry_percent: 20,
            retries_available: 9.5,
        }
    }

    #[test]
    fn the_document_names_every_field_and_state() {
        let stats = CallStats::default();
        let now = Instant::now();
        stats.call(now, "ok", Some(Duration::from_millis(2)));
        stats.call(now, "timeout", Some(Duration::from_millis(2000)));
        stats.call(now, "overloaded", None);
        stats.retry(true);
        stats.retry(false);
        stats.retry(false);
        let windows: Vec<Window<7>> = (0..5).map(|_| Window::default()).collect();
        let second = stats.clock.second(now);
        windows[0].add(second, 0);
        windows[0].add(second, 2);
        let states = [
            State::Serving,
            State::SlowStart(0.4321),
            State::Draining,
            State::Ejected {
                until_ms: 1_764_000_000_000,
                in_a_row: 2,
            },
            State::Departed,
        ];
        let addr: SocketAddr = "127.0.0.2:8080".parse().unwrap_or_else(|_| unreachable!());
        let views: Vec<ReplicaView<'_>> = states
            .iter()
            .zip(&windows)
            .map(|(state, w)| ReplicaView {
                address: addr,
                from: "http://service-a:8080",
                state: *state,
                latency_ms: 1.23456,
                in_flight: 3,
                outcomes: w,
            })
            .collect();
        let doc = document(&b(), &stats, &views);
        let service_b = &doc["service_b"];
        assert_eq!(service_b["outcomes_60s"]["ok"], json!(1));
        assert_eq!(service_b["outcomes_60s"]["bad_response"], json!(0));
        assert_eq!(
            service_b["bulkhead"],
            json!({"max_inflight": 64, "in_flight": 1, "refused_60s": 1})
        );
        assert_eq!(
            service_b["retry_budget"],
            json!({"percent": 20, "available": 9.5, "retries_60s": 1, "denied_60s": 2})
        );
        let history = service_b["per_second"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(history.len(), 60);
        // The calls' second: the last, or the one before if a second began meanwhile.
        let at = |h: &&Value| h["t"] == json!(second);
        let last = history.iter().find(at).cloned().unwrap_or_default();
        assert_eq!(
            last["outcomes"],
            json!({"ok": 1, "timeout": 1, "overloaded": 1})
        );
        let p99 = last["p99_ms"].as_f64().unwrap_or(0.0);
        assert!(history[58..].iter().any(|h| h["t"] == json!(second)));
        assert!((1750.0..2250.0).contains(&p99), "{p99}");
        assert_eq!(history[0]["p99_ms"], Value::Null);

        let reps = doc["replicas"].as_array().cloned().unwrap_or_default();
        let states: Vec<&str> = reps
            .iter()
            .map(|r| r["state"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            states,
            ["serving", "slow_start", "draining", "ejected", "departed"]
        );
        assert_eq!(reps[0]["address"], json!("127.0.0.2:8080"));
        assert_eq!(reps[0]["from"], json!("http://service-a:8080"));
        assert_eq!(reps[0]["latency_ms"], json!(1.23));
        assert_eq!(reps[0]["in_flight"], json!(3));
        assert_eq!(reps[0]["outcomes_60s"]["timeout"], json!(1));
        assert!(reps[0]["calls_per_s"].as_f64().unwrap_or(0.0) > 0.0);
        assert_eq!(reps[1]["slow_start_share"], json!(0.43));
        assert_eq!(reps[3]["ejected_until_ms"], json!(1_764_000_000_000u64));
        assert_eq!(reps[3]["ejections_in_a_row"], json!(2));
        assert_eq!(
            (
                reps[0]["ejected_until_ms"].clone(),
                reps[0]["slow_start_share"].clone()
            ),
            (Value::Null, Value::Null)
        );
        assert_eq!(doc["recent_failures"], json!([]));
    }

    #[test]
    fn the_last_20_failures_are_kept() {
        let stats = CallStats::default();
        for i in 0..25 {
            stats.failed(Failure {
                at_ms: i,
                request_id: format!("id-{i}"),
                kind: "connect",
                details: "Connection error: refused".into(),
                replica: None,
            });
        }
        let doc = document(&b(), &stats, &[]);
        let list = doc["recent_failures"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(list.len(), RECENT_FAILURES);
        assert_eq!(list[0]["request_id"], json!("id-5"));
        assert_eq!(list[19]["request_id"], json!("id-24"));
        assert_eq!(list[19]["replica"], Value::Null);
        assert_eq!(doc["replicas"], json!([]));
    }

    #[test]
    fn the_page_is_self_contained() {
        let r = page();
        assert_eq!(
            (r.status, r.content_type),
            (200, "text/html; charset=utf-8")
        );
        assert!(r.body.contains("window.__pageErrors") && r.body.contains("/replicas"));
        // Nothing is fetched from elsewhere: no URL with a host, no external script or style.
        for outside in ["http://", "https://", "<script src", "<link", "@import"] {
            let hits: Vec<&str> = r.body.matches(outside).collect();
            let only_svg_namespace = outside == "http://"
                && r.body.matches("http://www.w3.org/2000/svg").count() == hits.len();
            assert!(hits.is_empty() || only_svg_namespace, "{outside}");
        }
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| *k == "Content-Security-Policy" && v.contains("default-src 'none'")));
    }
}
