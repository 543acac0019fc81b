//! The shared server loop over real sockets, with a handler of its own: the wrapper's
//! headers, request ids, panic isolation, limits and shutdown.

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
        _ => Response::json(200, &json!({ "path": req.path, "id": req.request_id })),
    }
}

/// One worker, so a test can tell whether that worker survived.
fn start() -> echo_core::ServerHandle {
    serve(
        "test_server",
        "127.0.0.1:0",
        1,
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
fn a_handler_panic_is_a_500_and_the_worker_survives() {
    let server = start();
    let reply = get(server.addr(), "/panic");
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json(), json!({"error": "Internal server error"}));
    assert!(reply.header("X-Request-Id").is_some());
    for _ in 0..3 {
        assert_eq!(get(server.addr(), "/after").status, 200);
    }
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
fn an_unsent_declared_body_does_not_hold_the_worker() {
    // The client declares a body and never sends it, keeping the connection open. With one
    // worker, the next request is only answered if that worker did not wait for the body.
    let server = start();
    let raw = b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n";
    let mut held = std::net::TcpStream::connect(server.addr()).expect("connect");
    std::io::Write::write_all(&mut held, raw).expect("write");
    let reply = echo_tests::read_reply(&mut std::io::BufReader::new(&held)).expect("reply");
    assert_eq!(reply.status, 413);
    assert_eq!(get(server.addr(), "/next").status, 200);
    drop(held);
}

#[test]
fn huge_declared_bodies_are_refused_and_the_process_lives() {
    let server = start();
    for length in [
        "1000000000",
        "99999999999",
        "1000000000000000",
        "9223372036854775807",
        "18446744073709551615",
    ] {
        for expect in ["", "Expect: 100-continue\r\n"] {
            let raw =
                format!("PUT / HTTP/1.1\r\nHost: t\r\n{expect}Content-Length: {length}\r\n\r\nabc");
            let reply = try_send(server.addr(), raw.as_bytes()).expect("an answer");
            assert_eq!(reply.status, 413, "{length} {expect:?}");
        }
    }
    assert_eq!(get(server.addr(), "/alive").status, 200);
}

#[test]
fn shutdown_stops_accepting() {
    let server = start();
    let addr = server.addr();
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(server.shutdown(Duration::from_secs(2)), 0);
    assert!(try_send(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").is_err());
}

#[test]
fn accepted_sockets_have_nodelay_and_timeouts() {
    // Without it, an answer written in two parts stalls ~40 ms on delayed ACKs. The server
    // runs in this process, so find its end of our connection among our descriptors.
    let server = start();
    let client = TcpStream::connect(server.addr()).expect("connect");
    let ours = client.local_addr().expect("addr");
    assert_eq!(get(server.addr(), "/warm").status, 200); // the connection has been accepted
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: only getsockopt/getpeername on a descriptor of this process.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let sock = socket2::SockRef::from(&fd);
        if sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(ours) {
            found = Some((
                sock.tcp_nodelay().expect("getsockopt"),
                sock.read_timeout().expect("getsockopt"),
                sock.write_timeout().expect("getsockopt"),
            ));
        }
    }
    let timeouts = (
        Some(echo_core::server::IDLE_TIMEOUT),
        Some(echo_core::server::WRITE_TIMEOUT),
    );
    assert_eq!(found, Some((true, timeouts.0, timeouts.1)));
}
