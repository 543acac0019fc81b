//! Service A over real sockets, started in-process on port 0.

#![forbid(unsafe_code)]

use echo_tests::{get, send};
use serde_json::json;
use service_a::{spawn, Config};

fn start() -> echo_core::ServerHandle {
    spawn(Config::on("127.0.0.1:0")).expect("start service_a")
}

#[test]
fn health_and_echo() {
    let a = start();
    let health = get(a.addr(), "/health");
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let echo = get(a.addr(), "/echo?msg=hello%20world%21");
    assert_eq!(
        (echo.status, echo.json()),
        (200, json!({"echo": "hello world!"}))
    );
    assert_eq!(echo.header("Content-Type"), Some("application/json"));
    assert_eq!(echo.header("X-Content-Type-Options"), Some("nosniff"));
    assert!(echo.header("X-Request-Id").is_some());
}

#[test]
fn missing_or_empty_msg_echoes_empty() {
    let a = start();
    for target in ["/echo", "/echo?msg=", "/echo?x=1"] {
        let r = get(a.addr(), target);
        assert_eq!((r.status, r.json()), (200, json!({"echo": ""})), "{target}");
    }
}

#[test]
fn client_mistakes_are_4xx_json() {
    let a = start();
    let cases = [
        ("GET", "/echo?msg=%zz", 400),
        ("GET", "/echo?msg=%FF", 400),
        ("GET", "/nope", 404),
        ("POST", "/echo", 405),
        ("DELETE", "/health", 405),
    ];
    for (method, target, status) in cases {
        let r = send(a.addr(), &format!("{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
        assert_eq!(r.status, status, "{method} {target}");
        assert!(r.json()["error"].is_string(), "{method} {target}");
        if status == 405 {
            assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        }
    }
    assert_eq!(get(a.addr(), "/health").status, 200);
}

#[test]
fn delay_applies_to_echo_only() {
    let mut config = Config::on("127.0.0.1:0");
    config.delay_ms = 600;
    let a = spawn(config).expect("start");
    let started = std::time::Instant::now();
    assert_eq!(get(a.addr(), "/health").status, 200);
    let health = started.elapsed();
    assert_eq!(get(a.addr(), "/echo?msg=x").status, 200);
    let echo = started.elapsed() - health;
    assert!(echo.as_millis() >= 600, "echo took {echo:?}");
    assert!(health.as_millis() < 600, "health took {health:?}");
}

#[test]
fn delayed_answers_hold_up_no_other_connection() {
    let a = start();
    let addr = a.addr();
    let started = std::time::Instant::now();
    let slow: Vec<_> = (0..3)
        .map(|i| std::thread::spawn(move || get(addr, &format!("/echo?msg=s{i}&delay_ms=800"))))
        .collect();
    // Each delay sleeps on its own connection's thread: /health is not queued behind them.
    assert_eq!(get(addr, "/health").status, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    for (i, s) in slow.into_iter().enumerate() {
        let r = s.join().expect("client");
        assert_eq!(r.json(), json!({"echo": format!("s{i}")}));
    }
    let all = started.elapsed();
    assert!(all >= std::time::Duration::from_millis(800), "{all:?}");
    assert!(
        all < std::time::Duration::from_millis(2000),
        "delays ran one after another: {all:?}"
    );
}

#[test]
fn pipelined_requests_with_delays_are_answered_in_order() {
    // One connection's answers are written in order, each after its own delay.
    let a = start();
    let mut raw = String::from("GET /echo?msg=slow&delay_ms=600 HTTP/1.1\r\nHost: t\r\n\r\n");
    raw.push_str("GET /echo?msg=quick&delay_ms=10 HTTP/1.1\r\nHost: t\r\n\r\n");
    raw.push_str("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    for i in 0..5 {
        raw.push_str(&format!("GET /echo?msg=n{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    let mut stream = std::net::TcpStream::connect(a.addr()).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    std::io::Write::write_all(&mut stream, raw.as_bytes()).expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let mut got = Vec::new();
    for _ in 0..8 {
        let reply = echo_tests::read_reply(&mut reader).expect("an answer");
        got.push(reply.json());
    }
    assert_eq!(got[0], json!({"echo": "slow"}));
    assert_eq!(got[1], json!({"echo": "quick"}));
    assert_eq!(got[2], json!({"status": "ok"}));
    assert_eq!(got[7], json!({"echo": "n4"}));
    // And the service still answers delayed requests from anyone else.
    assert_eq!(
        get(a.addr(), "/echo?msg=after&delay_ms=10").json(),
        json!({"echo": "after"})
    );
}

/// Every status `?status=` may ask for (200 to 599) once: A's `status` label takes only the
/// statuses A answers by itself and the four classes, not one series per status asked.
#[test]
fn asked_statuses_make_a_bounded_number_of_series() {
    let a = start();
    for status in 200..=599 {
        let r = get(a.addr(), &format!("/echo?msg=x&status={status}"));
        assert_eq!(r.status, status);
    }
    let metrics = String::from_utf8_lossy(&get(a.addr(), "/metrics").body).into_owned();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(r#"http_requests_total{method="GET",route="/echo","#))
        .collect();
    assert_eq!(
        series.len(),
        echo_core::metrics::OWN_STATUSES.len() + 4,
        "{series:#?}"
    );
    for sample in [
        r#"status="2xx"} 98"#,
        r#"status="3xx"} 100"#,
        r#"status="429"} 1"#,
    ] {
        assert!(
            series.iter().any(|l| l.ends_with(sample)),
            "{sample} in {series:#?}"
        );
    }
}
