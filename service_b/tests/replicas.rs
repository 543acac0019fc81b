//! B over several replicas of A, on real listeners at 127.0.0.2, 127.0.0.3, …: the spread,
//! a dead replica ejected and readmitted, the retry on another replica, a silent replica
//! left for another within the deadline, and a name that resolves to several addresses.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, Behaviour, FakeA};
use service_b::{spawn, spawn_with_resolver, Config, Resolve};

/// A real Service A on `ip`, port 0.
fn a_on(ip: &str) -> echo_core::ServerHandle {
    service_a::spawn(service_a::Config::on(&format!("{ip}:0"))).expect("start A")
}

/// B on port 0 over `urls`, with the defaults changed by `tune`.
fn b_over(urls: &[String], tune: impl FnOnce(&mut Config)) -> echo_core::ServerHandle {
    let mut config = Config::on("127.0.0.1:0", "http://unused");
    config.service_a_urls = urls.to_vec();
    tune(&mut config);
    spawn(config).expect("start B")
}

/// How many `/echo` calls this A answered, from its own metrics.
fn echoes(a: SocketAddr) -> u64 {
    let text = String::from_utf8_lossy(&get(a, "/metrics").body).into_owned();
    let needle = r#"http_requests_total{method="GET",route="/echo",status="200"} "#;
    text.lines()
        .find_map(|l| l.strip_prefix(needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Calls B `n` times and returns the statuses that were not 200, with their bodies.
fn call_many(b: SocketAddr, n: usize) -> Vec<(u16, String)> {
    (0..n)
        .map(|i| get(b, &format!("/call-echo?msg=m{i}")))
        .filter(|r| r.status != 200)
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
        .collect()
}

/// Whether B's `/metrics` contains `needle` now.
fn metrics_show_now(b: SocketAddr, needle: &str) -> bool {
    String::from_utf8_lossy(&get(b, "/metrics").body).contains(needle)
}

/// Polls B's `/metrics` until it contains `needle`; false after 10 s.
fn metrics_show(b: SocketAddr, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&get(b, "/metrics").body).contains(needle) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn calls_spread_over_every_replica() {
    let replicas: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|ip| a_on(ip))
        .collect();
    let urls: Vec<String> = replicas.iter().map(|a| a.url()).collect();
    let b = b_over(&urls, |_| {});
    // Sequential calls to equally fast replicas: each pick is a tie at random. B also
    // chooses by latency, and a busy machine gives any replica a passing peak that keeps it
    // out for a few hundred milliseconds: the calls are spread over 2 s, so that it is the
    // shares that are measured, not one peak.
    for round in 0..10 {
        assert_eq!(call_many(b.addr(), 30), vec![], "round {round}");
        thread::sleep(Duration::from_millis(200)); // the pace of the calls
    }
    // A counts an answer once it is written, which can be just after B has read it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let counts = loop {
        let counts: Vec<u64> = replicas.iter().map(|a| echoes(a.addr())).collect();
        if counts.iter().sum::<u64>() >= 300 || Instant::now() > deadline {
            break counts;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(counts.iter().sum::<u64>(), 300, "{counts:?}");
    assert!(
        counts.iter().all(|n| *n >= 45),
        "less than 15 % on one: {counts:?}"
    );
}

#[test]
fn a_dead_replica_costs_no_call_is_ejected_and_readmitted() {
    let live = a_on("127.0.0.2");
    // A port on 127.0.0.3 that nothing listens on (yet).
    let dead: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.3:0").expect("bind");
        probe.local_addr().expect("addr")
    };
    let b = b_over(&[live.url(), format!("http://{dead}")], |c| {
        c.breaker_threshold = 2;
        c.breaker_cooldown_ms = 300;
    });
    // Refused before any byte: each call that tries it is retried on the live replica; it
    // is then passed over, and probed by a call every 250 ms, until it is ejected.
    let ejected = format!(r#"circuit_breaker_state{{replica="{dead}"}} 1"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics_show_now(b.addr(), &ejected) && Instant::now() < deadline {
        assert_eq!(call_many(b.addr(), 20), vec![]);
    }
    assert!(metrics_show(b.addr(), &ejected), "never ejected");
    // A comes up at the dead address: after the cooldown its trial call readmits it.
    let back = service_a::spawn(service_a::Config::on(&dead.to_string())).expect("A back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while echoes(back.addr()) == 0 && Instant::now() < deadline {
        assert_eq!(call_many(b.addr(), 5), vec![]);
    }
    assert!(echoes(back.addr()) > 0, "never readmitted");
    let readmitted = format!(r#"circuit_breaker_state{{replica="{dead}"}} 0"#);
    assert!(metrics_show(b.addr(), &readmitted));
}

#[test]
fn a_reset_is_retried_on_another_replica() {
    let resetting = FakeA::start(Behaviour::Reset);
    let live = a_on("127.0.0.2");
    // Ejection off: every call that picks the resetting replica must be saved by the retry.
    let b = b_over(&[resetting.url(), live.url()], |c| c.breaker_threshold = 0);
    assert_eq!(call_many(b.addr(), 40), vec![]);
    assert!(
        !resetting.requests().is_empty(),
        "the resetting replica was never tried"
    );
    assert!(metrics_show(b.addr(), "upstream_retries_total "));
}

#[test]
fn a_silent_replica_is_left_for_another_within_the_deadline() {
    let silent = FakeA::start(Behaviour::Silent);
    let live = a_on("127.0.0.2");
    let b = b_over(&[silent.url(), live.url()], |c| {
        c.timeout_ms = 1000;
        c.breaker_threshold = 0;
    });
    let started = Instant::now();
    assert_eq!(call_many(b.addr(), 10), vec![]);
    assert!(
        !silent.requests().is_empty(),
        "the silent replica was never tried"
    );
    // Each call that tried it waited half the deadline there, then got its answer elsewhere.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn with_one_replica_a_silent_a_is_a_timeout_after_the_whole_deadline() {
    let silent = FakeA::start(Behaviour::Silent);
    let b = b_over(&[silent.url()], |c| c.timeout_ms = 600);
    let started = Instant::now();
    let r = get(b.addr(), "/call-echo?msg=x");
    assert_eq!(
        (r.status, r.json()["kind"].as_str()),
        (503, Some("timeout"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_name_means_all_its_addresses_and_is_resolved_again() {
    let (one, two) = (a_on("127.0.0.2"), a_on("127.0.0.3"));
    // The test's own name for the replicas; it answers what `answer` holds at the time.
    let answer = Arc::new(Mutex::new(vec![one.addr(), two.addr()]));
    let seen = Arc::clone(&answer);
    let resolve: Resolve = Arc::new(move |host, _port| {
        assert_eq!(host, "replicas.test");
        Ok(seen.lock().map(|a| a.clone()).unwrap_or_default())
    });
    let mut config = Config::on("127.0.0.1:0", "http://replicas.test:1");
    config.resolve_every_ms = 100;
    let b = spawn_with_resolver(config, resolve).expect("start B");
    assert_eq!(call_many(b.addr(), 60), vec![]);
    assert!(echoes(one.addr()) > 0 && echoes(two.addr()) > 0);

    // The name now means a third replica only: B follows within a few re-resolutions.
    let three = a_on("127.0.0.4");
    *answer.lock().expect("lock") = vec![three.addr()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while echoes(three.addr()) == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        assert_eq!(call_many(b.addr(), 1), vec![]);
    }
    let before = (echoes(one.addr()), echoes(two.addr()));
    assert_eq!(call_many(b.addr(), 20), vec![]);
    assert_eq!(
        (echoes(one.addr()), echoes(two.addr())),
        before,
        "old replicas still called"
    );

    // The first comes back under the name: it is called again.
    *answer.lock().expect("lock") = vec![one.addr(), three.addr()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while echoes(one.addr()) == before.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        assert_eq!(call_many(b.addr(), 2), vec![]);
    }
    assert!(
        echoes(one.addr()) > before.0,
        "a returning address is not called again"
    );
}

/// A replica that left its name's addresses keeps its labels in B's `/metrics` for
/// `--forget-departed-ms` (it may return, its breaker as it was), then they go: churn does
/// not grow `/metrics` for ever. (They were never removed: 25 → 49 KB after churn.)
#[test]
fn the_labels_of_a_departed_replica_go_after_a_while() {
    let (stays, leaves) = (a_on("127.0.0.2"), a_on("127.0.0.3"));
    let answer = Arc::new(Mutex::new(vec![stays.addr(), leaves.addr()]));
    let seen = Arc::clone(&answer);
    let resolve: Resolve =
        Arc::new(move |_, _| Ok(seen.lock().map(|a| a.clone()).unwrap_or_default()));
    let mut config = Config::on("127.0.0.1:0", "http://replicas.test:1");
    config.resolve_every_ms = 100;
    config.forget_departed_ms = 500;
    let b = spawn_with_resolver(config, resolve).expect("start B");
    let label = |a: SocketAddr| format!(r#"replica="{a}""#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics_show_now(
        b.addr(),
        &format!(
            r#"upstream_requests_total{{{},outcome="ok"}}"#,
            label(leaves.addr())
        ),
    ) {
        assert!(
            Instant::now() < deadline,
            "the leaving replica never called"
        );
        assert_eq!(call_many(b.addr(), 10), vec![]);
    }
    answer.lock().expect("lock").retain(|a| *a != leaves.addr());
    let left = Instant::now();
    let gone = loop {
        assert_eq!(call_many(b.addr(), 2), vec![]);
        if !metrics_show_now(b.addr(), &label(leaves.addr())) {
            break left.elapsed();
        }
        assert!(
            left.elapsed() < Duration::from_secs(5),
            "still in /metrics after 5 s"
        );
        thread::sleep(Duration::from_millis(20)); // the pace of the polling
    };
    println!("the departed replica's labels went {gone:?} after it left");
    assert!(
        gone >= Duration::from_millis(500),
        "forgotten too soon: {gone:?}"
    );
    assert!(
        metrics_show_now(b.addr(), &label(stays.addr())),
        "the other's labels went too"
    );
}
