//! The parser against real wrk 4.1.0 output (Debian's package), captured on this machine
//! into `wrk_samples/`.

use super::*;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn microseconds_and_milliseconds() {
    let r = parse(include_str!("wrk_samples/us_ms.txt")).unwrap();
    assert_eq!(r.requests, 33690);
    assert!((r.rps - 33195.75).abs() < 1e-9);
    assert!(close(r.p50_ms, 0.259), "{:?}", r.p50_ms);
    assert!(close(r.p99_ms, 8.04), "{:?}", r.p99_ms);
    assert_eq!(r.non_2xx, 0);
    assert_eq!(r.errors, SocketErrors::default());
}

#[test]
fn seconds() {
    let r = parse(include_str!("wrk_samples/seconds.txt")).unwrap();
    assert_eq!(r.requests, 4);
    assert!((r.rps - 1.27).abs() < 1e-9);
    assert!(close(r.p50_ms, 1100.0), "{:?}", r.p50_ms);
    assert!(close(r.p99_ms, 1100.0), "{:?}", r.p99_ms);
}

#[test]
fn non_2xx_line() {
    let r = parse(include_str!("wrk_samples/non2xx.txt")).unwrap();
    assert_eq!(r.non_2xx, 14906);
    assert_eq!(r.requests, 49792);
    assert!(close(r.p99_ms, 1.62));
    assert_eq!(r.errors.total(), 0);
}

#[test]
fn socket_errors_line() {
    let r = parse(include_str!("wrk_samples/socket_errors.txt")).unwrap();
    let want = SocketErrors {
        connect: 0,
        read: 8,
        write: 53250,
        timeout: 0,
    };
    assert_eq!(r.errors, want);
    assert_eq!(r.errors.total(), 53258);
    assert_eq!(r.non_2xx, 0);
    assert!(close(r.p50_ms, 0.034));
}

#[test]
fn timeouts_with_no_latency_sample() {
    let r = parse(include_str!("wrk_samples/timeouts.txt")).unwrap();
    assert_eq!(r.errors.timeout, 4);
    assert_eq!(r.errors.total(), 4);
    assert!(close(r.p99_ms, 0.0));
}

#[test]
fn every_unit() {
    assert_eq!(millis("259.00us"), Some(0.259));
    assert_eq!(millis("8.04ms"), Some(8.04));
    assert_eq!(millis("1.10s"), Some(1100.0));
    assert_eq!(millis("2.00m"), Some(120_000.0));
    assert_eq!(millis("1.5ns"), None);
    assert_eq!(millis("ms"), None);
    assert_eq!(millis("12"), None);
}

#[test]
fn output_without_figures_is_an_error() {
    let err = parse("unable to connect to 127.0.0.1:1 Connection refused\n").unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(parse("").is_err());
}

#[test]
fn errors_add_up() {
    let mut a = SocketErrors {
        connect: 1,
        read: 2,
        write: 3,
        timeout: 4,
    };
    a.add(&a.clone());
    assert_eq!((a.connect, a.read, a.write, a.timeout), (2, 4, 6, 8));
    assert_eq!(a.total(), 20);
}
