//! The limits that keep a service up, on the real binaries: declared bodies (413, the
//! process stays small), descriptor exhaustion, the connection limit (503 beyond it, counted
//! in `/metrics`, logged once a second; `/health`, `/ready` and `/metrics` still answered), and
//! idle connections that starve nothing and cost no thread.

#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{
    connect, exchange, get, keep_alive, metric, raise_own_fd_limit, read_reply, read_until_close,
    scrape, spawn_a, spawn_alone, spawn_b, try_send, Exchange, Reply, Running,
};
use serde_json::json;

/// How long a test waits for any answer before calling it missing.
const WAIT: Duration = Duration::from_secs(5);

/// Resident memory a service may have after an attack.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Idle connections held on each service by `idle_connections_do_not_starve_either_service`.
const IDLE_CONNECTIONS: usize = 1000;

fn assert_healthy(service: &Running) {
    let health = get(service.addr, "/health");
    assert_eq!(health.status, 200);
    let rss = service.rss_kib();
    assert!(rss > 0 && rss < RSS_LIMIT_KIB, "RSS {rss} KiB");
}

/// Sends raw bytes, and reads one reply if one comes (a closed connection is no reply).
fn attempt(service: &Running, raw: &[u8]) -> Option<Reply> {
    attempt_within(service, raw, Duration::from_secs(10))
}

/// Like [`attempt`], waiting at most `wait` for the reply.
fn attempt_within(service: &Running, raw: &[u8], wait: Duration) -> Option<Reply> {
    let mut stream = TcpStream::connect(service.addr).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let _ = stream.write_all(raw);
    read_reply(&mut BufReader::new(stream)).ok()
}

#[test]
fn huge_declared_bodies_get_413_and_the_process_stays_small() {
    for name in ["service_a", "service_b"] {
        let service = spawn_alone(name);
        let lengths = [
            "1000000000".to_string(),
            "99999999999".to_string(),
            (1u64 << 47).to_string(),
            "1000000000000000".to_string(),
            (1u64 << 62).to_string(),
            i64::MAX.to_string(),
            (1u64 << 63).to_string(),
            u64::MAX.to_string(),
        ];
        for method in ["GET", "POST", "PUT"] {
            for length in &lengths {
                for expect in ["", "Expect: 100-continue\r\n"] {
                    let raw = format!(
                        "{method} /health HTTP/1.1\r\nHost: t\r\n{expect}Content-Length: {length}\r\n\r\nsome body bytes"
                    );
                    let reply = attempt(&service, raw.as_bytes());
                    let status = reply.map(|r| r.status);
                    assert_eq!(status, Some(413), "{name} {method} {length} {expect:?}");
                }
            }
        }
        for chunk in [
            "FFFFFFFFFFFFFFFF",
            "7FFFFFFFFFFFFFFF",
            "99999999999999999999",
            "-1",
            "zz",
        ] {
            let raw = format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}\r\nabc\r\n"
            );
            let status = attempt(&service, raw.as_bytes()).map(|r| r.status);
            assert_eq!(status, Some(413), "{name} chunk {chunk}");
        }
        assert_healthy(&service);
        let peak = service.peak_rss_kib();
        assert!(peak < RSS_LIMIT_KIB, "{name} peak RSS {peak} KiB");
    }
}

#[test]
fn descriptor_exhaustion_is_survived() {
    raise_own_fd_limit();
    // Both limits at 64, so the service cannot raise its own.
    let mut service = Running::start_limited("service_a", &["--listen", "127.0.0.1:0"], Some(64));
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(service.addr).ok())
        .collect();
    assert!(flood.len() >= 150, "only {} connections", flood.len());
    // Logged once per burst of failed accepts, e.g. `ERROR service_a accept failed: Too many
    // open files (os error 24); retrying`.
    let line = service.wait_for("accept failed", Duration::from_secs(10));
    assert!(line.contains(" ERROR service_a "), "{line}");
    drop(flood);

    let started = Instant::now();
    let healthy = loop {
        if let Ok(reply) = try_send(
            service.addr,
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ) {
            break reply.status == 200;
        }
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(healthy, "no /health within 5 s after the flood");
    eprintln!("recovered {:?} after the flood closed", started.elapsed());
    for _ in 0..20 {
        assert_eq!(get(service.addr, "/echo?msg=again").status, 200);
    }
}

/// `n` connections to `addr`, each answered once (so each is surely counted), kept open.
fn hold(addr: SocketAddr, n: usize) -> Vec<BufReader<TcpStream>> {
    (0..n)
        .map(|i| {
            let mut s = connect(addr, WAIT);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("write");
            let mut reader = BufReader::new(s);
            let status = read_reply(&mut reader).map(|r| r.status);
            assert_eq!(status.map_err(|e| e.to_string()), Ok(200), "connection {i}");
            reader
        })
        .collect()
}

/// Guards: connections had no bound; past `--max-connections` a new one gets 503 and the close,
/// and is counted in `/metrics`.
#[test]
fn connections_beyond_the_limit_get_503_until_some_close() {
    let a = spawn_a(&["--max-connections", "8"]);
    // Eight connections, each answered once (so each is surely counted), then idle.
    let mut held = hold(a.addr, 8);
    // The ninth is refused before it sends anything.
    let mut ninth = connect(a.addr, WAIT);
    let started = Instant::now();
    let (bytes, closed) = read_until_close(&mut ninth, WAIT);
    let got = Exchange {
        bytes,
        closed,
        elapsed: started.elapsed(),
    };
    let (reply, rest) = got.reply();
    assert_eq!(
        (reply.status, reply.json()),
        (503, json!({"error": "Too many connections"})),
        "{}",
        got.text()
    );
    assert!(rest.is_empty() && got.closed, "{got:?}");
    // The refusal is counted, and one of the held connections can still ask.
    held[0]
        .get_mut()
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let metrics = read_reply(&mut held[0]).expect("the metrics");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(
        metric(&text, "connections_refused_total"),
        Some(1.0),
        "{text}"
    );

    drop(held);
    // The server counts a connection until its thread has ended, so poll a little: until
    // eight connections at once are served again.
    let started = Instant::now();
    loop {
        let again: Vec<Result<(BufReader<TcpStream>, Duration), String>> =
            (0..8).map(|_| keep_alive(a.addr)).collect();
        let refused: Vec<&String> = again.iter().filter_map(|r| r.as_ref().err()).collect();
        if refused.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "5 s after the 8 connections closed, {} of 8 new ones still fail: {refused:?}",
            refused.len()
        );
        drop(again);
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn refused_connections_are_counted_each_but_logged_once_a_second() {
    let mut a = spawn_a(&["--max-connections", "1"]);
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
                                                // The held connection counts until a worker has seen it close: ask until answered.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        if let Some(text) = scrape(a.addr) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics not answered 200 in {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let counted = metric(&metrics, "connections_refused_total").unwrap_or(0.0);
    assert!((200.0..=230.0).contains(&counted), "{metrics}");
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

#[test]
fn over_the_limit_health_ready_and_metrics_are_still_answered() {
    let a = spawn_a(&["--max-connections", "2"]);
    let held = hold(a.addr, 2);
    // An orchestrator's probes and the scraper must not fail because the service is full;
    // anything else over the limit gets the limit's 503.
    for (path, status) in [
        ("/health", 200),
        ("/ready", 200),
        ("/metrics", 200),
        ("/echo", 503),
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let got = exchange(a.addr, raw.as_bytes(), WAIT);
        assert_eq!(got.reply().0.status, status, "{path}: {}", got.text());
        assert!(
            got.closed,
            "{path}: the connection over the limit closes after its answer"
        );
    }
    drop(held);
}

/// A thousand idle connections on each service, half of them stopped mid-request: neither
/// service starves new connections, grows past the RSS bound, or stops answering.
#[test]
fn idle_connections_do_not_starve_either_service() {
    raise_own_fd_limit();
    let a = spawn_a(&[]);
    let b = spawn_b(&format!("http://{}", a.addr), &[]);
    let before = (a.rss_kib(), a.threads(), b.rss_kib(), b.threads());
    let mut idle = Vec::new();
    for service in [&a, &b] {
        for i in 0..IDLE_CONNECTIONS {
            let mut s = TcpStream::connect(service.addr).expect("connect");
            if i % 2 == 0 {
                // Half send a partial request and stop: a slow client.
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n");
            }
            idle.push(s);
        }
    }
    let started = Instant::now();
    assert_eq!(get(a.addr, "/health").status, 200);
    assert_eq!(get(b.addr, "/health").status, 200);
    assert_eq!(get(b.addr, "/call-echo?msg=still").status, 200);
    eprintln!(
        "with {IDLE_CONNECTIONS} idle connections each: answered in {:?}; A {} KiB RSS, {} threads; B {} KiB RSS, {} threads (before: {before:?})",
        started.elapsed(), a.rss_kib(), a.threads(), b.rss_kib(), b.threads()
    );
    assert_healthy(&a);
    assert_healthy(&b);
    drop(idle);
    // And once they are gone, both still answer in full.
    for service in [&a, &b] {
        let reply = get(service.addr, "/health");
        assert_eq!(
            (reply.status, reply.json()),
            (200, serde_json::json!({"status": "ok"}))
        );
    }
    let reply = get(b.addr, "/call-echo?msg=after");
    assert_eq!(
        (reply.status, reply.json()["echo_response"]["echo"].clone()),
        (200, serde_json::json!("after"))
    );
}

/// Ten thousand idle keep-alive connections cost A no thread each: it holds them with its
/// workers and at most four threads more (the main thread, which waits for the signals, the
/// accept loop, the timer and the log writer), in under 64 MB.
#[test]
fn ten_thousand_idle_keep_alive_connections_cost_no_thread() {
    raise_own_fd_limit();
    let a = spawn_a(&["--workers", "2"]);
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let mut s = TcpStream::connect(a.addr).expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        idle.push(s);
    }
    // Each was answered (so each is surely registered and idle), then kept alive.
    for s in &mut idle {
        let mut reader = std::io::BufReader::new(s.try_clone().expect("clone"));
        let status = echo_tests::read_reply(&mut reader).map(|r| r.status);
        assert_eq!(status.map_err(|e| e.to_string()), Ok(200));
    }
    let (threads, rss) = (a.threads(), a.rss_kib());
    eprintln!("10,000 idle keep-alive connections: A {threads} threads, {rss} KiB RSS");
    assert!(threads <= 2 + 4, "{threads} threads");
    assert!(rss < 64 * 1024, "{rss} KiB");
    assert_eq!(get(a.addr, "/health").status, 200);
    drop(idle);
}
