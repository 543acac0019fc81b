//! Attacks on the real binaries: each one, unprotected, crashes, stalls or silences a
//! service. After each, the service must still be up, small, and answering normally.

#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use echo_tests::{get, raise_own_fd_limit, read_reply, try_send, Reply, Running};

/// Resident memory a service may have after an attack.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Idle connections held on each service by `idle_connections_do_not_starve_either_service`.
const IDLE_CONNECTIONS: usize = 1000;

fn start(name: &str) -> Running {
    let args: &[&str] = match name {
        "service_b" => &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            "http://127.0.0.1:1",
        ],
        _ => &["--listen", "127.0.0.1:0"],
    };
    Running::start(name, args)
}

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
        let service = start(name);
        let lengths = [
            "1000000000".to_string(),
            "99999999999".to_string(),
            (1u64 << 47).to_string(),
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

#[test]
fn malformed_http_gets_no_5xx_and_the_service_answers_after() {
    for name in ["service_a", "service_b"] {
        let service = start(name);
        let many_headers: String = (0..5000).map(|i| format!("X-H{i}: v\r\n")).collect();
        // Each input with the statuses the HTTP core's rules allow for it; `None` in the list means
        // the server may also close without an answer.
        let corpus: Vec<(Vec<u8>, &[Option<u16>])> = vec![
            (b"GARBAGE\r\n\r\n".to_vec(), &[Some(400)]),
            (b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(), &[Some(400)]),
            (b"GET /he\x00alth HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[Some(400)]),
            (b"GET /\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[Some(400)]),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[Some(505)]),
            (
                format!("GET /health HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n").into_bytes(),
                &[Some(431)],
            ),
            (
                format!(
                    "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                    "v".repeat(100_000)
                )
                .into_bytes(),
                &[Some(431)],
            ),
            (
                format!(
                    "GET /echo?msg={} HTTP/1.1\r\nHost: t\r\n\r\n",
                    "a".repeat(1_000_000)
                )
                .into_bytes(),
                &[Some(414)],
            ),
            (b"GET /health HTTP/1.0\r\n\r\n".to_vec(), &[Some(200)]),
            (b"GET /health HTTP/9.9\r\nHost: t\r\n\r\n".to_vec(), &[Some(505)]),
            (b"GET /health\r\n\r\n".to_vec(), &[Some(400), Some(505)]),
            (
                b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbroken\r\n"
                    .to_vec(),
                &[Some(400), Some(413)],
            ),
            (
                b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n".to_vec(),
                &[Some(400)],
            ),
            (
                b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                    .to_vec(),
                &[Some(400)],
            ),
            (
                b"GET /health HTTP/1.1\r\nHost: t\r\nExpect: something-odd\r\n\r\n".to_vec(),
                &[Some(200), Some(417)],
            ),
            (
                b"GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n".to_vec(),
                &[Some(400)],
            ),
            // Only empty lines: a server may skip them and wait for a request line that never
            // comes (until its 10 s head timeout, so we wait 1 s for this one), or refuse them.
            (b"\r\n\r\n\r\n".to_vec(), &[None, Some(400), Some(408)]),
            (
                format!("{} / HTTP/1.1\r\nHost: t\r\n\r\n", "M".repeat(10_000)).into_bytes(),
                &[Some(400), Some(404), Some(405), Some(414), Some(501)],
            ),
            (
                b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: \xff\xfe\r\n\r\n".to_vec(),
                &[Some(200), Some(400)],
            ),
        ];
        for (raw, allowed) in &corpus {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
            // Where no answer is allowed, 1 s shows whether a wrong one comes.
            let wait = if allowed.contains(&None) {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            };
            let status = attempt_within(&service, raw, wait).map(|r| r.status);
            assert!(
                allowed.contains(&status),
                "{name}: {status:?} for {shown:?}, expected one of {allowed:?}"
            );
            assert_eq!(
                get(service.addr, "/health").status,
                200,
                "{name} after {shown:?}"
            );
        }
        assert_healthy(&service);
    }
}

#[test]
fn fifty_pipelined_requests_are_answered_in_order() {
    let service = start("service_a");
    let mut raw = String::new();
    for i in 0..50 {
        raw.push_str(&format!("GET /echo?msg=n{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    let mut stream = TcpStream::connect(service.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(raw.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream);
    for i in 0..50 {
        let reply = read_reply(&mut reader).expect("a reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["echo"], format!("n{i}"));
    }
}

/// A thousand idle connections on each service, half of them stopped mid-request: neither
/// service starves new connections, grows past the RSS bound, or stops answering.
#[test]
fn idle_connections_do_not_starve_either_service() {
    raise_own_fd_limit();
    let a = start("service_a");
    let b = Running::start(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            &format!("http://{}", a.addr),
        ],
    );
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
    let a = Running::start("service_a", &["--listen", "127.0.0.1:0", "--workers", "2"]);
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
