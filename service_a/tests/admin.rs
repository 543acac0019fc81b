//! A's admin listener: `GET`/`PUT /faults` called directly for every bad input (each leaves
//! the faults as they were), then over real sockets: a change made on the admin listener
//! is what the public listener's next `/echo` gets.

#![forbid(unsafe_code)]

use echo_tests::{GetRequest, JsonBody};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_core::{Request, Response};
use echo_tests::{get, send};
use serde_json::{json, Value};
use service_a::{start, Admin, Config, Faults, LiveFaults, ServiceA};

const START: Faults = Faults {
    delay_ms: 0,
    fail_rate: 0.0,
    fail_status: 500,
};

fn put(admin: &Admin, content_type: Option<&str>, body: &[u8]) -> Response {
    let mut req = Request::new("PUT", "/faults", "test-id");
    req.content_type = content_type.map(str::to_string);
    req.body = body.to_vec();
    admin.handle(&req)
}

fn put_json(admin: &Admin, body: &str) -> Response {
    put(admin, Some("application/json"), body.as_bytes())
}

fn admin() -> (Admin, Arc<LiveFaults>) {
    let faults = Arc::new(LiveFaults::new(START));
    (Admin::new(Arc::clone(&faults)), faults)
}

#[test]
fn get_shows_the_faults_in_force() {
    let (admin, _) = admin();
    let r = admin.handle(&Request::get("/faults"));
    let want = json!({"delay_ms": 0, "fail_rate": 0.0, "fail_status": 500});
    assert_eq!((r.status, r.json_body()), (200, want));
    assert_eq!(r.route, Some("/faults"));
    assert_eq!(
        admin.handle(&Request::new("HEAD", "/faults", "id")).status,
        200
    );
}

#[test]
fn put_sets_all_or_some_fields_and_answers_the_result() {
    let (admin, faults) = admin();
    let r = put_json(
        &admin,
        r#"{"delay_ms": 250, "fail_rate": 0.5, "fail_status": 503}"#,
    );
    let want = json!({"delay_ms": 250, "fail_rate": 0.5, "fail_status": 503});
    assert_eq!((r.status, r.json_body()), (200, want));
    // A partial update keeps what it does not name; an empty object changes nothing.
    let r = put_json(&admin, r#"{"fail_rate": 0}"#);
    let want = json!({"delay_ms": 250, "fail_rate": 0.0, "fail_status": 503});
    assert_eq!((r.status, r.json_body()), (200, want.clone()));
    assert_eq!(put_json(&admin, "{}").json_body(), want);
    // The bounds are the flags' bounds, both ends included; parameters of the type too.
    let edges = r#"{"delay_ms": 600000, "fail_rate": 1, "fail_status": 400}"#;
    let r = put(
        &admin,
        Some("Application/JSON; charset=utf-8"),
        edges.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        put_json(&admin, r#"{"delay_ms": 0, "fail_status": 599}"#).status,
        200
    );
    let want = Faults {
        delay_ms: 0,
        fail_rate: 1.0,
        fail_status: 599,
    };
    assert_eq!(faults.get(), want);
}

#[test]
fn every_bad_input_is_a_clear_4xx_and_changes_nothing() {
    let (admin, faults) = admin();
    let json = Some("application/json");
    let cases: &[(Option<&str>, &str, u16, &str)] = &[
        (
            None,
            r#"{"delay_ms": 1}"#,
            400,
            "Content-Type must be application/json",
        ),
        (
            Some("text/plain"),
            r#"{"delay_ms": 1}"#,
            400,
            "not 'text/plain'",
        ),
        (
            Some("application/jsonx"),
            r#"{"delay_ms": 1}"#,
            400,
            "Content-Type",
        ),
        (json, "", 400, "Invalid faults: EOF"),
        (json, "{", 400, "Invalid faults"),
        (json, "null", 400, "must be a JSON object"),
        (json, "[1, 2]", 400, "must be a JSON object"),
        (json, "42", 400, "must be a JSON object"),
        (json, r#""delay_ms""#, 400, "must be a JSON object"),
        (json, r#"{"delay": 1}"#, 400, "unknown field `delay`"),
        (json, r#"{"delay_ms": 1, "x": 1}"#, 400, "unknown field `x`"),
        (
            json,
            r#"{"delay_ms": 1, "delay_ms": 2}"#,
            400,
            "duplicate field `delay_ms`",
        ),
        (
            json,
            r#"{"delay_ms": "1"}"#,
            400,
            "'delay_ms' must be a whole number",
        ),
        (json, r#"{"delay_ms": 1.5}"#, 400, "not 1.5"),
        (json, r#"{"delay_ms": -1}"#, 400, "not -1"),
        (
            json,
            r#"{"delay_ms": 600001}"#,
            400,
            "from 0 to 600000, not 600001",
        ),
        (json, r#"{"delay_ms": null}"#, 400, "not null"),
        (json, r#"{"delay_ms": 1e3}"#, 400, "'delay_ms'"),
        (
            json,
            r#"{"fail_rate": 1.01}"#,
            400,
            "'fail_rate' must be a number from 0.0 to 1.0",
        ),
        (json, r#"{"fail_rate": -0.1}"#, 400, "'fail_rate'"),
        (json, r#"{"fail_rate": "0.5"}"#, 400, "'fail_rate'"),
        (json, r#"{"fail_rate": true}"#, 400, "'fail_rate'"),
        (
            json,
            r#"{"fail_status": 399}"#,
            400,
            "from 400 to 599, not 399",
        ),
        (json, r#"{"fail_status": 600}"#, 400, "'fail_status'"),
        (json, r#"{"fail_status": 65936}"#, 400, "'fail_status'"),
        (json, r#"{"fail_status": 503.0}"#, 400, "'fail_status'"),
        (json, r#"{"fail_status": [503]}"#, 400, "'fail_status'"),
        // One good field and one bad: none is set.
        (
            json,
            r#"{"delay_ms": 5, "fail_status": 200}"#,
            400,
            "'fail_status'",
        ),
        (
            json,
            r#"{"delay_ms": 5} {"delay_ms": 6}"#,
            400,
            "trailing characters",
        ),
    ];
    for (content_type, body, status, says) in cases {
        let r = put(&admin, *content_type, body.as_bytes());
        let error = r.json_body()["error"].as_str().unwrap_or("").to_string();
        assert_eq!(r.status, *status, "{body}: {error}");
        assert!(
            error.contains(says),
            "{body}: {error:?} should say {says:?}"
        );
        assert_eq!(r.content_type, "application/json");
        assert_eq!(faults.get(), START, "{body} changed the faults");
    }
    // Not UTF-8, and over 1 KiB (the server core answers 413 first; the handler agrees).
    assert_eq!(put(&admin, json, b"{\"delay_ms\": \xff}").status, 400);
    let big = format!(r#"{{"delay_ms": 1{}}}"#, " ".repeat(1100));
    let r = put_json(&admin, &big);
    assert_eq!(r.status, 413);
    assert!(r.json_body()["error"]
        .as_str()
        .unwrap_or("")
        .contains("at most 1024 bytes"));
    assert_eq!(faults.get(), START);
}

#[test]
fn other_methods_and_paths() {
    let (admin, faults) = admin();
    let r = admin.handle(&Request::new("POST", "/faults", "id"));
    assert_eq!(r.status, 405);
    assert_eq!(r.headers, vec![("Allow", "GET, HEAD, PUT".to_string())]);
    assert_eq!(
        admin
            .handle(&Request::new("DELETE", "/faults", "id"))
            .status,
        405
    );
    for path in ["/", "/faults/", "/echo", "/health"] {
        let r = admin.handle(&Request::get(path));
        assert_eq!(
            (r.status, r.json_body()),
            (404, json!({"error": "Not found"}))
        );
    }
    assert_eq!(faults.get(), START);
}

#[test]
fn the_service_reads_the_faults_for_each_request() {
    let a = ServiceA::new(&Config::on("127.0.0.1:0"));
    let admin = Admin::new(a.faults());
    assert_eq!(a.handle(&Request::get("/echo?msg=x")).status, 200);
    put_json(
        &admin,
        r#"{"fail_rate": 1.0, "fail_status": 502, "delay_ms": 40}"#,
    );
    let r = a.handle(&Request::get("/echo?msg=x"));
    assert_eq!((r.status, r.delay), (502, Duration::from_millis(40)));
    assert_eq!(a.handle(&Request::get("/health")).status, 200);
    put_json(&admin, r#"{"fail_rate": 0.0, "delay_ms": 0}"#);
    let r = a.handle(&Request::get("/echo?msg=x"));
    assert_eq!((r.status, r.delay), (200, Duration::ZERO));
}

fn put_raw(addr: std::net::SocketAddr, content_type: &str, body: &str) -> echo_tests::Reply {
    let raw = format!(
        "PUT /faults HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send(addr, &raw)
}

#[test]
fn over_real_sockets_a_put_changes_the_next_echo_and_bad_ones_change_nothing() {
    let mut config = Config::on("127.0.0.1:0");
    config.admin_listen = Some("127.0.0.1:0".to_string());
    let servers = start(config).expect("start service_a with an admin listener");
    let (public, admin) = (
        servers.main.addr(),
        servers.admin.as_ref().expect("admin").addr(),
    );
    assert_ne!(public, admin);
    // The admin routes are not on the public port, nor A's routes on the admin one.
    assert_eq!(get(public, "/faults").status, 404);
    assert_eq!(get(admin, "/echo?msg=x").status, 404);

    let r = put_raw(
        admin,
        "application/json",
        r#"{"delay_ms": 300, "fail_rate": 1.0, "fail_status": 503}"#,
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    let started = Instant::now();
    let echo = get(public, "/echo?msg=x");
    assert_eq!(echo.status, 503);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let big = format!(r#"{{"delay_ms": 1{}}}"#, " ".repeat(1100));
    for (content_type, body, status) in [
        ("text/plain", r#"{"delay_ms": 0}"#, 400),
        ("application/json", r#"{"delay_ms": 0, "extra": 1}"#, 400),
        ("application/json", r#"{"fail_rate": 2}"#, 400),
        ("application/json", big.as_str(), 413),
    ] {
        let r = put_raw(admin, content_type, body);
        assert_eq!(r.status, status, "{body}");
        assert!(r.json()["error"].is_string(), "{body}");
    }
    let want = json!({"delay_ms": 300, "fail_rate": 1.0, "fail_status": 503});
    assert_eq!(get(admin, "/faults").json(), want);

    let r = put_raw(
        admin,
        "application/json",
        r#"{"delay_ms": 0, "fail_rate": 0}"#,
    );
    assert_eq!(r.json()["fail_rate"], Value::from(0.0));
    assert_eq!(get(public, "/echo?msg=x").json(), json!({"echo": "x"}));
}

#[test]
fn spawn_refuses_an_admin_listener_it_could_not_keep() {
    let mut config = Config::on("127.0.0.1:0");
    config.admin_listen = Some("127.0.0.1:0".to_string());
    assert!(service_a::spawn(config).is_err());
}
