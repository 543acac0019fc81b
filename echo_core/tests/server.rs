//! The server core over real sockets, in-process, with a handler of its own: the headers
//! every answer carries, request ids, panic isolation, limits and shutdown.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use std::sync::Arc;

use echo_core::{serve, Metrics, Request, Response};
use echo_tests::{get, get_with, send, try_send};
use serde_json::json;

fn handler(req: &Request) -> Response {
    match req.path.as_str() {
        "/panic" => panic!("handler panic on purpose"),
        "/big" => Response::json(200, &json!({ "data": "x".repeat(4000) })),
        "/body" => Response::json(
            200,
            &json!({ "body": req.body, "type": req.content_type, "id": req.request_id }),
        ),
        _ => Response::json(200, &json!({ "path": req.path, "id": req.request_id })),
    }
}

fn start() -> echo_core::ServerHandle {
    serve(
        "test_server",
        echo_core::server::bind("127.0.0.1:0").expect("bind"),
        64,
        Arc::new(Metrics::new()),
        handler,
    )
    .expect("serve")
}

#[test]
fn every_response_has_the_common_headers() {
    let server = start();
    let reply = get(server.addr(), "/x?q=1");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(reply.header("X-Content-Type-Options"), Some("nosniff"));
    let id = reply.header("X-Request-Id").unwrap_or("");
    assert_eq!(id.len(), 16, "{id}");
    assert_eq!(reply.json(), json!({"path": "/x", "id": id}));
}

#[test]
fn a_small_body_and_its_content_type_reach_the_handler_byte_exact() {
    let server = start();
    // Two requests on one connection, the second without a body: each sees its own.
    let raw = "PUT /body HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
               Content-Length: 3\r\n\r\n{\"}\
               GET /body HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.write_all(raw.as_bytes()).expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let first = echo_tests::read_reply(&mut reader).expect("first answer");
    let second = echo_tests::read_reply(&mut reader).expect("second answer");
    assert_eq!(first.json()["body"], json!([123, 34, 125]));
    assert_eq!(first.json()["type"], json!("application/json"));
    assert_eq!(
        (second.json()["body"].clone(), second.json()["type"].clone()),
        (json!([]), json!(null))
    );
    // The largest body accepted arrives whole (a larger one is 413 before any handler).
    let body = "b".repeat(echo_core::server::MAX_BODY_BYTES);
    let reply = send(
        server.addr(),
        &format!(
            "PUT /body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(
        reply.json()["body"].as_array().map(Vec::len),
        Some(body.len())
    );
}

#[test]
fn request_ids_are_kept_or_replaced() {
    let server = start();
    let kept = get_with(server.addr(), "/", "X-Request-Id: my-id.1_2\r\n");
    assert_eq!(kept.header("X-Request-Id"), Some("my-id.1_2"));
    for bad in ["has space", "semi;colon", &"a".repeat(129), ""] {
        let reply = get_with(server.addr(), "/", &format!("X-Request-Id: {bad}\r\n"));
        let id = reply.header("X-Request-Id").unwrap_or("");
        assert!(id != bad && id.len() == 16, "{bad:?} -> {id:?}");
    }
    let a = get(server.addr(), "/")
        .header("X-Request-Id")
        .map(str::to_string);
    let b = get(server.addr(), "/")
        .header("X-Request-Id")
        .map(str::to_string);
    assert_ne!(a, b);
}

#[test]
fn a_handler_panic_is_a_500_and_the_connection_lives_on() {
    let server = start();
    let reply = get(server.addr(), "/panic");
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json(), json!({"error": "Internal server error"}));
    assert!(reply.header("X-Request-Id").is_some());
    // On one keep-alive connection: the panic is answered and the next request too.
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    let pair = b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n";
    stream.write_all(pair).expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let first = echo_tests::read_reply(&mut reader).expect("first answer");
    let second = echo_tests::read_reply(&mut reader).expect("second answer");
    assert_eq!((first.status, second.status), (500, 200));
}

#[test]
fn head_has_no_body() {
    let server = start();
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .write_all(b"HEAD /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "", "HEAD must have no body");
}

#[test]
fn limits_answer_414_431_413() {
    let server = start();
    let long = format!("/{}", "a".repeat(9000));
    assert_eq!(get(server.addr(), &long).status, 414);
    let many: String = (0..400)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(40)))
        .collect();
    assert_eq!(get_with(server.addr(), "/", &many).status, 431);
    let body = "b".repeat(2000);
    let reply = send(
        server.addr(),
        &format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{body}"),
    );
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json(), json!({"error": "Request body too large"}));
    assert_eq!(get(server.addr(), "/still-fine").status, 200);
}

#[test]
fn an_oversized_declared_body_is_refused_before_it_is_sent() {
    // The client declares a body and never sends it, keeping the connection open: the 413
    // must come at once, not after a wait for the body.
    let server = start();
    let raw = b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n";
    let mut held = std::net::TcpStream::connect(server.addr()).expect("connect");
    std::io::Write::write_all(&mut held, raw).expect("write");
    let reply = echo_tests::read_reply(&mut std::io::BufReader::new(&held)).expect("reply");
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(get(server.addr(), "/next").status, 200);
    drop(held);
}

#[test]
fn shutdown_stops_accepting_and_closes_idle_connections() {
    let server = start();
    let addr = server.addr();
    // An idle keep-alive connection, answered once.
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut reader = std::io::BufReader::new(idle.try_clone().expect("clone"));
    assert_eq!(
        echo_tests::read_reply(&mut reader).expect("reply").status,
        200
    );
    // Shutdown returns once that connection is closed, long before the grace ends.
    let started = std::time::Instant::now();
    assert_eq!(server.shutdown(Duration::from_secs(30)).lost(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        reader.read_to_end(&mut rest).ok(),
        Some(0),
        "closed, nothing sent"
    );
    assert!(try_send(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").is_err());
}
