//! B's own `GET /ready` of a replica, with one deadline for the whole answer (connect,
//! send, every byte until the replica closes), so a replica that trickles its answer holds
//! a probe no longer than that; and how fast the fleet is, which a probe must match to
//! readmit a replica. Each probe runs on a short-lived thread of its own (at most
//! [`MAX_AT_ONCE`]), so probes never hold up each other or B's re-resolution.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The longest a probe waits for a whole answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A probe readmits a replica only within this many times the fastest latency estimate of
/// the replicas in rotation (what a first try among several may wait for its answer's head,
/// see `call`) ...
const FLEET_FACTOR: f64 = 10.0;
/// ... and never less than this (a fast fleet's estimates are a fraction of a millisecond).
const FLEET_FLOOR: Duration = Duration::from_millis(100);
/// Probes running at once, at most; more wait for the upkeep's next look.
pub(crate) const MAX_AT_ONCE: usize = 16;
/// The most of an answer read: a status line and a few headers, `/ready`'s small body.
const MAX_ANSWER: usize = 4096;

/// Probes running now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How long a probe may take to count: as fast as the fleet (`fastest_ns`, the lowest
/// latency estimate of the other replicas in rotation, 0 when unknown: the fastest, not the
/// median, since a peak-EWMA takes a passing peak at once, and two replicas rarely peak
/// together), or at most [`PROBE_TIMEOUT`] when there is no fleet to compare with.
pub(crate) fn limit_for(fastest_ns: f64) -> (Duration, bool) {
    if fastest_ns <= 0.0 {
        return (PROBE_TIMEOUT, false);
    }
    let fleet = Duration::from_nanos((fastest_ns * FLEET_FACTOR) as u64);
    (fleet.max(FLEET_FLOOR).min(PROBE_TIMEOUT), true)
}

/// Runs `job` on a thread of its own, if fewer than [`MAX_AT_ONCE`] probes run; false if
/// it could not start (it is then not run).
pub(crate) fn spawn(job: impl FnOnce() + Send + 'static) -> bool {
    if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_AT_ONCE {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    let started = thread::Builder::new()
        .name("service_b-probe".to_string())
        .spawn(move || {
            job();
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        });
    if started.is_err() {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

/// Whether another probe may start now.
pub(crate) fn room() -> bool {
    RUNNING.load(Ordering::SeqCst) < MAX_AT_ONCE
}

/// `GET path` at `addr`: its status and how long the whole answer took, all within
/// `limit`; an error says what went wrong and when.
pub(crate) fn ready(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let left = || {
        limit
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no whole answer within {}ms", limit.as_millis()))
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no whole answer within {}ms", limit.as_millis())
        }
        _ => e.to_string(),
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?).map_err(io)?;
    stream.set_write_timeout(Some(left()?)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while answer.len() < MAX_ANSWER && !complete(&answer) {
        stream.set_read_timeout(Some(left()?)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let status = answer
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    Ok((status, started.elapsed()))
}

/// Whether `answer` holds a whole head and the `Content-Length` bytes of body it declares
/// (without one, the answer ends when the replica closes).
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| answer.len() >= end + 4 + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_must_be_about_as_fast_as_the_fleet() {
        let ms = Duration::from_millis;
        assert_eq!(
            limit_for(0.0),
            (PROBE_TIMEOUT, false),
            "no fleet to compare"
        );
        assert_eq!(limit_for(1e6), (ms(100), true), "the floor");
        assert_eq!(limit_for(20e6), (ms(200), true));
        assert_eq!(
            limit_for(900e6),
            (PROBE_TIMEOUT, true),
            "at most the timeout"
        );
    }

    #[test]
    fn an_answer_is_whole_with_its_declared_body() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{"));
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\n{}"), "until the close");
    }
}
