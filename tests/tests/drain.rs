//! The drain and the stop lose nothing, and say so truthfully: under 64 keep-alive clients
//! that reconnect whenever an answer closes their connection, a SIGTERM (or SIGHUP) leaves no
//! request that reached the service unanswered; a request whose answer is delayed is served
//! within the grace period; a second signal ends the grace period at once, and the exit
//! status and the last line count what it cut off.
//! Also the plain stop: SIGTERM lets the request in flight finish, SIGHUP stops as gracefully,
//! and the exit code says when requests were dropped.

#![forbid(unsafe_code)]

use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, read_reply, says_close, spawn_a, try_send, Signal};
use serde_json::json;

/// What one client saw: answers; requests written on an open connection that got no
/// answer (the connection ended first); and first requests of connections reset unanswered.
/// A reset is what the kernel does to a connection it completed but the service never
/// accepted, when the listener closes at the stop (Go's `Shutdown` alike): the client
/// knows its request was not taken. A connection the service accepted is never reset (it
/// lingers over unread input) and always gets its first request answered.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    answered: usize,
    lost: usize,
    never_accepted: usize,
}

/// One client: a kept-alive connection, a new one whenever an answer closes it, until
/// `done` or the service refuses new connections.
fn client(addr: SocketAddr, done: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    'connections: while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr) else {
            return seen; // refused: the listener is closed, nothing was sent
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(mut writer) = stream.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(stream);
        let mut first = true;
        loop {
            if writer
                .write_all(b"GET /echo?msg=d HTTP/1.1\r\nHost: t\r\n\r\n")
                .is_err()
            {
                continue 'connections; // closed before this request was sent
            }
            match read_reply(&mut reader) {
                Ok(reply) if reply.status == 200 => {
                    seen.answered += 1;
                    first = false;
                    if says_close(&reply) {
                        continue 'connections;
                    }
                }
                Err(e) if first && e.kind() == ErrorKind::ConnectionReset => {
                    seen.never_accepted += 1;
                    continue 'connections;
                }
                _ => {
                    seen.lost += 1;
                    continue 'connections;
                }
            }
        }
    }
    seen
}

/// Runs 64 clients against A, signals it once the load is steady, and returns what the
/// clients saw, A's exit code and its log.
fn drain_under_load(signal: Signal) -> (Seen, Option<i32>, Vec<String>) {
    let a = spawn_a(&["--drain-ms", "300"]);
    let addr = a.addr;
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let done = Arc::clone(&done);
            thread::spawn(move || client(addr, done))
        })
        .collect();
    thread::sleep(Duration::from_millis(300)); // the load: a steady state, not a readiness
    a.signal(signal);
    let (code, lines) = a.wait_exit(Duration::from_secs(15));
    done.store(true, Ordering::SeqCst);
    let seen = clients
        .into_iter()
        .map(|c| c.join().unwrap_or_default())
        .fold(Seen::default(), |all, one| Seen {
            answered: all.answered + one.answered,
            lost: all.lost + one.lost,
            never_accepted: all.never_accepted + one.never_accepted,
        });
    (seen, code, lines)
}

#[test]
fn a_drain_under_reconnecting_clients_loses_no_request() {
    for signal in [Signal::Term, Signal::Hup, Signal::Term] {
        let (seen, code, lines) = drain_under_load(signal);
        assert!(seen.answered > 100, "{seen:?}");
        eprintln!("{signal:?}: {seen:?}");
        assert_eq!(seen.lost, 0, "{seen:?}\n{lines:#?}");
        assert_eq!(code, Some(0), "{lines:#?}");
        let last = lines.last().map(String::as_str).unwrap_or("");
        assert!(
            last.contains("every accepted request was answered"),
            "{last}"
        );
    }
}

#[test]
fn a_delayed_request_accepted_in_the_drain_is_served() {
    let a = spawn_a(&["--drain-ms", "200"]);
    let addr = a.addr;
    a.signal(Signal::Term);
    // Accepted during the drain, answered 1.5 s later: inside the 5 s grace period.
    let raw = b"GET /echo?msg=late&delay_ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n";
    let reply = echo_tests::try_send(addr, raw).map(|r| r.status);
    assert_eq!(reply.map_err(|e| e.to_string()), Ok(200));
    let (code, lines) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:#?}");
}

#[test]
fn a_second_signal_ends_the_grace_period_and_the_loss_is_counted() {
    let mut a = spawn_a(&["--drain-ms", "0", "--log-level", "debug"]);
    let addr = a.addr;
    let client = thread::spawn(move || {
        echo_tests::try_send(addr, b"GET /echo?delay_ms=9000 HTTP/1.1\r\nHost: x\r\n\r\n")
    });
    a.wait_for("GET /echo started", Duration::from_secs(10));
    a.signal(Signal::Term);
    a.wait_for("no longer accepting", Duration::from_secs(10));
    let second = Instant::now();
    a.signal(Signal::Term);
    let (code, lines) = a.wait_exit(Duration::from_secs(10));
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(code, Some(3), "{lines:#?}");
    let last = lines.last().map(String::as_str).unwrap_or("");
    assert!(last.contains("1 read and not answered"), "{last}");
    let _ = client.join();
}

const EXIT_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn sigterm_lets_the_in_flight_request_finish() {
    let mut a = spawn_a(&[
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
    // The worker logs this at DEBUG when it takes the request: our readiness
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
    // a worker reads end of stream on the idle connection and closes it. (We send nothing first:
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
fn sighup_stops_gracefully_like_sigterm() {
    let a = spawn_a(&["--drain-ms", "0"]);
    assert_eq!(get(a.addr, "/health").status, 200);
    a.signal(echo_tests::Signal::Hup);
    let (code, lines) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(find(&lines, "SIGHUP received").is_some(), "{lines:#?}");
}

#[test]
fn the_exit_code_says_requests_were_dropped() {
    let mut a = spawn_a(&["--delay-ms", "9000", "--log-level", "debug"]);
    let addr: SocketAddr = a.addr;
    let client =
        thread::spawn(move || echo_tests::try_send(addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
    a.wait_for("GET /echo started", Duration::from_secs(10));
    a.signal(echo_tests::Signal::Int);
    let (code, lines) = a.wait_exit(Duration::from_secs(15));
    // 3: the documented code of a stop whose grace period ran out (echo_core::process::EXIT_DROPPED).
    assert_eq!(code, Some(3), "{lines:#?}");
    let last = lines.last().map(String::as_str).unwrap_or("");
    assert!(last.contains("stopped with 1 request(s) dropped"), "{last}");
    let _ = client.join();
}

/// The first line of `lines` that contains `needle`.
fn find<'a>(lines: &'a [String], needle: &str) -> Option<&'a String> {
    lines.iter().find(|l| l.contains(needle))
}
