//! The test kit shared by every test crate, so that no suite defines its own fixtures: a raw
//! HTTP/1.1 client (so tests see exactly what goes over the socket), real misbehaving servers
//! that stand in for a failing Service A ([`FakeA`]), a runner for the real binaries that
//! builds them and waits for their `listening on` line ([`spawn_a`], [`spawn_b`],
//! [`Running`]), and readers of what they show: a metric of `/metrics` ([`metric`]) and a
//! field of a log line ([`log_field`]). For the services' handler unit tests, a GET request
//! ([`GetRequest`]) and a response's JSON body ([`JsonBody`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::SockRef;

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The header fields, names and values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body as received.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// `GET target` with `Connection: close`.
pub fn get(addr: SocketAddr, target: &str) -> Reply {
    send(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
}

/// `GET target` with extra header lines (each ending in `\r\n`).
pub fn get_with(addr: SocketAddr, target: &str, headers: &str) -> Reply {
    send(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"),
    )
}

/// Sends raw bytes and reads one response until the server closes or the body is complete.
/// Panics (failing the test) if no response comes within 10 s.
pub fn send(addr: SocketAddr, raw: &str) -> Reply {
    try_send(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
}

/// Like [`send`], but reports failure instead of panicking.
pub fn try_send(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(raw)?;
    read_reply(&mut BufReader::new(stream))
}

/// Reads one HTTP/1.1 response from `reader`: no body for 1xx, 204 and 304 (whatever the
/// headers say), else `Content-Length` bytes, else everything until the server closes.
pub fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("eof in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    let mut body = Vec::new();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(reply);
    }
    match reply
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Reply { body, ..reply })
}

/// A connection whose reads and writes give up after `limit`.
pub fn connect(addr: SocketAddr, limit: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    stream
        .set_write_timeout(Some(limit))
        .expect("write timeout");
    stream
}

/// What came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte read.
    pub bytes: Vec<u8>,
    /// The server closed the connection (end of stream, or a reset after its answer).
    pub closed: bool,
    /// From the write to the close, or to giving up.
    pub elapsed: Duration,
}

impl Exchange {
    /// The first response in the bytes, and the bytes after it.
    pub fn reply(&self) -> (Reply, Vec<u8>) {
        let mut cursor = Cursor::new(&self.bytes[..]);
        let reply = read_reply(&mut cursor).unwrap_or_else(|e| {
            panic!(
                "no response ({e}) in {:?} after {:?} (closed: {})",
                String::from_utf8_lossy(&self.bytes),
                self.elapsed,
                self.closed
            )
        });
        let rest = self.bytes[cursor.position() as usize..].to_vec();
        (reply, rest)
    }

    /// Every byte read, as text (lossy), for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads until the server closes, for at most `limit`.
pub fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (bytes, false);
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (bytes, true),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (bytes, false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset: closed (a server that closes with our bytes unread resets).
            Err(_) => return (bytes, true),
        }
    }
}

/// Sends `raw` on a new connection and reads until the server closes (at most `limit`).
pub fn exchange(addr: SocketAddr, raw: &[u8], limit: Duration) -> Exchange {
    let mut stream = connect(addr, limit);
    let started = Instant::now();
    // The server may answer and close before it has read everything: that is its right.
    let _ = stream.write_all(raw);
    let (bytes, closed) = read_until_close(&mut stream, limit);
    Exchange {
        bytes,
        closed,
        elapsed: started.elapsed(),
    }
}

/// Whether the answer says `Connection: close`.
pub fn says_close(reply: &Reply) -> bool {
    reply
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// An address where nothing listens (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// What a fake Service A does with each connection.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Accepts and never answers, holding the connection open.
    Silent,
    /// Reads the request, then closes with a TCP reset.
    Reset,
    /// Answers with this status and body.
    Answer(u16, String),
    /// Declares `Content-Length: 100`, sends 10 bytes, closes.
    Truncated,
    /// Sends bytes that are not HTTP, then closes.
    Garbage,
    /// Sends the status line of a 200 (`HTTP/1.1 200 OK\r\n`) and closes: an answer cut
    /// after its first bytes.
    CutAfterStatusLine,
    /// Answers the first request on a connection with this body and keeps the connection
    /// open, then closes it on the next request without answering: an idle pooled
    /// connection that died just as it was reused.
    OncePerConnection(String),
    /// Writes these bytes as they are (a whole answer: status line, headers, body) and
    /// closes: a replica answering what it should not, a 429 with `Retry-After`, …
    Raw(String),
    /// `/ready` gets a whole 200 answer, one byte every this long (a replica that trickles
    /// its answer); any other path a 500 at once.
    TrickleReady(Duration),
    /// A healthy A that closes every connection after its answer (keep-alive off, legal
    /// HTTP/1.1): `/echo?msg=M` gets `{"echo":"M"}` (M of plain characters, `%XX` and `+`
    /// decoded), `/ready` 200, each with `Connection: close`.
    EchoClosing,
}

/// A real server on 127.0.0.1:0 that misbehaves as told; it records each request head.
pub struct FakeA {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl FakeA {
    /// Starts it on 127.0.0.1, port 0, behaving as told.
    pub fn start(behaviour: Behaviour) -> FakeA {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake A");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (seen, current) = (Arc::clone(&requests), Arc::clone(&behaviour));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let behaviour = current
                    .lock()
                    .map(|b| b.clone())
                    .unwrap_or(Behaviour::Silent);
                let seen = Arc::clone(&seen);
                thread::spawn(move || serve_fake(stream, &behaviour, &seen));
            }
        });
        FakeA {
            addr,
            requests,
            behaviour,
        }
    }

    /// Changes what the fake does with the next connections.
    pub fn set(&self, behaviour: Behaviour) {
        if let Ok(mut b) = self.behaviour.lock() {
            *b = behaviour;
        }
    }

    /// Waits up to 10 s until at least `n` requests have arrived; false if they did not.
    pub fn wait_for_requests(&self, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.requests().len() < n {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// `http://addr`, for `--service-a-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request heads received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Reads one request head and records it; `None` at end of stream.
fn read_head(stream: &mut TcpStream, seen: &Mutex<Vec<String>>) -> Option<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    if let Ok(mut s) = seen.lock() {
        s.push(String::from_utf8_lossy(&head).into_owned());
    }
    Some(())
}

fn serve_fake(mut stream: TcpStream, behaviour: &Behaviour, seen: &Mutex<Vec<String>>) {
    if read_head(&mut stream, seen).is_none() {
        return;
    }
    let asked_ready = seen
        .lock()
        .ok()
        .and_then(|s| s.last().map(|h| h.starts_with("GET /ready ")))
        .unwrap_or(false);
    match behaviour {
        Behaviour::TrickleReady(every) if asked_ready => {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
            for byte in answer {
                thread::sleep(*every); // the trickle itself
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
            }
        }
        Behaviour::EchoClosing => {
            let head = seen
                .lock()
                .ok()
                .and_then(|s| s.last().cloned())
                .unwrap_or_default();
            let body = match head.split(' ').nth(1).and_then(|t| t.split_once("msg=")) {
                Some((_, msg)) => {
                    let msg = form_decode(msg.split('&').next().unwrap_or(""));
                    serde_json::json!({ "echo": msg }).to_string()
                }
                None => r#"{"status":"ready"}"#.to_string(),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Behaviour::TrickleReady(_) => {
            let _ = stream
                .write_all(b"HTTP/1.1 500 X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        }
        Behaviour::Silent => {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
        Behaviour::Reset => {
            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        Behaviour::Answer(status, body) => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Behaviour::Truncated => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"echo\":\"",
            );
            let _ = stream.shutdown(Shutdown::Both);
        }
        Behaviour::Garbage => {
            let _ = stream.write_all(b"\x00\x01 this is not HTTP at all\r\n\r\n");
        }
        Behaviour::CutAfterStatusLine => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
            let _ = stream.shutdown(Shutdown::Both);
        }
        Behaviour::Raw(bytes) => {
            let _ = stream.write_all(bytes.as_bytes());
        }
        Behaviour::OncePerConnection(body) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if read_head(&mut stream, seen).is_some() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A TCP proxy on `ip`, port 0, in front of `upstream`, that forwards every chunk either way
/// `delay` after it arrived (in order): a replica slowed by its network, which, unlike one
/// slowed by its own `--delay-ms`, cannot refuse work it cannot finish in time.
pub struct DelayProxy {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl DelayProxy {
    /// Starts it.
    pub fn start(ip: &str, upstream: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind the proxy");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    delayed_pipe(c, server, delay);
                    delayed_pipe(s, client, delay);
                }
            }
        });
        DelayProxy { addr }
    }

    /// `http://addr`, for `--service-a-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; the end of `from` ends
/// `to`'s writing side, after the chunks before it.
fn delayed_pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
                || n == 0
            {
                return;
            }
        }
    });
    thread::spawn(move || {
        for (due, bytes) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now())); // the delay itself
            if bytes.is_empty() || to.write_all(&bytes).is_err() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    });
}

/// `%XX` and `+` decoded (bytes that are not UTF-8 replaced).
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The workspace's service binaries, which the tests build themselves.
pub const SERVICES: [&str; 2] = ["service_a", "service_b"];

/// The path of a service binary (one of [`SERVICES`]), freshly built: the first call in a test
/// process runs `cargo build` for both services with this test build's profile, in the same
/// workspace and target directory, so a missing or stale binary is never run; later calls
/// reuse that build.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(build_services);
    built
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("cargo built no binary called {name}: {built:?}"))
}

/// Runs `cargo build` for [`SERVICES`] and returns each binary's path as cargo reports it.
fn build_services() -> HashMap<String, PathBuf> {
    // The cargo running these tests (it sets CARGO), else the one that compiled them.
    let cargo =
        std::env::var_os("CARGO").unwrap_or_else(|| option_env!("CARGO").unwrap_or("cargo").into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--bins", "--message-format=json-render-diagnostics"]);
    for name in SERVICES {
        command.args(["--package", name]);
    }
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut built = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str();
        let path = message["executable"].as_str();
        if let (Some("compiler-artifact"), Some(name), Some(path)) =
            (message["reason"].as_str(), name, path)
        {
            built.insert(name.to_string(), PathBuf::from(path));
        }
    }
    built
}

/// A command for a service binary with an empty environment, so nothing the caller exported
/// (`SERVICE_A_DELAY_MS`, `SERVICE_B_TIMEOUT_MS`, …) can change what a test sees.
pub fn service_command(name: &str) -> Command {
    let mut command = Command::new(binary(name));
    command.env_clear();
    command
}

/// A GET request with a fixed id, for a handler's unit test: `Request::get("/echo?msg=x")`
/// with this trait in scope.
pub trait GetRequest {
    /// `GET target` with the request id `test-id`.
    fn get(target: &str) -> Self;
}

impl GetRequest for echo_core::Request {
    fn get(target: &str) -> echo_core::Request {
        echo_core::Request::new("GET", target, "test-id")
    }
}

/// A response's body as JSON, for a handler's unit test.
pub trait JsonBody {
    /// The body parsed as JSON (`Value::Null` if it is not).
    fn json_body(&self) -> Value;
}

impl JsonBody for echo_core::Response {
    fn json_body(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A URL where no Service A listens (port 1 of loopback), for a B whose A does not matter.
pub const NO_A: &str = "http://127.0.0.1:1";

/// `name` (one of [`SERVICES`]) on 127.0.0.1, port 0, with `flags` after `--listen`.
pub fn spawn(name: &str, flags: &[&str]) -> Running {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    Running::start(name, &args)
}

/// Service A on port 0, tuned by `tuning` (more flags, such as `["--delay-ms", "300"]`).
pub fn spawn_a(tuning: &[&str]) -> Running {
    spawn("service_a", tuning)
}

/// Service B on port 0 calling the A at `a_url` (repeat `--service-a-url` in `tuning` for
/// more replicas), tuned by `tuning`.
pub fn spawn_b(a_url: &str, tuning: &[&str]) -> Running {
    let mut flags = vec!["--service-a-url", a_url];
    flags.extend_from_slice(tuning);
    spawn("service_b", &flags)
}

/// `name` (one of [`SERVICES`]) on its own: A as it starts, B calling [`NO_A`].
pub fn spawn_alone(name: &str) -> Running {
    match name {
        "service_b" => spawn_b(NO_A, &[]),
        _ => spawn(name, &[]),
    }
}

/// The `/metrics` exposition of the service at `addr`, as text, if it answers 200 (over its
/// connection limit a service may answer 503).
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let reply = get(addr, "/metrics");
    (reply.status == 200).then(|| String::from_utf8_lossy(&reply.body).into_owned())
}

/// The value of the sample `series` (its name and labels as exposed, such as
/// `connections_refused_total`) in an exposition's `text`; `None` if it has none.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
}

/// The value of `key=` in a text log line.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Opens a connection, has one keep-alive `/health` answered 200 on it (waiting at most 5 s),
/// and returns it open, with the time the answer took.
pub fn keep_alive(addr: SocketAddr) -> Result<(BufReader<TcpStream>, Duration), String> {
    let started = Instant::now();
    let mut s = connect(addr, Duration::from_secs(5));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s);
    match read_reply(&mut reader) {
        Ok(r) if r.status == 200 => Ok((reader, started.elapsed())),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(format!("{e} after {:?}", started.elapsed())),
    }
}

/// A signal a test sends to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: a graceful stop.
    Term,
    /// SIGINT: Ctrl-C, also a graceful stop.
    Int,
    /// SIGHUP: a closed terminal or a process manager, a graceful stop too.
    Hup,
    /// SIGKILL.
    Kill,
}

impl Signal {
    fn to_nix(self) -> nix::sys::signal::Signal {
        match self {
            Signal::Term => nix::sys::signal::Signal::SIGTERM,
            Signal::Int => nix::sys::signal::Signal::SIGINT,
            Signal::Hup => nix::sys::signal::Signal::SIGHUP,
            Signal::Kill => nix::sys::signal::Signal::SIGKILL,
        }
    }
}

/// A real service process with its stdout collected line by line.
pub struct Running {
    /// The process.
    pub child: Child,
    /// The address it listens on, from its `listening on` line.
    pub addr: SocketAddr,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts `name` with `args` and waits (up to 20 s) for its `listening on http://…` line.
    pub fn start(name: &str, args: &[&str]) -> Running {
        Running::start_limited(name, args, None)
    }

    /// Like [`Running::start`], then (once it listens) sets the service's soft and hard
    /// open-file limits to `nofile`, so it cannot raise them again. The service chose its
    /// defaults under the limit it started with; the lowered one meets it at run time.
    pub fn start_limited(name: &str, args: &[&str], nofile: Option<u64>) -> Running {
        Running::launch(name, args, &[], nofile)
    }

    /// Like [`Running::start`], with the environment variables `env` set (the rest of the
    /// environment is empty, as always).
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::launch(name, args, env, None)
    }

    fn launch(name: &str, args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Running {
        let mut child = service_command(name)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn service");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Running {
            child,
            addr: closed_port(),
            lines,
            seen: Vec::new(),
        };
        let line = running.wait_for("listening on http://", Duration::from_secs(20));
        // The address ends where the line does (text) or at the closing quote (JSON).
        let addr = line.rsplit("http://").next().unwrap_or("");
        let addr = addr.split(['"', ' ']).next().unwrap_or("");
        running.addr = addr
            .parse()
            .unwrap_or_else(|_| panic!("bad address in {line:?}"));
        if let Some(n) = nofile {
            rlimit::prlimit(
                running.pid() as rlimit::pid_t,
                rlimit::Resource::NOFILE,
                Some((n, n)),
                None,
            )
            .unwrap_or_else(|e| panic!("prlimit NOFILE={n} on {name}: {e}"));
        }
        running
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line containing `needle` and returns it; panics after `limit`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?}: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("exited before {needle:?}: {:#?}", self.seen)
                }
            }
        }
    }

    /// The process's resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_number(self.child.id(), "VmRSS:")
    }

    /// The process's peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_number(self.child.id(), "VmHWM:")
    }

    /// The number of threads of the process.
    pub fn threads(&self) -> u64 {
        proc_status_number(self.child.id(), "Threads:")
    }

    /// The number of open file descriptors of the process (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|entries| entries.count() as u64)
            .unwrap_or(0)
    }

    /// Sends `signal` to the process; panics if it cannot be sent.
    pub fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal.to_nix())
            .unwrap_or_else(|e| panic!("kill -{signal:?} {pid}: {e}"));
    }

    /// Waits up to `limit` for the process to exit; returns its exit code and every stdout
    /// line it printed.
    pub fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + limit;
        let code = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.code(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    break None;
                }
            }
        };
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        (code, lines)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number of a field of /proc/PID/status (KiB for sizes, a count for threads; 0 if absent).
fn proc_status_number(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises this process's soft open-file limit to the hard one, for tests that hold many
/// connections.
pub fn raise_own_fd_limit() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
}
