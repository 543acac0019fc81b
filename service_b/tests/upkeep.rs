//! B's upkeep thread, watched on the real binary: it sleeps between its jobs.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use echo_core::ServerHandle;
use echo_tests::{get, Behaviour, FakeA, Running};
use service_b::{spawn_with_resolver, Config, Resolve};

/// The voluntary context switches of B's upkeep thread so far (each wait it ends is one).
fn upkeep_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("service_b-upkee") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
    }
    panic!("no upkeep thread in {pid}");
}

/// With only IP addresses (no name to resolve) and `--resolve-every-ms 100`, the thread
/// wakes about ten times a second. (Once its first resolution time had passed it used to
/// wake every millisecond: about 1,000 times a second.)
#[test]
fn the_upkeep_thread_sleeps_between_its_jobs() {
    let a = service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("spawn A");
    let b = Running::start(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            &ServerHandle::url(&a),
            "--resolve-every-ms",
            "100",
        ],
    );
    thread::sleep(Duration::from_millis(300)); // past the first resolution time
    let before = upkeep_switches(b.pid());
    thread::sleep(Duration::from_secs(1)); // the window measured, not a synchronisation
    let woke = upkeep_switches(b.pid()) - before;
    println!("the upkeep thread woke {woke} times in 1 s");
    assert!(woke < 50, "the upkeep thread woke {woke} times in 1 s");
}

/// Polls B's `/metrics` until it holds `needle`; how long that took, `None` after `limit`.
fn shows_within(b: SocketAddr, needle: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if String::from_utf8_lossy(&get(b, "/metrics").body).contains(needle) {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        thread::sleep(Duration::from_millis(10)); // the pace of the polling
    }
}

/// Calls B until `needle` shows in its metrics (at most 10 s).
fn call_until(b: SocketAddr, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shows_within(b, needle, Duration::ZERO).is_none() {
        assert!(
            Instant::now() < deadline,
            "never: {needle}: {}",
            String::from_utf8_lossy(&get(b, "/metrics").body)
        );
        let _ = get(b, "/call-echo?msg=x");
    }
}

/// An ejected replica whose `/ready` trickles one byte every 0.9 s holds its own probe
/// only: another ejected replica that came back is readmitted when its cooldown ends, and
/// the names are resolved again on time meanwhile. (Probes and resolutions shared one
/// thread, and a probe's 1 s limit applied to each read: such a `/ready` held it about
/// 11 s, and the other replica and every resolution waited.)
#[test]
fn a_trickling_probe_holds_up_no_readmission_or_resolution() {
    let good = service_a::spawn(service_a::Config::on("127.0.0.2:0")).expect("spawn A");
    let trickler = FakeA::start(Behaviour::TrickleReady(Duration::from_millis(900)));
    let dead: SocketAddr = {
        let unused = TcpListener::bind("127.0.0.3:0").expect("bind");
        unused.local_addr().expect("addr")
    };
    let addrs = Arc::new(Mutex::new(vec![good.addr(), trickler.addr]));
    let resolutions = Arc::new(AtomicUsize::new(0));
    let resolve: Resolve = {
        let (addrs, count) = (Arc::clone(&addrs), Arc::clone(&resolutions));
        Arc::new(move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(addrs.lock().map(|a| a.clone()).unwrap_or_default())
        })
    };
    let mut config = Config::on("127.0.0.1:0", "http://replicas.test:1");
    config.resolve_every_ms = 100;
    config.breaker_threshold = 1;
    config.breaker_cooldown_ms = 500;
    config.max_ejected_percent = 100;
    let b = spawn_with_resolver(config, resolve).expect("start B");
    let state = |addr: SocketAddr, value: u8| {
        format!(r#"circuit_breaker_state{{replica="{addr}"}} {value}"#)
    };
    // The trickler is ejected first (its /echo answers 500), then the dead replica joins
    // and is ejected (refused): the trickler's probe comes first.
    call_until(b.addr(), &state(trickler.addr, 1));
    addrs.lock().expect("lock").push(dead);
    call_until(b.addr(), &state(dead, 1));
    let back = service_a::spawn(service_a::Config::on(&dead.to_string())).expect("A back");
    let probing = Instant::now();
    while !trickler
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /ready "))
    {
        assert!(
            probing.elapsed() < Duration::from_secs(5),
            "the trickler was never probed"
        );
        thread::sleep(Duration::from_millis(5)); // the fake's record has no signal
    }
    let before = resolutions.load(Ordering::SeqCst);
    let readmitted = shows_within(b.addr(), &state(back.addr(), 0), Duration::from_secs(15));
    println!("the returned replica readmitted {readmitted:?} after the trickler's probe began");
    assert!(
        readmitted.is_some_and(|t| t < Duration::from_millis(1500)),
        "readmitted after {readmitted:?} (its cooldown: 500 ms)"
    );
    thread::sleep(Duration::from_secs(1)); // a window for counting resolutions
    let resolved = resolutions.load(Ordering::SeqCst) - before;
    println!("{resolved} resolutions while the trickler's probe ran");
    assert!(
        resolved >= 5,
        "{resolved} resolutions (one every 100 ms expected)"
    );
}
