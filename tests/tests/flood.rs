//! The bulkhead under a flood, on the real B binary: A accepts and never answers, more
//! clients than B's bulkhead admits to A at once keep calling `/call-echo` (96 against the
//! default `--max-inflight` of 64; `FLOOD_CLIENTS` changes it), and `/health` must stay quick
//! while every call is answered within the deadline: a call A holds waits at most the
//! deadline, and one beyond the bulkhead is refused at once as `overloaded`. Without the
//! bulkhead every call would hold a thread and a connection to A for the whole deadline,
//! however many clients came.
//! The bounds here are generous; the figures it prints are the measurement
//! (`cargo test --test flood -- --nocapture`).

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, Behaviour, FakeA, Running};

const TIMEOUT_MS: u64 = 1000;
const FLOOD: Duration = Duration::from_secs(4);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn health_stays_quick_while_a_hanging_a_is_flooded() {
    let a = FakeA::start(Behaviour::Silent);
    let timeout = TIMEOUT_MS.to_string();
    let b = Running::start(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            &a.url(),
            "--timeout-ms",
            &timeout,
            "--breaker-threshold",
            "0",
        ],
    );
    let addr = b.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = std::env::var("FLOOD_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(96);
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let reply = get(addr, "/call-echo?msg=flood");
                    seen.push((
                        started.elapsed(),
                        reply.status,
                        reply.json()["kind"].as_str().unwrap_or("").to_string(),
                    ));
                }
                seen
            })
        })
        .collect();

    let mut health = Vec::new();
    let flood_started = Instant::now();
    while flood_started.elapsed() < FLOOD {
        let started = Instant::now();
        assert_eq!(get(addr, "/health").status, 200);
        health.push(started.elapsed());
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let calls: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();

    health.sort();
    let mut call_times: Vec<Duration> = calls.iter().map(|c| c.0).collect();
    call_times.sort();
    let timeouts = calls.iter().filter(|c| c.2 == "timeout").count();
    let overloaded = calls.iter().filter(|c| c.2 == "overloaded").count();
    eprintln!(
        "flood: {} /health probes p50 {:?} p99 {:?} max {:?}; {} /call-echo: {} timeout, {} overloaded, slowest {:?} (deadline {} ms)",
        health.len(), percentile(&health, 0.5), percentile(&health, 0.99), health[health.len() - 1],
        calls.len(), timeouts, overloaded, call_times[call_times.len() - 1], TIMEOUT_MS
    );
    assert!(calls.iter().all(|c| c.1 == 503), "a call was not a 503");
    assert_eq!(timeouts + overloaded, calls.len());
    assert!(timeouts > 0, "no call reached A");
    assert!(
        percentile(&health, 0.99) < Duration::from_millis(500),
        "/health p99 {:?}",
        percentile(&health, 0.99)
    );
    let limit = Duration::from_millis(TIMEOUT_MS + 1000);
    assert!(
        call_times[call_times.len() - 1] < limit,
        "slowest call {:?}",
        call_times[call_times.len() - 1]
    );
}
