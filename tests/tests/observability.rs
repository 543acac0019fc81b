//! W3C trace context across the hop, from the real binaries: B continues or starts a trace,
//! sends A a child `traceparent`, passes `tracestate` on as the W3C test suite expects, and
//! both log `trace_id` and `span_id`; an invalid context is replaced.

#![forbid(unsafe_code)]

use std::time::Duration;

use echo_tests::{get_with, log_field, spawn, Behaviour, FakeA, Signal};

/// The Recommendation's example.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn b_continues_the_trace_and_hands_a_a_child_span() {
    let fake = FakeA::start(Behaviour::Answer(200, r#"{"echo":"x"}"#.into()));
    let b = spawn(
        "service_b",
        &["--service-a-url", &fake.url(), "--drain-ms", "0"],
    );
    let headers = format!("traceparent: {TRACEPARENT}\r\ntracestate: congo=t61rcWkgMzE\r\n");
    assert_eq!(get_with(b.addr, "/call-echo?msg=x", &headers).status, 200);
    b.signal(Signal::Int);
    let (_, lines) = b.wait_exit(Duration::from_secs(10));
    let access = lines
        .iter()
        .find(|l| l.contains("GET /call-echo 200"))
        .expect("B's access line");
    assert_eq!(log_field(access, "trace_id"), Some(TRACE_ID), "{access}");
    let span = log_field(access, "span_id").unwrap_or("");
    assert!(span.len() == 16 && span != "00f067aa0ba902b7", "{access}");
    let call = lines
        .iter()
        .find(|l| l.contains("call to Service A ok"))
        .expect("call line");
    assert_eq!(
        (log_field(call, "trace_id"), log_field(call, "span_id")),
        (Some(TRACE_ID), Some(span))
    );
    // A is given the same trace, B's span as its parent, the tracestate unchanged, and the
    // time B will wait.
    let sent = fake.requests().concat().to_ascii_lowercase();
    assert!(
        sent.contains(&format!("traceparent: 00-{TRACE_ID}-{span}-01")),
        "{sent}"
    );
    assert!(sent.contains("tracestate: congo=t61rcwkgmze"), "{sent}");
    assert!(sent.contains("x-request-timeout-ms: "), "{sent}");
}

#[test]
fn a_logs_the_trace_it_is_given_and_invalid_ones_are_replaced() {
    let a = spawn("service_a", &["--drain-ms", "0"]);
    let a_url = format!("http://{}", a.addr);
    let b = spawn("service_b", &["--service-a-url", &a_url, "--drain-ms", "0"]);
    let sent = format!("traceparent: {TRACEPARENT}\r\n");
    assert_eq!(get_with(b.addr, "/call-echo?msg=one", &sent).status, 200);
    let invalid = "traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    assert_eq!(get_with(b.addr, "/call-echo?msg=two", invalid).status, 200);
    assert_eq!(get_with(a.addr, "/echo?msg=three", &sent).status, 200);
    b.signal(Signal::Int);
    a.signal(Signal::Int);
    let (_, b_lines) = b.wait_exit(Duration::from_secs(10));
    let (_, a_lines) = a.wait_exit(Duration::from_secs(10));
    let echo_lines: Vec<&String> = a_lines
        .iter()
        .filter(|l| l.contains("GET /echo 200"))
        .collect();
    assert_eq!(echo_lines.len(), 3, "{a_lines:#?}");
    let b_calls: Vec<&String> = b_lines
        .iter()
        .filter(|l| l.contains("GET /call-echo 200"))
        .collect();
    // One trace from the client through B to A; the invalid header started a new one.
    assert_eq!(log_field(echo_lines[0], "trace_id"), Some(TRACE_ID));
    assert_eq!(log_field(b_calls[0], "trace_id"), Some(TRACE_ID));
    assert_ne!(
        log_field(echo_lines[0], "span_id"),
        log_field(b_calls[0], "span_id")
    );
    let new_trace = log_field(b_calls[1], "trace_id").unwrap_or("");
    assert!(
        new_trace.len() == 32 && new_trace != TRACE_ID,
        "{}",
        b_calls[1]
    );
    assert_eq!(log_field(echo_lines[1], "trace_id"), Some(new_trace));
    assert_eq!(log_field(echo_lines[2], "trace_id"), Some(TRACE_ID));
}

/// The field `name` of the request head that asked for `msg`, as B sent it to the fake A.
fn sent_field(fake: &FakeA, msg: &str, name: &str) -> Option<String> {
    let head = fake
        .requests()
        .into_iter()
        .find(|h| h.starts_with(&format!("GET /echo?msg={msg} ")))?;
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// What W3C's trace-context test suite expects of a service that calls another, checked on
/// what B sends A: two `traceparent` fields start a new trace (the first won); version 00's
/// unknown flags are zeroed (`ff` was passed on); `tracestate` is passed on only when valid
/// and of at most 32 members (60 were passed on), without its optional whitespace.
#[test]
fn trace_context_is_passed_on_as_the_w3c_test_suite_expects() {
    let fake = FakeA::start(Behaviour::Answer(200, r#"{"echo":"x"}"#.into()));
    let b = spawn("service_b", &["--service-a-url", &fake.url()]);
    let other = "00-12345678901234567890123456789012-1234567890123456-01";
    let tp = |v: &str| format!("traceparent: {v}\r\n");
    let cases: [(&str, String); 6] = [
        ("two", format!("{}{}", tp(TRACEPARENT), tp(other))),
        (
            "ff",
            tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"),
        ),
        (
            "ws",
            format!(
                "{}tracestate: foo=1 \t , \t bar=2,\r\ntracestate: baz=3\r\n",
                tp(TRACEPARENT)
            ),
        ),
        (
            "many",
            format!("{}tracestate: {}\r\n", tp(TRACEPARENT), members(60)),
        ),
        (
            "max",
            format!("{}tracestate: {}\r\n", tp(TRACEPARENT), members(32)),
        ),
        (
            "bad",
            format!("{}tracestate: foo=1,bar=x=y\r\n", tp(TRACEPARENT)),
        ),
    ];
    for (msg, headers) in &cases {
        // The fake answers `x`, whatever was asked: B is asked for `x` too.
        let target = format!("/call-echo?msg={msg}");
        let r = get_with(b.addr, &target, headers);
        assert!(r.status == 200 || r.status == 503, "{msg}: {}", r.status);
    }
    assert!(fake.wait_for_requests(cases.len()));
    let parent = |msg: &str| sent_field(&fake, msg, "traceparent").unwrap_or_default();
    let two = parent("two");
    assert!(two.len() == 55, "{two}");
    assert!(
        !two.contains(TRACE_ID) && !two.contains("12345678901234567890123456789012"),
        "{two}"
    );
    let ff = parent("ff");
    assert!(
        ff.starts_with(&format!("00-{TRACE_ID}-")) && ff.ends_with("-01"),
        "{ff}"
    );
    let state = |msg: &str| sent_field(&fake, msg, "tracestate");
    assert_eq!(state("ws").as_deref(), Some("foo=1,bar=2,baz=3"));
    assert_eq!(state("many"), None);
    assert_eq!(state("max"), Some(members(32)));
    assert_eq!(state("bad"), None);
}

/// `n` valid `tracestate` list members.
fn members(n: usize) -> String {
    let each: Vec<String> = (1..=n).map(|i| format!("k{i:02}=v{i:02}")).collect();
    each.join(",")
}
