//! The loopback ceiling of the benchmark: the best *trivial* HTTP/1.1 server of the services'
//! own model, so that A and B can be reported as a share of what that model does over
//! loopback on this machine at all.
//!
//! The model of echo_core's server, stripped to the bone: a blocking accept loop; `--workers`
//! threads (default: the CPUs this process may use) waiting on one shared epoll set; every
//! connection registered one-shot, so the worker that gets it owns it until it re-arms it.
//! That worker reads what is there, answers each whole request head (up to `\r\n\r\n`) with
//! one fixed answer, `{"echo":"hello"}` as `application/json`, all of a batch in one `write`
//! and in order (pipelining-safe), and re-arms the connection. An answer the socket cannot
//! take waits in the connection for writability, and nothing more is read meanwhile. It
//! parses nothing else (bodies are not supported: wrk sends GETs) and logs nothing. It exits
//! by itself after `--max-secs` (default 900), so that it never outlives a killed benchmark.
//!
//! Usage: `bench_ceiling [--listen 127.0.0.1:0] [--workers N] [--max-secs 900]`; prints
//! `bench_ceiling listening on http://IP:PORT (N workers)` once bound.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustix::event::epoll::{self, Event, EventData, EventFlags};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 16\r\n\
\r\n\
{\"echo\":\"hello\"}";

/// Largest request head kept while waiting for its end; more and the connection is dropped.
const MAX_HEAD: usize = 16 * 1024;
/// Events taken by one wait at most (as echo_core's workers).
const BATCH: usize = 32;
/// Armed for the next request.
const READ: EventFlags = EventFlags::IN.union(EventFlags::ONESHOT);
/// Armed for room to write the rest of an answer.
const WRITE: EventFlags = EventFlags::OUT.union(EventFlags::ONESHOT);

/// A connection between two events: its socket, the start of a head not whole yet, and
/// answers the socket could not take yet.
struct Conn {
    stream: TcpStream,
    head: Vec<u8>,
    out: Vec<u8>,
}

/// The epoll set and the connections it names, by an id never reused (a stale event finds
/// nothing). A worker takes its connection out of the table while it handles it.
struct Server {
    epoll: OwnedFd,
    conns: Mutex<HashMap<u64, Conn>>,
}

fn main() {
    let (listen, workers, max_secs) = args();
    let listener =
        TcpListener::bind(&listen).unwrap_or_else(|e| fail(1, &format!("{listen}: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(1, &e.to_string()));
    let epoll =
        epoll::create(epoll::CreateFlags::CLOEXEC).unwrap_or_else(|e| fail(1, &e.to_string()));
    let server = Arc::new(Server {
        epoll,
        conns: Mutex::new(HashMap::new()),
    });
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(max_secs));
        eprintln!("bench_ceiling: --max-secs {max_secs} reached, exiting");
        std::process::exit(0)
    });
    for _ in 0..workers {
        let server = Arc::clone(&server);
        thread::spawn(move || work(&server));
    }
    println!("bench_ceiling listening on http://{addr} ({workers} workers)");
    let _ = io::stdout().flush();
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                thread::sleep(Duration::from_millis(10)); // EMFILE and the like: retry
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            continue;
        }
        next_id += 1;
        let mut conns = server.lock();
        let conn = conns.entry(next_id).or_insert(Conn {
            stream,
            head: Vec::new(),
            out: Vec::new(),
        });
        // Registered under the lock: its first event waits for the table to hold it.
        if epoll::add(
            &server.epoll,
            &conn.stream,
            EventData::new_u64(next_id),
            READ,
        )
        .is_err()
        {
            conns.remove(&next_id);
        }
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker: wait on the shared epoll set, serve each connection it gets, re-arm it (or drop
/// it, which closes it and takes it out of the set).
fn work(server: &Server) {
    let mut events = [MaybeUninit::<Event>::uninit(); BATCH];
    let mut ids = Vec::with_capacity(BATCH);
    let mut scratch = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(BATCH * RESPONSE.len());
    loop {
        match epoll::wait(&server.epoll, &mut events, None) {
            Ok((got, _)) => ids.extend(got.iter().map(|e| e.data.u64())),
            Err(_) => continue, // EINTR
        }
        for id in ids.drain(..) {
            let Some(mut conn) = server.lock().remove(&id) else {
                continue;
            };
            if let Some(interest) = serve(&mut conn, &mut scratch, &mut out) {
                let conns = &mut server.lock();
                let conn = conns.entry(id).or_insert(conn);
                let data = EventData::new_u64(id);
                if epoll::modify(&server.epoll, &conn.stream, data, interest).is_err() {
                    conns.remove(&id);
                }
            }
        }
    }
}

/// Handles one event: the rest of a pending answer first, then what was read, answered
/// from the worker's `out`. Returns what to wait for next, or `None` to close.
fn serve(conn: &mut Conn, scratch: &mut [u8], out: &mut Vec<u8>) -> Option<EventFlags> {
    if !conn.out.is_empty() {
        let rest = std::mem::take(&mut conn.out);
        conn.out = write_some(&mut conn.stream, &rest)?.to_vec();
        if !conn.out.is_empty() {
            return Some(WRITE);
        }
    }
    let n = match conn.stream.read(scratch) {
        Ok(0) => return None,
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(READ),
        Err(_) => return None,
    };
    let heads = if conn.head.is_empty() {
        let (heads, used) = count_heads(&scratch[..n]);
        conn.head.extend_from_slice(&scratch[used..n]);
        heads
    } else {
        conn.head.extend_from_slice(&scratch[..n]);
        let (heads, used) = count_heads(&conn.head);
        conn.head.drain(..used);
        heads
    };
    if conn.head.len() > MAX_HEAD {
        return None;
    }
    out.clear();
    for _ in 0..heads {
        out.extend_from_slice(RESPONSE);
    }
    conn.out = write_some(&mut conn.stream, out)?.to_vec();
    Some(if conn.out.is_empty() { READ } else { WRITE })
}

/// Writes what the socket takes of `bytes`: the rest, or `None` if the connection failed.
fn write_some<'a>(stream: &mut TcpStream, mut bytes: &'a [u8]) -> Option<&'a [u8]> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return None,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(bytes)
}

/// How many whole heads `bytes` holds, and where the last one ends.
fn count_heads(bytes: &[u8]) -> (usize, usize) {
    let (mut heads, mut used) = (0, 0);
    while let Some(at) = bytes[used..].windows(4).position(|w| w == b"\r\n\r\n") {
        heads += 1;
        used += at + 4;
    }
    (heads, used)
}

/// `--listen`, `--workers`, `--max-secs`.
fn args() -> (String, usize, u64) {
    let mut listen = "127.0.0.1:0".to_string();
    let mut workers = thread::available_parallelism().map_or(1, |n| n.get());
    let mut max_secs: u64 = 900;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| fail(2, &format!("{arg} needs a value")));
        let number = || -> u64 {
            (value.parse()).unwrap_or_else(|_| fail(2, &format!("{arg} needs a number")))
        };
        match arg.as_str() {
            "--listen" => listen = value.clone(),
            "--workers" => workers = usize::try_from(number().max(1)).unwrap_or(1),
            "--max-secs" => max_secs = number(),
            other => fail(2, &format!("unknown argument {other}")),
        }
    }
    (listen, workers, max_secs)
}

fn fail(code: i32, why: &str) -> ! {
    eprintln!("bench_ceiling: {why}");
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::count_heads;

    #[test]
    fn counts_whole_heads_only() {
        assert_eq!(count_heads(b""), (0, 0));
        assert_eq!(count_heads(b"GET / HTTP/1.1\r\n\r"), (0, 0));
        let two = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /";
        assert_eq!(count_heads(two), (2, 36));
    }
}
