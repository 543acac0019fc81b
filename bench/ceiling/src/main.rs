//! The loopback ceiling of the benchmark: the fastest *trivial* HTTP/1.1 server we
//! can write in a few lines, so that A and B can be reported as a share of what this machine
//! does over loopback at all.
//!
//! One thread per connection (blocking I/O, small stacks), keep-alive, pipelining-safe,
//! TCP_NODELAY on every accepted socket, and one fixed response written with a single
//! `write` per batch of requests: `{"echo":"hello"}` with `Content-Type: application/json`.
//! It parses nothing but the end of each request head (`\r\n\r\n`); bodies are not supported
//! (wrk sends GETs). It exits by itself after `--max-secs` (default 900) so that it can never
//! outlive a benchmark that was killed.
//!
//! Usage: `bench_ceiling [--listen 127.0.0.1:0] [--max-secs 900]`; prints
//! `listening on http://IP:PORT` once bound.

#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 16\r\n\
\r\n\
{\"echo\":\"hello\"}";

/// Largest request head kept while waiting for its end; more and the connection is dropped.
const MAX_HEAD: usize = 16 * 1024;

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut max_secs: u64 = 900;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("bench_ceiling: {name} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--listen" => listen = value("--listen"),
            "--max-secs" => {
                max_secs = value("--max-secs").parse().unwrap_or_else(|_| {
                    eprintln!("bench_ceiling: --max-secs needs a number");
                    std::process::exit(2)
                })
            }
            other => {
                eprintln!("bench_ceiling: unknown argument {other}");
                std::process::exit(2)
            }
        }
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("bench_ceiling: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    let addr = listener.local_addr().expect("bound address");
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(max_secs));
        eprintln!("bench_ceiling: --max-secs {max_secs} reached, exiting");
        std::process::exit(0)
    });
    println!("bench_ceiling listening on http://{addr}");
    let _ = io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || serve(stream));
    }
}

/// Answers every complete request head in the buffer, in one write, until EOF or an error.
fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(RESPONSE.len() * 4);
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Search from a little before the new bytes: a terminator may straddle two reads.
        let mut scan = filled.saturating_sub(3);
        filled += n;
        let mut consumed = 0;
        while let Some(at) = find_head_end(&buf[scan..filled]) {
            let end = scan + at + 4;
            out.extend_from_slice(RESPONSE);
            consumed = end;
            scan = end;
        }
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        if consumed > 0 {
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}
