//! The log lines of the real binaries: every line in the original project's format (and in
//! `--log-format json` one object a line with the same fields), never torn on a pipe, no
//! field forged by a client, a reader that falls behind holds up no request, and the lines
//! dropped for it are counted exactly, even when stdout is never read.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{
    exchange, get, get_with, service_command, spawn, spawn_a, spawn_b, try_send, Signal,
};
use regex::Regex;
use serde_json::Value;

/// How long a test waits for any answer before calling it missing.
const WAIT: Duration = Duration::from_secs(5);

const EXIT_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn every_log_line_has_the_original_format() {
    let a = spawn_a(&["--drain-ms", "0"]);
    let b = spawn_b(&format!("http://{}", a.addr), &["--timeout-ms", "500"]);
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
fn json_logs_are_one_object_a_line_with_the_text_line_s_fields() {
    let a = spawn("service_a", &["--log-format", "json", "--drain-ms", "0"]);
    let a_addr = a.addr.to_string();
    let a_url = format!("http://{a_addr}");
    let b = spawn(
        "service_b",
        &[
            "--service-a-url",
            &a_url,
            "--log-format",
            "json",
            "--drain-ms",
            "0",
        ],
    );
    let headers = "X-Request-Id: json-1\r\n";
    assert_eq!(
        get_with(b.addr, "/call-echo?msg=a%0Ab", headers).status,
        200
    );
    let long = "x".repeat(8100);
    assert_eq!(
        get_with(b.addr, &format!("/call-echo?msg={long}"), "").status,
        200
    );
    a.signal(Signal::Int);
    let (_, a_lines) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(get_with(b.addr, "/call-echo?msg=down", headers).status, 503);
    b.signal(Signal::Int);
    let (_, b_lines) = b.wait_exit(Duration::from_secs(10));
    for line in a_lines.iter().chain(&b_lines) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["time", "level", "service", "message"] {
            assert!(v[key].is_string(), "no {key}: {line}");
        }
        assert!(line.len() < 4096, "{} bytes", line.len());
    }
    let parsed = |lines: &[String]| -> Vec<Value> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let b_events = parsed(&b_lines);
    let access = b_events
        .iter()
        .find(|v| v["request_id"] == "json-1" && v["path"] == "/call-echo" && v["status"] == 200)
        .expect("B's access object");
    assert_eq!(
        (access["method"].as_str(), access["service"].as_str()),
        (Some("GET"), Some("service_b"))
    );
    assert!(access["latency_ms"].is_number() && access["trace_id"].is_string());
    assert_eq!(access["replica"], a_addr);
    let failed = b_events
        .iter()
        .find(|v| v["kind"] == "connect" && v["level"] == "WARN")
        .expect("B's failed call object");
    assert!(
        failed["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/echo?msg=down")),
        "{failed}"
    );
    let a_events = parsed(&a_lines);
    assert!(a_events
        .iter()
        .any(|v| v["path"] == "/echo" && v["request_id"] == "json-1"));
}

#[test]
fn long_log_lines_are_never_torn_on_a_pipe() {
    // The kit reads each service's stdout through a pipe, as a container runtime does.
    let a = spawn_a(&[]);
    let a_url = format!("http://{}", a.addr);
    // The subject is the lines, not the latency: a deadline far beyond the load's so that
    // a machine busy with other tests cannot turn slow calls into 503s.
    let b = spawn_b(&a_url, &["--timeout-ms", "20000"]);
    let msg = "m".repeat(8100);
    let addr = b.addr;
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let target = format!("/call-echo?msg={msg}");
            thread::spawn(move || (0..20).filter(|_| get(addr, &target).status == 200).count())
        })
        .collect();
    let ok: usize = clients.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    assert_eq!(ok, 1000);
    b.signal(echo_tests::Signal::Int);
    let (_, lines) = b.wait_exit(Duration::from_secs(10));
    let line = Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARN|ERROR|DEBUG) service_b \S")
        .expect("regex");
    let torn: Vec<&String> = lines.iter().filter(|l| !line.is_match(l)).collect();
    let first = torn
        .first()
        .map(|l| l.chars().take(200).collect::<String>());
    assert!(
        torn.is_empty(),
        "{} torn lines, the first begins {first:?}",
        torn.len()
    );
    let calls = lines
        .iter()
        .filter(|l| l.contains("call to Service A ok"))
        .count();
    let access = lines
        .iter()
        .filter(|l| l.contains("GET /call-echo 200"))
        .count();
    assert_eq!((calls, access), (1000, 1000));
    // Every line fits one atomic pipe write, and says what it cut.
    assert!(lines.iter().all(|l| l.len() < 4096), "a line over 4 KiB");
    assert!(lines
        .iter()
        .any(|l| l.contains(" bytes cut]") && l.contains("request_id=")));
}

/// The access line of `raw` (a request A rejects or serves) in A's log, for `format`.
fn logged_line(format: &str, raw: &[u8], needle: &str) -> String {
    let mut a = spawn_a(&["--log-format", format]);
    let reply = exchange(a.addr, raw, WAIT);
    assert!(!reply.text().is_empty(), "no answer");
    a.wait_for(needle, WAIT)
}

/// The attack: a request line whose target carries U+3000 (a Unicode space) before each
/// forged field. Its access line (400) and that of a method with one showed
/// `GET /x request_id=forged status=200 400 …` to any reader splitting on whitespace.
#[test]
fn a_unicode_space_forges_no_log_field() {
    let forged = "/x\u{3000}request_id=forged\u{3000}status=200\u{a0}\u{2028}\u{85}";
    let attacks = [
        format!("GET {forged} HTTP/1.1\r\nHost: a\r\n\r\n"),
        "G\u{3000}status=200 /echo HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
    ];
    for raw in &attacks {
        let line = logged_line("text", raw.as_bytes(), " 400 ");
        assert!(line.bytes().all(|b| (b' '..=b'~').contains(&b)), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        let ids = words
            .iter()
            .filter(|w| w.starts_with("request_id="))
            .count();
        assert_eq!(ids, 1, "{line}");
        assert!(!words.contains(&"status=200"), "{line}");
        assert!(line.contains(r"\u{3000}status=200"), "{line}");
        let json = logged_line("json", raw.as_bytes(), r#""status":400"#);
        let v: serde_json::Value = serde_json::from_str(&json).expect("a JSON line");
        for key in ["message", "method", "path"] {
            let text = v[key].as_str().expect("the field");
            assert!(
                text.bytes().all(|b| (b' '..=b'~').contains(&b)),
                "{key}: {json}"
            );
            assert!(
                !text.split_whitespace().any(|w| w == "status=200"),
                "{json}"
            );
        }
        assert_eq!(
            v["message"].as_str().map(|m| m.split(' ').count()),
            Some(4),
            "{json}"
        );
    }
}

#[test]
fn a_log_reader_that_falls_behind_holds_up_no_request() {
    use std::io::{BufRead, BufReader};
    let (mut child, out, addr) = a_with_stdout_unread();
    // Nobody reads A's stdout now: 12,000 access lines of ~130 bytes overfill the 64 KiB
    // pipe and the 1 MiB A keeps waiting for it. Every request is still answered at once (a
    // connection thread that wrote its own line was held forever at about the 430th).
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    for i in 0..12_000 {
        conn.write_all(format!("GET /echo?msg=m{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .expect("send");
        let reply = echo_tests::read_reply(&mut reader)
            .unwrap_or_else(|e| panic!("request {i} was held up: {e}"));
        assert_eq!(reply.status, 200, "request {i}");
    }
    // Read again: the next line written says how many were dropped, in the log's format.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let format =
        Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARN service_a (\d+) log lines dropped: ")
            .expect("regex");
    let deadline = Instant::now() + WAIT;
    let mut dropped = None;
    while dropped.is_none() && Instant::now() < deadline {
        assert_eq!(get(addr, "/health").status, 200);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if let Some(n) = format
                .captures(&line)
                .and_then(|c| c[1].parse::<u64>().ok())
            {
                dropped = Some(n);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let dropped = dropped.expect("no line said how many were dropped");
    println!("{dropped} of 12,000 access lines dropped while nobody read");
    assert!(dropped > 1000, "{dropped}");
}

/// A started with its stdout piped to the test and its stderr kept, once it listens: the
/// process, its unread stdout (past the `listening on` line) and its address.
fn a_with_stdout_unread() -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    SocketAddr,
) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = service_command("service_a")
        .args(["--listen", "127.0.0.1:0", "--drain-ms", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn A");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("listening on http://") {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "A exited");
    }
    let addr: SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .expect("address");
    (child, out, addr)
}

/// 8 keep-alive clients send 9,000 requests to `addr`, each answered before the next: access
/// lines of 130 to 750 bytes (an echo, or a 404 for a path of up to 600 bytes).
fn nine_thousand_requests(addr: SocketAddr) -> u64 {
    let (clients, each) = (8usize, 1125usize);
    let senders: Vec<_> = (0..clients)
        .map(|c| {
            thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).expect("connect");
                conn.set_read_timeout(Some(WAIT)).expect("timeout");
                let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
                for i in 0..each {
                    let path = match i % 2 {
                        0 => format!("/echo?msg=c{c}-{i}"),
                        _ => format!("/{}", "p".repeat((i * 7 + c * 131) % 600)),
                    };
                    let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
                    conn.write_all(raw.as_bytes()).expect("send");
                    let reply = echo_tests::read_reply(&mut reader).expect("an answer");
                    assert!(reply.status == 200 || reply.status == 404, "{path}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a client");
    }
    (clients * each) as u64
}

/// SIGTERM to `child`; its exit code once it exits.
fn sigterm_and_wait(child: &mut std::process::Child) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    child.wait().expect("exit").code()
}

/// A's report of dropped lines: its count.
fn report_regex() -> Regex {
    Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARN service_a (\d+) log lines dropped: ")
        .expect("regex")
}

/// Nobody reads A's stdout while 8 clients send 9,000 requests (access lines of 130 to 750
/// bytes); then stdout is read to the end of a SIGTERM stop. Every line is written or
/// counted: the counts the reports give and the lines written add up to the lines logged,
/// and the stop's last line gives the total. (On the code before, the count was carried by
/// a line that could be dropped itself, and lost when no line came after the drops.)
#[test]
fn the_log_s_drop_count_is_exact() {
    use std::io::BufRead;
    let (mut child, out, addr) = a_with_stdout_unread();
    let requests = nine_thousand_requests(addr);
    // Read to the end, then stop A: every line it can still write arrives.
    let reader = thread::spawn(move || out.lines().map_while(Result::ok).collect::<Vec<_>>());
    let code = sigterm_and_wait(&mut child);
    let lines = reader.join().expect("the reader");
    assert_eq!(
        code,
        Some(0),
        "{:#?}",
        &lines[lines.len().saturating_sub(5)..]
    );
    let report = report_regex();
    let access = Regex::new(r" INFO service_a GET /\S* (200|404) ").expect("regex");
    let written = lines.iter().filter(|l| access.is_match(l)).count() as u64;
    let counted: u64 = lines
        .iter()
        .filter_map(|l| report.captures(l)?[1].parse::<u64>().ok())
        .sum();
    println!("{written} access lines written, {counted} lines counted as dropped, of 9,000");
    // Every line logged since `listening on`: the 9,000 access lines, then the stop's two
    // (`SIGTERM received: …` and `stopped: …`), written or counted (a report is neither).
    let logged = lines.iter().filter(|l| !report.is_match(l)).count() as u64;
    assert_eq!(
        logged + counted,
        requests + 2,
        "lines neither written nor counted: {:#?}",
        lines
            .iter()
            .filter(|l| !access.is_match(l))
            .collect::<Vec<_>>()
    );
    assert!(
        counted > 0,
        "the queue never filled: the test proves nothing"
    );
    let last = lines.last().map(String::as_str).unwrap_or("");
    assert!(last.contains(" stopped: "), "{last}");
    assert!(
        last.ends_with(&format!(" log_lines_dropped={counted}")),
        "{last}"
    );
}

/// The attack's own case: nobody reads A's stdout, during 9,000 requests and through the
/// SIGTERM stop. A exits (0, within the two flush limits) and says on stderr how many lines
/// stdout never took and how many were dropped: with those written, every line logged is
/// accounted for, exactly. On the code before, thousands were neither written nor counted.
#[test]
fn a_stop_with_stdout_never_read_still_counts_every_line() {
    use std::io::Read;
    let (mut child, mut out, addr) = a_with_stdout_unread();
    let requests = nine_thousand_requests(addr);
    let started = Instant::now();
    let code = sigterm_and_wait(&mut child);
    let took = started.elapsed();
    let mut text = String::new();
    let _ = out.read_to_string(&mut text);
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(5 + 1 + 2 + 2), "{took:?}");
    let report = report_regex();
    let lines: Vec<&str> = text.lines().collect();
    let written = lines.iter().filter(|l| !report.is_match(l)).count() as u64;
    let said = Regex::new(r"(\d+) log lines never written .*; (\d+) dropped before them")
        .expect("regex")
        .captures(&err)
        .map(|c| {
            (
                c[1].parse::<u64>().unwrap_or(0),
                c[2].parse::<u64>().unwrap_or(0),
            )
        });
    let (unwritten, dropped) = said.unwrap_or_else(|| panic!("no count on stderr: {err:?}"));
    println!("{written} written, {unwritten} never written, {dropped} dropped; stop took {took:?}");
    // The 9,000 access lines and the stop's two, each written, never written or dropped.
    let accounted = written + unwritten + dropped;
    assert!(
        accounted == requests + 2,
        "{accounted} accounted for: {written} written, {unwritten} never written, {dropped} dropped"
    );
}
