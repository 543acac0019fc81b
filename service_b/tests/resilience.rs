//! B's resilience over real sockets: the bulkhead, the circuit breaker, readiness, metrics,
//! and A's fault injection seen through B.

#![forbid(unsafe_code)]

use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, Behaviour, FakeA};
use serde_json::json;
use service_b::{spawn, Config};

/// B on port 0 calling `url`, with the defaults changed by `tune`.
fn b_with(url: &str, tune: impl FnOnce(&mut Config)) -> echo_core::ServerHandle {
    let mut config = Config::on("127.0.0.1:0", url);
    tune(&mut config);
    spawn(config).expect("start service_b")
}

#[test]
fn the_bulkhead_refuses_calls_beyond_the_limit_at_once() {
    let fake = FakeA::start(Behaviour::Silent);
    let b = b_with(&fake.url(), |c| {
        c.max_inflight = 2;
        c.timeout_ms = 1500;
        c.breaker_threshold = 0;
    });
    let addr = b.addr();
    let held: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || get(addr, "/call-echo?msg=held")))
        .collect();
    assert!(fake.wait_for_requests(2), "the two calls never reached A");

    for _ in 0..4 {
        let started = Instant::now();
        let r = get(addr, "/call-echo?msg=extra");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["kind"], "overloaded");
        assert_eq!(r.header("Retry-After"), Some("1"));
    }
    let started = Instant::now();
    assert_eq!(get(addr, "/health").status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(fake.requests().len(), 2, "an overloaded call reached A");

    for h in held {
        let r = h.join().expect("client");
        assert_eq!(r.json()["kind"], "timeout");
    }
    wait_for_metrics(
        addr,
        &[
            r#"upstream_requests_total{replica="none",outcome="overloaded"} 4"#,
            &format!(
                r#"upstream_requests_total{{replica="{}",outcome="timeout"}} 2"#,
                fake.addr
            ),
            "upstream_in_flight 0",
        ],
    );
}

/// The requests that reached the fake, apart from B's probes of its `/ready`.
fn calls_reaching(fake: &FakeA) -> usize {
    let requests = fake.requests();
    requests
        .iter()
        .filter(|r| !r.starts_with("GET /ready "))
        .count()
}

#[test]
fn the_breaker_ejects_and_only_b_s_own_probe_readmits() {
    let fake = FakeA::start(Behaviour::Answer(500, r#"{"error":"down"}"#.into()));
    let b = b_with(&fake.url(), |c| {
        c.breaker_threshold = 3;
        c.breaker_cooldown_ms = 200;
        c.breaker_max_cooldown_ms = 400;
    });
    for _ in 0..3 {
        assert_eq!(get(b.addr(), "/call-echo?msg=x").json()["kind"], "status");
    }
    assert_eq!(calls_reaching(&fake), 3);

    let started = Instant::now();
    let open = get(b.addr(), "/call-echo?msg=x");
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(open.status, 503);
    assert_eq!(open.json()["kind"], "circuit_open");
    // The details keep the cause of the failures that opened it.
    let details = open.json()["details"].as_str().unwrap_or("").to_string();
    let cause = "Circuit open after 3 failures; last: Service A returned HTTP 500; next try in ";
    assert!(details.starts_with(cause), "{details}");
    assert_eq!(open.header("Retry-After"), Some("1"));
    // B's readiness does not depend on A: with A ejected it still answers its 503s.
    assert_eq!(get(b.addr(), "/ready").json(), json!({"status": "ready"}));

    // A still fails: B's own probe of /ready (500 too) ejects it again, for longer, and
    // no user call ever reached A meanwhile.
    let replica = fake.addr;
    wait_for_metrics(
        b.addr(),
        &[&format!(
            r#"upstream_probes_total{{replica="{replica}",kind="health",result="failed"}} 2"#
        )],
    );
    assert_eq!(
        get(b.addr(), "/call-echo?msg=x").json()["kind"],
        "circuit_open"
    );
    assert_eq!(calls_reaching(&fake), 3, "a user call was the trial");
    let cooldown = format!(r#"upstream_ejection_cooldown_seconds{{replica="{replica}"}} 0.4"#);
    wait_for_metrics(b.addr(), &[&cooldown]);

    // A recovers: the next probe readmits it, and calls reach it again.
    fake.set(Behaviour::Answer(200, r#"{"echo":"x"}"#.into()));
    wait_for_metrics(
        b.addr(),
        &[&format!(
            r#"circuit_breaker_state{{replica="{replica}"}} 0"#
        )],
    );
    assert_eq!(get(b.addr(), "/call-echo?msg=x").status, 200);
    wait_for_metrics(
        b.addr(),
        &[
            &format!(r#"upstream_probes_total{{replica="{replica}",kind="health",result="ok"}} 1"#),
            r#"upstream_requests_total{replica="none",outcome="circuit_open"} 2"#,
            &format!(r#"upstream_requests_total{{replica="{replica}",outcome="ok"}} 1"#),
        ],
    );
}

#[test]
fn metrics_count_requests_by_route_and_status() {
    let a = service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("start A");
    let b = b_with(&a.url(), |_| {});
    for _ in 0..3 {
        assert_eq!(get(b.addr(), "/call-echo?msg=m").status, 200);
    }
    assert_eq!(get(b.addr(), "/nope/123").status, 404);
    let reply = get(b.addr(), "/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    // A request is counted just after its answer is written, so the last one may still be
    // on its way into the counters when the client asks: look until all are there.
    let b_needles = [
        r#"http_requests_total{method="GET",route="/call-echo",status="200"} 3"#,
        r#"http_requests_total{method="GET",route="other",status="404"} 1"#,
        r#"http_request_duration_seconds_count{method="GET",route="/call-echo"} 3"#,
        &format!(
            r#"upstream_requests_total{{replica="{}",outcome="ok"}} 3"#,
            a.addr()
        ),
        "upstream_request_duration_seconds_count 3",
        "# TYPE circuit_breaker_state gauge",
    ];
    wait_for_metrics(b.addr(), &b_needles);
    wait_for_metrics(
        a.addr(),
        &[r#"http_requests_total{method="GET",route="/echo",status="200"} 3"#],
    );
}

/// Fetches `/metrics` until every needle is in it; panics with the last text after 5 s.
fn wait_for_metrics(addr: std::net::SocketAddr, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&get(addr, "/metrics").body).into_owned();
        match needles.iter().find(|n| !text.contains(*n)) {
            None => return,
            Some(missing) if Instant::now() > deadline => panic!("missing {missing}: {text}"),
            Some(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn b_forwards_only_msg_so_faults_cannot_be_injected_through_it() {
    let a = service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("start A");
    let b = b_with(&a.url(), |_| {});
    let r = get(b.addr(), "/call-echo?msg=x&status=500&delay_ms=5000");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"msg": "x", "echo_response": {"echo": "x"}})
    );
    assert_eq!(get(a.addr(), "/echo?msg=x&status=503").status, 503);
}

#[test]
fn a_failing_at_a_seeded_rate_is_seen_as_status_failures() {
    let mut config = service_a::Config::on("127.0.0.1:0");
    config.fail_rate = 1.0;
    config.fail_status = 502;
    let a = service_a::spawn(config).expect("start A");
    let b = b_with(&a.url(), |c| c.breaker_threshold = 0);
    let r = get(b.addr(), "/call-echo?msg=x");
    assert_eq!(r.json()["details"], "Service A returned HTTP 502");
    assert_eq!(get(a.addr(), "/health").status, 200);
}

#[test]
fn a_4xx_from_a_does_not_open_the_breaker() {
    let fake = FakeA::start(Behaviour::Answer(404, r#"{"error":"Not found"}"#.into()));
    let b = b_with(&fake.url(), |c| c.breaker_threshold = 2);
    for _ in 0..5 {
        let r = get(b.addr(), "/call-echo?msg=x");
        assert_eq!(r.json()["details"], "Service A returned HTTP 404");
    }
    assert_eq!(fake.requests().len(), 5, "the breaker opened on A's 4xx");
}

#[test]
fn the_breaker_counts_calls_not_attempts() {
    // A refused call is retried once on a fresh connection; that retry must not count as a
    // second failure, or the breaker would open after fewer calls than its threshold.
    let down = echo_tests::closed_port();
    let b = b_with(&format!("http://{down}"), |c| c.breaker_threshold = 3);
    for i in 0..3 {
        let r = get(b.addr(), "/call-echo?msg=x");
        assert_eq!(
            (r.status, r.json()["kind"].as_str()),
            (503, Some("connect")),
            "call {i}"
        );
    }
    let open = get(b.addr(), "/call-echo?msg=x").json();
    assert_eq!(open["kind"], "circuit_open");
    let details = open["details"].as_str().unwrap_or("");
    assert!(
        details.starts_with("Circuit open after 3 failures; last: Connection error: "),
        "{details}"
    );
}
