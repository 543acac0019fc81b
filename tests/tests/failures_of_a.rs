//! B over a real A that fails: A killed under B answers 503 at once, and B serves again as
//! soon as A is back on the same port. (Each failure mode of A against a fake A, and B's
//! replicas, are tested in `service_b/tests`.)

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use echo_tests::{get, spawn_a, spawn_b, Running};

#[test]
fn a_killed_then_restarted_on_the_same_port() {
    let a = spawn_a(&[]);
    let port = a.addr.port();
    let b = spawn_b(&format!("http://{}", a.addr), &[]);
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
