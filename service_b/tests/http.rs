//! Service B over real sockets, started in-process on port 0, calling either a real Service A
//! or a real misbehaving server standing in for it.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use echo_tests::{closed_port, get, get_with, Behaviour, FakeA};
use serde_json::{json, Value};
use service_b::{spawn, Config};

fn b_calling(url: &str, timeout_ms: u64) -> echo_core::ServerHandle {
    let mut config = Config::on("127.0.0.1:0", url);
    config.timeout_ms = timeout_ms;
    spawn(config).expect("start service_b")
}

fn real_a() -> echo_core::ServerHandle {
    service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("start service_a")
}

#[test]
fn success_passes_a_object_through() {
    let a = real_a();
    let b = b_calling(&a.url(), 2000);
    let r = get(b.addr(), "/call-echo?msg=test123");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"msg": "test123", "echo_response": {"echo": "test123"}})
    );
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        text.starts_with(r#"{"msg":"#),
        "keys in contract order: {text}"
    );
}

#[test]
fn missing_empty_or_bad_msg_is_400_and_a_is_not_called() {
    let fake = FakeA::start(Behaviour::Answer(200, r#"{"echo":"x"}"#.into()));
    let b = b_calling(&fake.url(), 2000);
    for target in [
        "/call-echo",
        "/call-echo?msg=",
        "/call-echo?msg=%zz",
        "/call-echo?msg=%FF",
    ] {
        let r = get(b.addr(), target);
        assert_eq!(r.status, 400, "{target}");
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(
        get(b.addr(), "/call-echo").json(),
        json!({"error": "Missing 'msg' parameter"})
    );
    assert!(
        fake.requests().is_empty(),
        "A was called: {:?}",
        fake.requests()
    );
}

#[test]
fn a_message_too_long_for_a_is_414_and_a_is_not_called() {
    let a = real_a();
    let b = b_calling(&a.url(), 2000);
    // 3,000 `!` fit B's 8 KiB target as they are, but not A's once encoded as `%21`.
    let long = "!".repeat(3000);
    for _ in 0..6 {
        let r = get(b.addr(), &format!("/call-echo?msg={long}"));
        assert_eq!(r.status, 414, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(
        get(b.addr(), "/call-echo?msg=fine").status,
        200,
        "breaker tripped by client mistakes"
    );
    assert_eq!(get(b.addr(), "/ready").status, 200);
}

#[test]
fn request_id_reaches_a() {
    let fake = FakeA::start(Behaviour::Answer(200, r#"{"echo":"hi"}"#.into()));
    let b = b_calling(&fake.url(), 2000);
    let kept = get_with(b.addr(), "/call-echo?msg=hi", "X-Request-Id: trace-42\r\n");
    assert_eq!(kept.status, 200);
    assert_eq!(kept.header("X-Request-Id"), Some("trace-42"));
    let generated = get_with(b.addr(), "/call-echo?msg=hi", "X-Request-Id: bad id!\r\n");
    let id = generated.header("X-Request-Id").unwrap_or("").to_string();
    assert_eq!(id.len(), 16);
    // B's own look at the fake's /ready (its answers close their connections) aside.
    let seen: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET /ready "))
        .collect();
    assert!(
        seen[0]
            .to_ascii_lowercase()
            .contains("x-request-id: trace-42"),
        "{seen:?}"
    );
    assert!(seen[1].contains(&id), "{seen:?}");
    assert!(seen[0].starts_with("GET /echo?msg=hi HTTP/1.1"), "{seen:?}");
}

/// Calls B and checks the 503 body: kind, details prefix, and that B stays healthy.
fn expect_503(b: &echo_core::ServerHandle, kind: &str, prefix: &str) -> Value {
    let r = get(b.addr(), "/call-echo?msg=hello");
    let body = r.json();
    assert_eq!(r.status, 503, "{body}");
    assert_eq!(body["error"], "Service A unavailable");
    assert_eq!(body["kind"], kind, "{body}");
    let details = body["details"].as_str().unwrap_or("");
    assert!(
        details.starts_with(prefix),
        "{details:?} should start with {prefix:?}"
    );
    assert_eq!(get(b.addr(), "/health").json(), json!({"status": "ok"}));
    body
}

#[test]
fn closed_port_is_connect() {
    let b = b_calling(&format!("http://{}", closed_port()), 2000);
    let started = Instant::now();
    expect_503(&b, "connect", "Connection error: ");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn silent_listener_is_timeout_within_the_deadline() {
    let fake = FakeA::start(Behaviour::Silent);
    let b = b_calling(&fake.url(), 300);
    let started = Instant::now();
    let r = get(b.addr(), "/call-echo?msg=hello");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["kind"], "timeout");
    assert_eq!(r.json()["details"], "Timeout calling Service A after 0.3s");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(get(b.addr(), "/health").status, 200);
}

#[test]
fn reset_is_connect() {
    let fake = FakeA::start(Behaviour::Reset);
    let b = b_calling(&fake.url(), 2000);
    expect_503(&b, "connect", "Connection error: ");
    // The reset is retried once on a fresh connection, within the deadline.
    assert_eq!(fake.requests().len(), 2);
}

#[test]
fn a_pooled_connection_dying_on_reuse_is_retried_once() {
    let fake = FakeA::start(Behaviour::OncePerConnection(r#"{"echo":"hi"}"#.into()));
    let b = b_calling(&fake.url(), 2000);
    for i in 0..5 {
        let r = get(b.addr(), "/call-echo?msg=hi");
        assert_eq!(
            r.status,
            200,
            "call {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Calls 2 and 4 met a dead pooled connection and went again on a fresh one, which is not
    // pooled; calls 1, 3 and 5 opened a new connection: 1 + 2 + 1 + 2 + 1 requests reached A.
    assert_eq!(fake.requests().len(), 7);
}

#[test]
fn an_answer_cut_after_its_first_bytes_is_bad_response_and_not_retried() {
    let fake = FakeA::start(Behaviour::CutAfterStatusLine);
    let b = b_calling(&fake.url(), 2000);
    let body = expect_503(&b, "bad_response", "Invalid response from Service A: ");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.contains("cut short after 17 bytes")),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 1, "A saw the GET again");
}

#[test]
fn status_500_is_status() {
    let fake = FakeA::start(Behaviour::Answer(500, r#"{"error":"boom"}"#.into()));
    let b = b_calling(&fake.url(), 2000);
    let body = expect_503(&b, "status", "Service A returned HTTP 500");
    assert_eq!(body["details"], "Service A returned HTTP 500");
}

#[test]
fn invalid_json_and_wrong_shapes_are_bad_response() {
    for body in ["not json", "[1,2]", r#"{"echo":42}"#, "{}"] {
        let fake = FakeA::start(Behaviour::Answer(200, body.into()));
        let b = b_calling(&fake.url(), 2000);
        expect_503(&b, "bad_response", "Invalid response from Service A: ");
    }
}

#[test]
fn truncated_body_is_bad_response() {
    let fake = FakeA::start(Behaviour::Truncated);
    let b = b_calling(&fake.url(), 2000);
    expect_503(&b, "bad_response", "Invalid response from Service A: ");
}

#[test]
fn garbage_is_bad_response() {
    let fake = FakeA::start(Behaviour::Garbage);
    let b = b_calling(&fake.url(), 2000);
    expect_503(&b, "bad_response", "Invalid response from Service A: ");
}

/// A small deterministic generator, so a failure names a reproducible string.
fn strings() -> Vec<String> {
    let pool: Vec<char> =
        "aZ09 &=+%#?/;:,'\"\\\n\r\t\u{0}\u{1b}<>{}[]~!@$^*()é中\u{200b}\u{2028}😀🚀👍🏽"
            .chars()
            .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out: Vec<String> = pool.iter().map(|c| c.to_string()).collect();
    out.extend(
        [
            "a+b",
            "%2B",
            "%",
            "100%",
            "&msg=evil",
            "=",
            "#frag",
            "?q",
            "  ",
        ]
        .map(String::from),
    );
    for i in 0..300 {
        let len = (next() % 40 + 1) as usize;
        out.push(
            (0..len)
                .map(|_| pool[(next() % pool.len() as u64) as usize])
                .collect(),
        );
        if i % 50 == 0 {
            // Long messages: mostly letters, some specials, within the 8 KiB target limit.
            let long: String = (0..2000)
                .map(|j| {
                    if j % 97 == 0 {
                        pool[(next() % pool.len() as u64) as usize]
                    } else {
                        'x'
                    }
                })
                .collect();
            out.push(long);
        }
    }
    out
}

#[test]
fn any_string_round_trips_byte_exact() {
    let a = real_a();
    let b = b_calling(&a.url(), 5000);
    let all = strings();
    assert!(all.len() > 300);
    for s in &all {
        let target = format!("/call-echo?msg={}", echo_core::client::form_encode(s));
        let r = get(b.addr(), &target);
        assert_eq!(r.status, 200, "{s:?}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json(),
            json!({"msg": s, "echo_response": {"echo": s}}),
            "{s:?}"
        );
    }
}

/// The value of `X-Request-Timeout-Ms` in a request head the fake received.
fn told(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-timeout-ms")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(u64::MAX)
}

/// A client's own shorter deadline (`X-Request-Timeout-Ms`) is B's deadline for its call: a
/// silent A costs it that long, not B's 2 s, A is told no more, and the replica is not
/// counted as failing for the client's impatience. A longer one changes nothing: the
/// contract's deadline stays the longest. None at all: a timeout at once, A not called.
/// Before, B ignored the client's deadline (the call took 2 s).
#[test]
fn a_client_s_shorter_deadline_is_honoured() {
    let fake = FakeA::start(Behaviour::Silent);
    let mut config = Config::on("127.0.0.1:0", &fake.url());
    config.breaker_threshold = 1;
    let b = spawn(config).expect("start service_b");
    for _ in 0..2 {
        let started = Instant::now();
        let r = get_with(
            b.addr(),
            "/call-echo?msg=x",
            "X-Request-Timeout-Ms: 200\r\n",
        );
        let took = started.elapsed();
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["kind"], "timeout", "{}", r.json());
        assert_eq!(r.json()["details"], "Timeout calling Service A after 0.2s");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    let heads = fake.requests();
    assert_eq!(
        heads.len(),
        2,
        "not ejected for the client's deadline: {heads:?}"
    );
    assert!(heads.iter().all(|h| told(h) <= 200), "{heads:?}");
    let r = get_with(b.addr(), "/call-echo?msg=x", "X-Request-Timeout-Ms: 0\r\n");
    assert_eq!(r.json()["kind"], "timeout");
    assert_eq!(fake.requests().len(), 2, "A called with no time left");
    let started = Instant::now();
    let r = get_with(
        b.addr(),
        "/call-echo?msg=x",
        "X-Request-Timeout-Ms: 5000\r\n",
    );
    assert_eq!(r.json()["details"], "Timeout calling Service A after 2.0s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(fake.requests().iter().all(|h| told(h) <= 2000));
}
