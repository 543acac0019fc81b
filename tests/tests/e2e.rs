//! End-to-end tests of the two real binaries as separate processes: their log format, A
//! dying and coming back under B, graceful shutdown, and start-up errors.

#![forbid(unsafe_code)]

use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, get_with, service_command, try_send, Running, Signal};
use regex::Regex;
use serde_json::json;

const EXIT_LIMIT: Duration = Duration::from_secs(10);

fn start_a(extra: &[&str]) -> Running {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Running::start("service_a", &args)
}

fn start_b(a_url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["--listen", "127.0.0.1:0", "--service-a-url", a_url];
    args.extend_from_slice(extra);
    Running::start("service_b", &args)
}

#[test]
fn every_log_line_has_the_original_format() {
    let a = start_a(&["--drain-ms", "0"]);
    let b = start_b(&format!("http://{}", a.addr), &["--timeout-ms", "500"]);
    let hi = get(b.addr, "/call-echo?msg=hi");
    assert_eq!(hi.status, 200, "{}", String::from_utf8_lossy(&hi.body));
    assert_eq!(get(b.addr, "/nope").status, 404);
    assert_eq!(get(b.addr, "/call-echo").status, 400);
    // A forged line: the message and the request id try to start a new log line.
    let forged = "x%0A2024-01-01%2000:00:00%20INFO%20service_b%20forged%0D%1B[31m";
    assert_eq!(get(b.addr, &format!("/call-echo?msg={forged}")).status, 200);
    assert_eq!(get(a.addr, &format!("/echo?msg={forged}")).status, 200);
    let odd = get_with(a.addr, "/health", "X-Request-Id: a\tb\r\n");
    assert_eq!(odd.status, 200);
    // Raw control bytes in the target: refused (they are not allowed in a request target),
    // and the access line of the refusal shows them escaped.
    let raw = try_send(
        a.addr,
        b"GET /x\x1b[31m\x0bpath HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(raw.map(|r| r.status).ok(), Some(400));

    a.signal(Signal::Term);
    let (code, a_lines) = a.wait_exit(EXIT_LIMIT);
    assert_eq!(code, Some(0));
    // With A gone, B answers 503 and logs the failed call at WARN.
    assert_eq!(get(b.addr, "/call-echo?msg=down").status, 503);
    b.signal(Signal::Int);
    let (code, b_lines) = b.wait_exit(EXIT_LIMIT);
    assert_eq!(code, Some(0));

    let line = Regex::new(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (ERROR|WARN|INFO|DEBUG|TRACE) (service_a|service_b) \S.*$",
    )
    .expect("regex");
    let access = Regex::new(
        r" (INFO|WARN) service_[ab] [A-Z]+ /\S* \d{3} \d+\.\d{2}ms request_id=[A-Za-z0-9._-]{1,128} trace_id=[0-9a-f]{32} span_id=[0-9a-f]{16}( replica=\S+)?$",
    )
    .expect("regex");
    for (lines, name) in [(&a_lines, "service_a"), (&b_lines, "service_b")] {
        assert!(lines.len() >= 5, "{lines:#?}");
        for l in lines.iter() {
            assert!(line.is_match(l), "not in the log format: {l:?}");
            assert!(
                !l.chars().any(char::is_control),
                "a raw control character: {l:?}"
            );
            assert!(l.contains(name), "{l:?}");
            assert!(!l.starts_with("2024-01-01 00:00:00"), "forged line: {l:?}");
        }
        assert!(lines[0].contains(" config: "), "{:?}", lines[0]);
        assert!(lines[1].ends_with(&format!(
            "listening on http://{}",
            lines[1].rsplit("http://").next().unwrap_or("")
        )));
        assert!(
            lines.iter().any(|l| l
                .ends_with(" stopped: every accepted request was answered log_lines_dropped=0")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().filter(|l| access.is_match(l)).count() >= 2,
            "{lines:#?}"
        );
    }
    // B's access line of a call names the replica of A it went to (none: no call made).
    let a_addr = format!(
        " replica={}",
        a_lines[1].rsplit("http://").next().unwrap_or("?")
    );
    assert!(b_lines
        .iter()
        .any(|l| l.contains("INFO service_b GET /call-echo 200 ") && l.ends_with(&a_addr)));
    assert!(b_lines
        .iter()
        .any(|l| l.contains("INFO service_b GET /nope 404 ") && !l.contains(" replica=")));
    assert!(b_lines
        .iter()
        .any(|l| l.contains("WARN service_b GET /call-echo 503 ") && l.ends_with(&a_addr)));
    let call_ok = b_lines
        .iter()
        .find(|l| l.contains("call to Service A ok"))
        .expect("outbound log");
    assert!(
        call_ok.contains("timeout=500ms") && call_ok.contains("status=200"),
        "{call_ok}"
    );
    // The fields B declared as shown in its message are not appended again.
    assert!(
        !call_ok.contains(" url=")
            && !call_ok.contains(" timeout_ms=")
            && !call_ok.contains(" upstream_status="),
        "{call_ok}"
    );
    let call_failed = b_lines
        .iter()
        .find(|l| l.contains("call to Service A failed"))
        .expect("failure log");
    assert!(
        call_failed.contains(" WARN ")
            && call_failed.contains("kind=connect")
            && call_failed.contains("timeout=500ms"),
        "{call_failed}"
    );
    assert!(
        a_lines.iter().any(|l| l.contains(r"GET /health 200")),
        "{a_lines:#?}"
    );
    assert!(
        a_lines
            .iter()
            .any(|l| l.contains(" GET /x") && l.contains(" 400 ")),
        "no access line for the refused target: {a_lines:#?}"
    );
}

#[test]
fn a_killed_then_restarted_on_the_same_port() {
    let a = start_a(&[]);
    let port = a.addr.port();
    let b = start_b(&format!("http://{}", a.addr), &[]);
    // Fill B's pool with connections to this A.
    for i in 0..8 {
        assert_eq!(get(b.addr, &format!("/call-echo?msg=warm{i}")).status, 200);
    }
    drop(a); // SIGKILL

    let started = Instant::now();
    let down = get(b.addr, "/call-echo?msg=down");
    assert_eq!(down.status, 503);
    assert_eq!(down.json()["kind"], "connect");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let listen = format!("127.0.0.1:{port}");
    let _a2 = Running::start("service_a", &["--listen", &listen]);
    for i in 0..10 {
        let r = get(b.addr, &format!("/call-echo?msg=back{i}"));
        assert_eq!(
            r.status,
            200,
            "call {i} after restart: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn sigterm_lets_the_in_flight_request_finish() {
    let mut a = start_a(&[
        "--delay-ms",
        "1500",
        "--log-level",
        "debug",
        "--drain-ms",
        "0",
    ]);
    let addr = a.addr;
    // A keep-alive connection, answered once and then idle.
    let mut idle = std::net::TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::io::Write::write_all(&mut idle, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut idle_reader = std::io::BufReader::new(idle.try_clone().expect("clone"));
    assert_eq!(
        echo_tests::read_reply(&mut idle_reader)
            .expect("reply")
            .status,
        200
    );
    let client = thread::spawn(move || get(addr, "/echo?msg=slow"));
    // The connection's thread logs this at DEBUG when it takes the request: our readiness
    // signal.
    a.wait_for("GET /echo started", Duration::from_secs(10));
    a.signal(Signal::Term);
    a.wait_for("SIGTERM received", Duration::from_secs(10));
    // Stopped accepting: a new connection is refused while the slow request still runs. (If
    // it connects at all, another test's service took the freed port: A must not log it.)
    let late = try_send(
        addr,
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: late-probe\r\n\r\n",
    );
    // And the idle keep-alive connection is closed by the stop itself, with no response and
    // no request from us: the server shuts every connection down for reading at SIGTERM, so
    // the idle connection's thread reads end of stream and closes it. (We send nothing first:
    // a request written now could race the stop and be answered.)
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut idle_reader, &mut rest);
    assert!(read.is_ok(), "the idle connection was left open: {read:?}");
    assert_eq!(String::from_utf8_lossy(&rest), "", "bytes after the stop");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        started.elapsed()
    );
    // Closed for good: a request on it now gets no answer.
    let _ = std::io::Write::write_all(&mut idle, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut after = Vec::new();
    let _ = std::io::Read::read_to_end(&mut idle_reader, &mut after);
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
    let reply = client.join().expect("client thread");
    assert_eq!((reply.status, reply.json()), (200, json!({"echo": "slow"})));
    let (code, lines) = a.wait_exit(EXIT_LIMIT);
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("GET /echo 200")),
        "{lines:#?}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l
                .ends_with(" stopped: every accepted request was answered log_lines_dropped=0")),
        "{lines:#?}"
    );
    let served_late = lines.iter().any(|l| l.contains("request_id=late-probe"));
    assert!(
        !served_late,
        "a connection made after the stop was served: {late:?}"
    );
}

#[test]
fn start_up_errors_are_one_line_and_non_zero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("service_a", vec!["--listen", &addr]),
        ("service_a", vec!["--listen", "not-an-address"]),
        ("service_a", vec!["--bogus"]),
        ("service_a", vec!["--delay-ms", "soon"]),
        ("service_b", vec!["--service-a-url", "https://127.0.0.1:1"]),
        ("service_b", vec!["--timeout-ms", "0"]),
        ("service_b", vec!["--listen", "127.0.0.1:99999"]),
        ("service_b", vec!["--max-connections", "0"]),
        ("service_b", vec!["--log-level", "loud"]),
    ];
    for (name, args) in cases {
        let out = service_command(name).args(&args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{name} {args:?}");
        assert!(
            out.status.code().is_some(),
            "killed by a signal: {name} {args:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "{name} {args:?}: {stderr:?}");
        assert!(stderr.starts_with(&format!("{name}: ")), "{stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr:?}");
    }
    for name in ["service_a", "service_b"] {
        let help = service_command(name).arg("--help").output().expect("run");
        assert_eq!(help.status.code(), Some(0));
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("--listen") && text.contains("[env: "),
            "{text}"
        );
        let version = service_command(name)
            .arg("--version")
            .output()
            .expect("run");
        assert_eq!(version.status.code(), Some(0));
    }
}

#[test]
fn env_vars_configure_the_binaries() {
    let out = service_command("service_b")
        .env("SERVICE_B_TIMEOUT_MS", "nope")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
}

#[test]
fn a_burst_of_new_connections_is_served_at_once() {
    // Fresh services, so every call opens a new connection from B to A at the same moment.
    // A server whose thread pool counts a thread as free before it has woken up (tiny_http
    // 0.12 did) queues such a connection until another one closes; B's deadline would then
    // turn it into a 503 timeout. Each connection must get a thread of its own at once.
    let a = start_a(&[]);
    let b = start_b(&format!("http://{}", a.addr), &["--timeout-ms", "3000"]);
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
