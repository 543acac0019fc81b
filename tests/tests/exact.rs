//! Exact to the byte: the defects found by attack (smuggling through Unicode whitespace, log
//! lines torn on a pipe, a write limit per system call instead of per answer) and the
//! decisions on what the specification left loose (Host, a silent new connection, the flags'
//! bounds, user information in `--service-a-url`, refusals logged once a second), each against
//! the real binaries over real sockets.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{exchange, get, get_with, says_close, service_command, Running};
use regex::Regex;

const WAIT: Duration = Duration::from_secs(5);

fn start_a(extra: &[&str]) -> Running {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Running::start("service_a", &args)
}

#[test]
fn unicode_whitespace_around_a_length_smuggles_nothing() {
    let a = start_a(&[]);
    let smuggled = "GET /echo?msg=SMUGGLED HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // NBSP, NEL, U+2028 and U+3000: `str::trim` took each away and read a length of 5.
    for ws in ["\u{a0}", "\u{85}", "\u{2028}", "\u{3000}"] {
        let raw = format!(
            "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {ws}5\r\n\r\nhello{smuggled}"
        );
        let got = exchange(a.addr, raw.as_bytes(), WAIT);
        assert!(!got.text().contains("SMUGGLED"), "{ws:?}: {}", got.text());
        let (reply, rest) = got.reply();
        assert_eq!(reply.status, 400, "{ws:?}: {}", got.text());
        assert!(
            says_close(&reply) && rest.is_empty() && got.closed,
            "{ws:?}"
        );
    }
    // Other fields are read the same way: a request id behind U+2028 is not "FORGED".
    let reply = get_with(a.addr, "/health", "X-Request-Id: \u{2028}FORGED\r\n");
    assert_eq!(reply.status, 200);
    assert_ne!(reply.header("X-Request-Id"), Some("FORGED"));
    assert_eq!(get(a.addr, "/health").status, 200);
}

#[test]
fn a_host_that_is_not_a_host_is_400() {
    let a = start_a(&[]);
    for host in ["a b", "a/b", "x:99999", "[::1", "user@x", "a\u{a0}b"] {
        let raw = format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let got = exchange(a.addr, raw.as_bytes(), WAIT);
        assert_eq!(got.reply().0.status, 400, "{host:?}");
    }
    for host in ["x", "x:8080", "127.0.0.1:1", "[::1]:80", ""] {
        let raw = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let got = exchange(a.addr, raw.as_bytes(), WAIT);
        assert_eq!(got.reply().0.status, 200, "{host:?}");
    }
}

#[test]
fn long_log_lines_are_never_torn_on_a_pipe() {
    // The kit reads each service's stdout through a pipe, as a container runtime does.
    let a = start_a(&[]);
    let a_url = format!("http://{}", a.addr);
    // The subject is the lines, not the latency: a deadline far beyond the load's so that
    // a machine busy with other tests cannot turn slow calls into 503s.
    let b = Running::start(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            &a_url,
            "--timeout-ms",
            "20000",
        ],
    );
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

#[test]
fn a_reader_too_slow_for_a_whole_answer_is_closed_after_the_write_limit() {
    let a = start_a(&[]);
    // Answers of about 16 KB (each %01 is six bytes of JSON), pipelined, read at about
    // 500 bytes a second: every write makes some progress within 10 s, the whole answer
    // does not. The write limit is for the answer, so the connection ends after it.
    let target = format!("/echo?msg={}", "%01".repeat(2700));
    // A small receive buffer, so that the kernel holds few answers for us.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&a.addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Requests keep coming, pipelined, from a thread of their own (its writes block once A
    // stops reading them).
    let mut writer = stream.try_clone().expect("clone");
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    thread::spawn(move || while writer.write_all(request.as_bytes()).is_ok() {});
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break started.elapsed(),
            Ok(_) if started.elapsed() > Duration::from_secs(60) => {
                panic!("still open after 60 s")
            }
            Ok(_) => thread::sleep(Duration::from_secs(2)),
        }
    };
    // The buffers held some answers at first; the one that filled them had 10 s.
    assert!(closed < Duration::from_secs(40), "closed after {closed:?}");
    assert_eq!(get(a.addr, "/health").status, 200);
}

#[test]
fn a_new_connection_that_sends_nothing_ends_after_the_head_timeout() {
    let a = start_a(&[]);
    let mut stream = TcpStream::connect(a.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "closed after {took:?}: not the 10 s head timeout (idle keep-alive is 60 s)"
    );
}

/// Runs a binary with `args`; returns its exit code and stderr.
fn run(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = service_command(name).args(args).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_duration_and_count_flag_is_bounded() {
    let huge = "18446744073709551615";
    let cases: [(&str, &str); 11] = [
        ("service_a", "--delay-ms"),
        ("service_a", "--max-delay-ms"),
        ("service_a", "--drain-ms"),
        ("service_b", "--timeout-ms"),
        ("service_b", "--breaker-cooldown-ms"),
        ("service_b", "--breaker-max-cooldown-ms"),
        ("service_b", "--breaker-threshold"),
        ("service_b", "--max-inflight"),
        ("service_b", "--slow-start-ms"),
        ("service_b", "--retry-budget-percent"),
        ("service_b", "--forget-departed-ms"),
    ];
    for (name, flag) in cases {
        let (code, stderr) = run(name, &["--listen", "127.0.0.1:0", flag, huge]);
        assert_eq!(code, Some(2), "{name} {flag}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name} {flag}: {stderr}");
    }
}

#[test]
fn a_service_a_url_with_user_information_is_refused_and_never_shown() {
    let (code, stderr) = run(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            "http://admin:s3cret@127.0.0.1:1",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("user information"), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the password reached stderr: {stderr}"
    );
}

#[test]
fn refused_connections_are_counted_each_but_logged_once_a_second() {
    let mut a = start_a(&["--max-connections", "1"]);
    let held = TcpStream::connect(a.addr).expect("hold the one connection");
    // The held connection is registered once the accept thread took it: a request on it
    // answered is the signal.
    let mut held_w = held.try_clone().expect("clone");
    held_w
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut reader = std::io::BufReader::new(held);
    assert_eq!(
        echo_tests::read_reply(&mut reader).map(|r| r.status).ok(),
        Some(200)
    );
    let refused = (0..200)
        .filter(|_| {
            let got = exchange(a.addr, b"GET /echo?msg=x HTTP/1.1\r\nHost: x\r\n\r\n", WAIT);
            !got.bytes.is_empty() && got.reply().0.status == 503
        })
        .count();
    assert_eq!(refused, 200);
    // Liveness is answered all the same: an orchestrator must not restart a busy service.
    let health = exchange(a.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", WAIT);
    assert_eq!(health.reply().0.status, 200, "{}", health.text());
    drop(reader);
    drop(held_w);
    // A later accept writes the line of the refusals since the last one.
    thread::sleep(Duration::from_millis(1100)); // the once-a-second window itself
                                                // The held connection counts until its thread has seen it close: ask until answered.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let reply = get(a.addr, "/metrics");
        if reply.status == 200 || Instant::now() > deadline {
            break String::from_utf8_lossy(&reply.body).into_owned();
        }
        thread::sleep(Duration::from_millis(20));
    };
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("connections_refused_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!((200..=230).contains(&counted), "{metrics}");
    a.signal(echo_tests::Signal::Int);
    let line = a.wait_for("since the last such line", Duration::from_secs(5));
    let (_, lines) = a.wait_exit(Duration::from_secs(10));
    assert!(lines.contains(&line));
    let refusal_lines: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("refused") && l.contains("connection(s) with 503"))
        .collect();
    assert!(refusal_lines.len() <= 3, "{refusal_lines:#?}");
    let total: u64 = refusal_lines
        .iter()
        .filter_map(|l| {
            l.split("refused ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // 200, and any /metrics asked while the held connection was still counted.
    assert!((200..=230).contains(&total), "{refusal_lines:#?}");
}

/// The first line of `lines` that contains `needle`.
fn find<'a>(lines: &'a [String], needle: &str) -> Option<&'a String> {
    lines.iter().find(|l| l.contains(needle))
}

#[test]
fn sighup_stops_gracefully_like_sigterm() {
    let a = start_a(&["--drain-ms", "0"]);
    assert_eq!(get(a.addr, "/health").status, 200);
    a.signal(echo_tests::Signal::Hup);
    let (code, lines) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(find(&lines, "SIGHUP received").is_some(), "{lines:#?}");
}

#[test]
fn the_exit_code_says_requests_were_dropped() {
    let mut a = start_a(&["--delay-ms", "9000", "--log-level", "debug"]);
    let addr: SocketAddr = a.addr;
    let client =
        thread::spawn(move || echo_tests::try_send(addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
    a.wait_for("GET /echo started", Duration::from_secs(10));
    a.signal(echo_tests::Signal::Int);
    let (code, lines) = a.wait_exit(Duration::from_secs(15));
    // 3: the documented code of a stop whose grace period ran out (echo_core::cli::EXIT_DROPPED).
    assert_eq!(code, Some(3), "{lines:#?}");
    let last = lines.last().map(String::as_str).unwrap_or("");
    assert!(last.contains("stopped with 1 request(s) dropped"), "{last}");
    let _ = client.join();
}

#[test]
fn a_log_reader_that_falls_behind_holds_up_no_request() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = service_command("service_a")
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn A");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
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

/// The access line of `raw` (a request A rejects or serves) in A's log, for `format`.
fn logged_line(format: &str, raw: &[u8], needle: &str) -> String {
    let mut a = start_a(&["--log-format", format]);
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

/// A field the handler is given, sent twice, is not believed (which one the sender meant is
/// unknown): `X-Request-Timeout-Ms` is then absent (A, delaying 300 ms, refused at once with
/// 504 when the first said 10 ms, whatever the second said), `X-Request-Id` is replaced.
#[test]
fn a_deadline_or_an_id_sent_twice_is_not_believed() {
    let a = start_a(&["--delay-ms", "300"]);
    let once = get_with(a.addr, "/echo?msg=x", "X-Request-Timeout-Ms: 10\r\n");
    assert_eq!(once.status, 504, "the header is read when sent once");
    let twice = "X-Request-Timeout-Ms: 10\r\nX-Request-Timeout-Ms: 5000\r\n";
    assert_eq!(get_with(a.addr, "/echo?msg=x", twice).status, 200);
    let twice = "X-Request-Timeout-Ms: 5000\r\nx-request-timeout-ms: 10\r\n";
    assert_eq!(get_with(a.addr, "/echo?msg=x", twice).status, 200);
    let once = get_with(a.addr, "/health", "X-Request-Id: one\r\n");
    assert_eq!(once.header("X-Request-Id"), Some("one"));
    let twice = get_with(
        a.addr,
        "/health",
        "X-Request-Id: one\r\nX-Request-Id: two\r\n",
    );
    let id = twice.header("X-Request-Id").unwrap_or("");
    assert!(id.len() == 16 && id != "one" && id != "two", "{id}");
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
