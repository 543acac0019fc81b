//! The tests whose subject is a duration: `/health` stays quick while B's bulkhead is flooded
//! (its p99), a burst of new connections is served at once, a client that never reads stalls
//! only its own connection, idle keep-alive connections neither starve others nor get closed.
//! A loaded machine stretches every duration, so these run one at a time: each holds the
//! static mutex `ONE_AT_A_TIME` for its whole run (and `cargo test` runs one test binary at a
//! time, so no other suite of the same run is beside them). The bounds are generous; the figures the
//! flood prints are the measurement (`cargo test --test timing -- --nocapture`).

#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{
    connect, get, keep_alive, raise_own_fd_limit, read_reply, spawn_a, spawn_b, try_send,
    Behaviour, FakeA,
};
use serde_json::json;

/// Held by each test for its whole run, so that the tests of this target run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Takes [`ONE_AT_A_TIME`] (a test that failed holding it does not stop the others).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// B's deadline during the flood.
const TIMEOUT_MS: u64 = 1000;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(4);

/// The `p` quantile of sorted durations (the nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The bulkhead under a flood, on the real B binary: A accepts and never answers, more
/// clients than B's bulkhead admits to A at once keep calling `/call-echo` (96 against the
/// default `--max-inflight` of 64; `FLOOD_CLIENTS` changes it), and `/health` must stay quick
/// while every call is answered within the deadline: a call A holds waits at most the
/// deadline, and one beyond the bulkhead is refused at once as `overloaded`. Without the
/// bulkhead every call would hold a thread and a connection to A for the whole deadline,
/// however many clients came.
/// The figures it prints are the measurement.
#[test]
fn health_stays_quick_while_a_hanging_a_is_flooded() {
    let _one = one_at_a_time();
    let a = FakeA::start(Behaviour::Silent);
    let timeout = TIMEOUT_MS.to_string();
    let b = spawn_b(
        &a.url(),
        &["--timeout-ms", &timeout, "--breaker-threshold", "0"],
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

#[test]
fn a_burst_of_new_connections_is_served_at_once() {
    let _one = one_at_a_time();
    // Fresh services, so every call opens a new connection from B to A at the same moment.
    // A server whose thread pool counts a thread as free before it has woken up (tiny_http
    // 0.12 did) queues such a connection until another one closes; B's deadline would then
    // turn it into a 503 timeout. Each connection must get a thread of its own at once.
    let a = spawn_a(&[]);
    let b = spawn_b(&format!("http://{}", a.addr), &["--timeout-ms", "3000"]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (addr, barrier) = (b.addr, std::sync::Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let reply = get(addr, &format!("/call-echo?msg=burst{i}"));
                (
                    reply.status,
                    started.elapsed(),
                    reply.json()["kind"].clone(),
                )
            })
        })
        .collect();
    let results: Vec<_> = calls
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let slow: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(slow.is_empty(), "{} of 50 failed: {slow:?}", slow.len());
}

/// New connections opened at the same moment beside the idle ones.
const BURST: usize = 50;

/// Guards: a client that pipelines and never reads stalled every worker of A, and B behind it.
#[test]
fn a_client_that_never_reads_stalls_only_its_own_connection() {
    let _one = one_at_a_time();
    let a = spawn_a(&[]);
    let a_url = format!("http://{}", a.addr);
    let b = spawn_b(&a_url, &[]);
    let stalled = connect(a.addr, Duration::from_secs(60));
    let mut writer_end = stalled.try_clone().expect("clone");
    let written = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, done) = (Arc::clone(&written), Arc::clone(&done));
        thread::spawn(move || {
            let request = format!(
                "GET /echo?msg={} HTTP/1.1\r\nHost: t\r\n\r\n",
                "a".repeat(4000)
            );
            for _ in 0..3000 {
                if writer_end.write_all(request.as_bytes()).is_err() {
                    break;
                }
                written.fetch_add(1, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    // No signal says "the server is blocked writing to us": wait until our writes stand still
    // (the buffers both ways are full) or all are written (the server's answers fill them).
    let started = Instant::now();
    let mut last = (usize::MAX, Instant::now());
    while !done.load(Ordering::Relaxed) {
        let now = written.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes never stalled"
        );
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{} requests written, unread, after {:?}",
        written.load(Ordering::Relaxed),
        started.elapsed()
    );

    for i in 0..5 {
        let t = Instant::now();
        let health = try_send(
            a.addr,
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let status = health.as_ref().map(|r| r.status).map_err(|e| e.to_string());
        assert_eq!(
            status,
            Ok(200),
            "A /health #{i} while one client never reads"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "A /health took {:?}",
            t.elapsed()
        );
        let call = get(b.addr, &format!("/call-echo?msg=x{i}"));
        assert_eq!(
            (call.status, call.json()["echo_response"]["echo"].clone()),
            (200, json!(format!("x{i}"))),
            "B /call-echo #{i} while one client of A never reads: {}",
            String::from_utf8_lossy(&call.body)
        );
    }
    let _ = stalled.shutdown(Shutdown::Both);
    writer.join().expect("writer thread");
}

/// Guards: idle keep-alive connections starved new ones, and the workaround closed them.
#[test]
fn idle_keep_alive_connections_neither_starve_nor_get_closed() {
    let _one = one_at_a_time();
    raise_own_fd_limit();
    let a = spawn_a(&[]);
    let mut idle: Vec<BufReader<TcpStream>> = (0..300)
        .map(|i| {
            keep_alive(a.addr)
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
                .0
        })
        .collect();
    // Then bursts of new keep-alive connections (a client pool filling up), each at one
    // moment, each just after a few connections closed: every new connection must be served
    // at once, and not by closing the idle ones to free a thread for it.
    let mut pooled: Vec<BufReader<TcpStream>> = Vec::new();
    for round in 0..5 {
        // Ten close, and their threads (in a pooled server) go back to waiting for work; the
        // pause only stages that, it synchronises nothing.
        pooled.truncate(pooled.len().saturating_sub(10));
        thread::sleep(Duration::from_millis(100));
        let barrier = Arc::new(Barrier::new(BURST));
        let burst: Vec<_> = (0..BURST)
            .map(|_| {
                let (addr, barrier) = (a.addr, Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    keep_alive(addr)
                })
            })
            .collect();
        for (i, new) in burst.into_iter().enumerate() {
            let (reader, took) = new
                .join()
                .expect("client thread")
                .unwrap_or_else(|e| panic!("round {round}, new connection {i}: {e}"));
            assert!(
                took < Duration::from_secs(2),
                "round {round}, new connection {i} waited {took:?}"
            );
            pooled.push(reader);
        }
    }
    let request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    let held = idle.len() + pooled.len();
    let failed: Vec<(usize, String)> = idle
        .iter_mut()
        .chain(pooled.iter_mut())
        .enumerate()
        .filter_map(|(i, reader)| {
            let again = reader
                .get_mut()
                .write_all(request)
                .and_then(|()| read_reply(reader));
            match again {
                Ok(r) if r.status == 200 => None,
                Ok(r) => Some((i, format!("status {}", r.status))),
                Err(e) => Some((i, e.to_string())),
            }
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {held} idle keep-alive connections failed a second request, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}
