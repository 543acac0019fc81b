//! Our HTTP/1.1 core: a listener we bind, one accept loop, and one thread per connection
//! that reads each request, parses it with `httparse`, runs the handler and writes the
//! answer, in order. No queue and no hand-off between threads: a connection never waits
//! behind another, and a client that never reads blocks only its own thread.
//!
//! Reading top-down: the limits, [`serve`] and its handle, the accept loop, the thread
//! pool, one connection's loop, the request head's rules, and writing an answer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use log::Level;
use socket2::{Domain, Protocol, Socket, Type};

use crate::http::{request_id, Request, Response};
use crate::metrics::Metrics;

/// Longest request target (path and query) accepted; longer gets 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most header bytes accepted (each field counted as name + value + 4); more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields accepted; more gets 431.
pub const MAX_HEADERS: usize = 100;
/// Largest body read (and dropped: no route takes one); larger gets 413 and a close.
pub const MAX_BODY_BYTES: usize = 1024;
/// The whole request head must arrive within this, from its first byte (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no new request for this long is closed. Longer than a
/// pooling client keeps an idle connection (B's ureq: 15 s), so such a client never reuses
/// a connection just as we close it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write blocked this long (a client that stopped reading) fails and the connection ends.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection thread with nothing to do waits this long for a new connection, then ends.
const THREAD_KEEP: Duration = Duration::from_secs(5);
/// Stack of a connection thread: the handlers need little; the default 2 MiB is address
/// space a thousand idle connections need not reserve.
const STACK_BYTES: usize = 256 * 1024;
/// Descriptors kept back from `--max-connections`' default for the process itself (or a
/// quarter of the limit, if that is less).
const RESERVED_FDS: u64 = 64;
/// Before closing a connection, unread input is drained for at most this long (or
/// [`LINGER_BYTES`]): closing with input unread sends a reset, which can destroy our last
/// answer (a 400, say) before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;
/// The default `--max-connections` never exceeds this, whatever the descriptor limit.
pub const MAX_CONNECTIONS_CAP: usize = 10_000;

/// The limits as `--help` shows them.
pub const LIMITS_HELP: &str = "Limits: request target (path and query) 8 KiB → 414; header \
fields 16 KiB or 100 → 431; request body 1 KiB (bodies are not used) → 413 and close. Timeouts: \
request head 10 s, idle keep-alive 60 s, write 10 s.";

/// The default `--max-connections`: what the open-file limit allows when each connection
/// costs `fds_per_connection` descriptors, less a reserve, capped at
/// [`MAX_CONNECTIONS_CAP`] (at least 1).
pub fn default_max_connections(fds_per_connection: u64) -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let fit = soft.saturating_sub(RESERVED_FDS.min(soft / 4)) / fds_per_connection.max(1);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS_CAP)
}

/// The request handler a service gives to [`serve`].
pub type HandlerFn = dyn Fn(&Request) -> Response + Send + Sync + 'static;

/// Binds `listen` (an `IP:PORT`; port 0 picks a free one) with SO_REUSEADDR; the error
/// names the address. No timeout is ever set on the listening socket: an accept with one
/// fails with EAGAIN once it expires. A service binds before it logs its config, so a port
/// in use is one line on stderr and nothing else.
pub fn bind(listen: &str) -> io::Result<TcpListener> {
    bind_addr(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

fn bind_addr(listen: &str) -> io::Result<TcpListener> {
    let addr = listen
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves `handler` on `listener` (from [`bind`]), one thread per connection, at most
/// `max_connections` at once; logs `listening on http://…` first. `name` is the service name
/// of every log line; every answer is counted in `metrics`.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    max_connections: usize,
    metrics: Arc<Metrics>,
    handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        name,
        listener,
        max_connections: max_connections.max(1),
        stopping: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        conns: Mutex::new(Conns::default()),
        all_closed: Condvar::new(),
        pool: Mutex::new(PoolState::default()),
        pool_wake: Condvar::new(),
        metrics,
        handler: Box::new(handler),
    });
    let accepting = Arc::clone(&shared);
    thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || accepting.accept_loop())?;
    log::info!(target: name, "listening on http://{addr}");
    Ok(ServerHandle { addr, shared })
}

/// A running server: its bound address and the way to stop it. Dropping it stops accepting
/// without waiting for in-flight requests.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// The address actually bound (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the base URL clients and tests use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and ends idle connections at once; [`ServerHandle::shutdown`] does
    /// this too.
    pub fn stop_accepting(&self) {
        self.shared.stop();
    }

    /// Stops, lets requests already read finish (a delayed answer included), and waits at
    /// most `grace` for every connection to close. Returns how many requests were still in
    /// flight when it gave up.
    pub fn shutdown(self, grace: Duration) -> usize {
        self.shared.stop();
        let deadline = Instant::now() + grace;
        let mut conns = self.shared.lock_conns();
        while !conns.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = match self.shared.all_closed.wait_timeout(conns, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(conns);
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// One open connection: its id in [`Conns`] and the socket, shared with the stopper.
type Conn = (u64, Arc<TcpStream>);

/// The open connections, so that a stop can end them and a limit can count them.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, Arc<TcpStream>>,
}

/// Idle connection threads and the connections handed to them. Invariant: threads waiting
/// = `idle` + `queue.len()`, so a queued connection always has a thread about to take it.
#[derive(Default)]
struct PoolState {
    idle: usize,
    queue: VecDeque<Conn>,
}

struct Shared {
    name: &'static str,
    listener: TcpListener,
    max_connections: usize,
    stopping: AtomicBool,
    /// Requests read and not yet answered.
    in_flight: AtomicUsize,
    conns: Mutex<Conns>,
    /// Signalled whenever a connection closes (shutdown waits on it).
    all_closed: Condvar,
    pool: Mutex<PoolState>,
    pool_wake: Condvar,
    metrics: Arc<Metrics>,
    handler: Box<HandlerFn>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn lock_conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pool(&self) -> MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting (shutting the listener down wakes the blocked `accept` and refuses
    /// new connections), shuts every open connection down for reading (an idle one ends at
    /// once; a busy one still writes its answer, then closes) and wakes idle threads.
    fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Read);
        for stream in self.lock_conns().open.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        let _pool = self.lock_pool();
        self.pool_wake.notify_all();
    }

    // --- The accept loop ---------------------------------------------------------------

    /// Accepts until stopped. It never dies: an error (EMFILE, ENFILE, ECONNABORTED, …) is
    /// logged once per burst and retried after a back-off that grows from 10 ms to 200 ms.
    fn accept_loop(self: Arc<Self>) {
        let mut failures: u64 = 0;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) if self.stopping() => {
                    drop(stream);
                    return;
                }
                Ok((stream, _)) => {
                    if failures > 0 {
                        log::warn!(target: self.name, "accept works again after {failures} failure(s)");
                        failures = 0;
                    }
                    self.admit(stream);
                }
                Err(_) if self.stopping() => return,
                Err(e) => {
                    if failures == 0 {
                        log::error!(target: self.name, "accept failed: {e}; retrying");
                    }
                    failures += 1;
                    let backoff = 5u64 << failures.min(6);
                    thread::sleep(Duration::from_millis(backoff.min(200)));
                }
            }
        }
    }

    /// Registers a new connection and gives it a thread, or answers 503 and closes it when
    /// `max_connections` are open.
    fn admit(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let conn = {
            let mut conns = self.lock_conns();
            if conns.open.len() >= self.max_connections {
                drop(conns);
                self.refuse(&stream);
                return;
            }
            let id = conns.next_id;
            conns.next_id += 1;
            let stream = Arc::new(stream);
            conns.open.insert(id, Arc::clone(&stream));
            if self.stopping() {
                // Accepted just as the stop began, after it shut the open ones: same fate.
                let _ = stream.shutdown(Shutdown::Read);
            }
            (id, stream)
        };
        self.dispatch(conn);
    }

    /// The answer to a connection over the limit, written on the accept thread: it fits in
    /// a fresh socket's send buffer, so the write does not block.
    fn refuse(&self, stream: &TcpStream) {
        let _ = stream.set_nonblocking(true);
        let id = request_id(None);
        let response = Response::error(503, "Too many connections");
        let _ = (&*stream).write_all(&encode(&response, &id, false, true));
        let _ = stream.shutdown(Shutdown::Write);
        // Closing with unread bytes would reset the connection, and a reset can destroy the
        // 503 before the client reads it: take what has arrived, without waiting (this is
        // the accept thread).
        let (mut drained, mut sink) = (0, [0u8; 4096]);
        while drained < LINGER_BYTES {
            match (&*stream).read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        self.metrics.refused();
        log::warn!(target: self.name, "- - 503 0.00ms request_id={id} refused: {} connections open", self.max_connections);
    }

    // --- The thread pool ---------------------------------------------------------------

    /// Hands the connection to an idle thread if one waits, else starts a thread for it.
    fn dispatch(self: &Arc<Self>, conn: Conn) {
        {
            let mut pool = self.lock_pool();
            if pool.idle > 0 {
                pool.idle -= 1;
                pool.queue.push_back(conn);
                self.pool_wake.notify_one();
                return;
            }
        }
        let id = conn.0;
        let shared = Arc::clone(self);
        let started = thread::Builder::new()
            .name(format!("{}-conn", self.name))
            .stack_size(STACK_BYTES)
            .spawn(move || shared.connection_thread(conn));
        if let Err(e) = started {
            log::error!(target: self.name, "cannot start a connection thread: {e}");
            if let Some(stream) = self.lock_conns().open.remove(&id) {
                self.refuse(&stream);
            }
        }
    }

    /// Serves connections one after another until no new one comes for [`THREAD_KEEP`].
    fn connection_thread(self: Arc<Self>, first: Conn) {
        let mut conn = first;
        loop {
            let (id, stream) = conn;
            if catch_unwind(AssertUnwindSafe(|| self.serve_connection(&stream))).is_err() {
                log::error!(target: self.name, "connection thread panicked; connection closed");
            }
            linger(&stream);
            let mut conns = self.lock_conns();
            conns.open.remove(&id);
            drop(stream);
            self.all_closed.notify_all();
            drop(conns);
            match self.next_connection() {
                Some(next) => conn = next,
                None => return,
            }
        }
    }

    /// Waits as an idle thread for the next connection handed over by [`Shared::dispatch`].
    fn next_connection(&self) -> Option<Conn> {
        let mut pool = self.lock_pool();
        if self.stopping() {
            return None;
        }
        pool.idle += 1;
        loop {
            if let Some(conn) = pool.queue.pop_front() {
                return Some(conn);
            }
            if self.stopping() {
                pool.idle -= 1;
                return None;
            }
            let (guard, wait) = match self.pool_wake.wait_timeout(pool, THREAD_KEEP) {
                Ok(woken) => woken,
                Err(poisoned) => poisoned.into_inner(),
            };
            pool = guard;
            if wait.timed_out() && pool.queue.is_empty() {
                pool.idle -= 1;
                return None;
            }
        }
    }

    // --- One connection ----------------------------------------------------------------

    /// Reads, answers and writes requests in order until the client closes, a timeout
    /// passes, a request asks to close, or a bad request ends the connection.
    fn serve_connection(&self, stream: &TcpStream) {
        let mut buf = Vec::new();
        let mut reader = Reader::new(stream);
        loop {
            let head = match reader.head(&mut buf) {
                Ok(Some(head)) => head,
                Ok(None) => return, // closed, idle too long, or stopping
                Err(bad) => return self.reject(stream, &bad),
            };
            let started = Instant::now();
            let keep_alive = match self.read_body(stream, &mut reader, &mut buf, &head) {
                Ok(()) => head.keep_alive,
                Err(bad) => return self.reject(stream, &bad),
            };
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let keep_alive = self.answer(stream, &head, keep_alive, started);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !keep_alive {
                return;
            }
        }
    }

    /// Reads and drops the request's body (at most [`MAX_BODY_BYTES`], checked with the
    /// head), after `100 Continue` if the client waits for it.
    fn read_body(
        &self,
        stream: &TcpStream,
        reader: &mut Reader<'_>,
        buf: &mut Vec<u8>,
        head: &Head,
    ) -> Result<(), Bad> {
        if head.content_length == 0 {
            return Ok(());
        }
        if head.expect_continue && buf.len() < head.content_length {
            (&*stream)
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| Bad::closed())?;
        }
        reader.body(buf, head.content_length)
    }

    /// Runs the handler (a panic becomes a 500), waits out any delay on this thread, writes
    /// the answer and its access line. Returns whether the connection stays open.
    fn answer(&self, stream: &TcpStream, head: &Head, keep_alive: bool, started: Instant) -> bool {
        let id = request_id(head.request_id.as_deref());
        let req = Request::new(&head.method, &head.target, &id);
        log::debug!(target: self.name, "{} {} started request_id={id}", req.method, req.path);
        let response = catch_unwind(AssertUnwindSafe(|| (self.handler)(&req)))
            .unwrap_or_else(|_| Response::error(500, "Internal server error"));
        if !response.delay.is_zero() {
            thread::sleep(response.delay);
        }
        let keep_alive = keep_alive && !self.stopping();
        let mut response = response;
        if keep_alive && head.http10 {
            // An HTTP/1.0 client keeps the connection only when told so.
            response
                .headers
                .push(("Connection", "keep-alive".to_string()));
        }
        let bytes = encode(&response, &id, req.method == "HEAD", !keep_alive);
        let written = (&*stream).write_all(&bytes);
        if let Err(e) = &written {
            log::debug!(target: self.name, "writing the answer failed: {e} request_id={id}");
        }
        self.log_access(&req.method, &req.path, &response, &id, started);
        keep_alive && written.is_ok()
    }

    /// Answers a request that breaks the rules with its 4xx/5xx and closes the connection.
    fn reject(&self, stream: &TcpStream, bad: &Bad) {
        let Some(status) = bad.status else { return };
        let started = Instant::now();
        let id = request_id(None);
        let response = Response::error(status, bad.message);
        let _ = (&*stream).write_all(&encode(&response, &id, false, true));
        self.log_access(&bad.method, &bad.path, &response, &id, started);
    }

    /// The access line (`METHOD PATH STATUS LATENCYms request_id=…`, WARN for 5xx) and the
    /// request metrics. The logger escapes anything a client put in the method or path.
    fn log_access(
        &self,
        method: &str,
        path: &str,
        response: &Response,
        id: &str,
        started: Instant,
    ) {
        let status = response.status;
        let level = if status >= 500 {
            Level::Warn
        } else {
            Level::Info
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .observe(method, response.route, status, seconds);
        let ms = seconds * 1000.0;
        let fields = LogFields(&response.log_fields);
        log::log!(target: self.name, level, "{method} {path} {status} {ms:.2}ms request_id={id}{fields}");
    }
}

/// The handler's extra fields of an access line, each as ` name=value`.
struct LogFields<'a>(&'a [(&'static str, String)]);

impl fmt::Display for LogFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|(name, value)| write!(f, " {name}={value}"))
    }
}

/// Closes our side for writing, then drains what the client still sends for a short while,
/// so that closing does not reset the connection under our last answer.
fn linger(stream: &TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return; // already gone
    }
    let deadline = Instant::now() + LINGER;
    let (mut drained, mut sink) = (0, [0u8; 4096]);
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

// --- Reading a request ---------------------------------------------------------------

/// A request that cannot be served: the status it gets (none when the connection just ends)
/// and what the access line shows of it.
#[derive(Debug)]
struct Bad {
    status: Option<u16>,
    message: &'static str,
    method: String,
    path: String,
}

impl Bad {
    fn new(status: u16, message: &'static str) -> Bad {
        Bad {
            status: Some(status),
            message,
            method: "-".to_string(),
            path: "-".to_string(),
        }
    }

    /// The client closed or timed out mid-request: nothing to answer.
    fn closed() -> Bad {
        Bad {
            status: None,
            ..Bad::new(400, "")
        }
    }

    /// Names the request in the access line by its method and target.
    fn of(mut self, method: &str, target: &str) -> Bad {
        self.method = method.to_string();
        self.path = target.split('?').next().unwrap_or("").to_string();
        self
    }

    /// Names a request that did not parse by the first two words of its first line (at
    /// most 256 bytes of it), as far as they are there.
    fn of_line(self, buf: &[u8]) -> Bad {
        let line = &buf[..buf.len().min(256)];
        let line = line
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let method = words.next().unwrap_or("-").to_string();
        let target = words.next().unwrap_or("-").to_string();
        self.of(&method, &target)
    }
}

/// What the connection loop needs of a request head, checked against every rule.
#[derive(Debug)]
struct Head {
    method: String,
    /// In origin form (`/path?query`), also when sent in absolute form.
    target: String,
    http10: bool,
    keep_alive: bool,
    content_length: usize,
    expect_continue: bool,
    request_id: Option<String>,
}

/// Reads from one connection with the right timeout for each wait.
struct Reader<'a> {
    stream: &'a TcpStream,
    timeout: Option<Duration>,
    /// Where each read lands before what arrived is appended to the request buffer; zeroed
    /// once per connection, not once per read.
    chunk: [u8; 8192],
}

impl<'a> Reader<'a> {
    fn new(stream: &'a TcpStream) -> Reader<'a> {
        Reader {
            stream,
            timeout: None,
            chunk: [0u8; 8192],
        }
    }

    /// Reads what arrives (at most 8 KiB at a time) onto `buf`, waiting at most `timeout`.
    /// Returns false at end of stream or when the wait passed.
    fn fill(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> bool {
        if self.timeout != Some(timeout) {
            if self.stream.set_read_timeout(Some(timeout)).is_err() {
                return false;
            }
            self.timeout = Some(timeout);
        }
        match (&*self.stream).read(&mut self.chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&self.chunk[..n]);
                true
            }
        }
    }

    /// The next request head, removed from `buf` (what follows it stays: a body, or
    /// pipelined requests). `Ok(None)` when the connection ends quietly between requests.
    fn head(&mut self, buf: &mut Vec<u8>) -> Result<Option<Head>, Bad> {
        let mut deadline = (!buf.is_empty()).then(|| Instant::now() + HEAD_TIMEOUT);
        loop {
            if !buf.is_empty() {
                if let Some((head, len)) = parse_head(buf)? {
                    buf.drain(..len);
                    return Ok(Some(head));
                }
            }
            let timeout = match deadline {
                None => IDLE_TIMEOUT,
                Some(at) => at.saturating_duration_since(Instant::now()),
            };
            if timeout.is_zero() || !self.fill(buf, timeout) {
                // Closed or timed out: quietly between requests, else mid-head.
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Bad::closed())
                };
            }
            deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
        }
    }

    /// Takes `len` body bytes off `buf`, reading more within [`HEAD_TIMEOUT`] if needed.
    fn body(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), Bad> {
        let deadline = Instant::now() + HEAD_TIMEOUT;
        while buf.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(buf, left) {
                return Err(Bad::closed());
            }
        }
        buf.drain(..len);
        Ok(())
    }
}

/// The longest head worth waiting for: a request line with the longest target, then the
/// most header bytes.
const MAX_HEAD_BYTES: usize = MAX_TARGET_BYTES + MAX_HEADER_BYTES + 1024;

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete, `Ok(Some((head,
/// length)))` once whole and valid, `Err` for anything that breaks the rules (each answered,
/// then the connection closes).
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Bad> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(too_long(buf).of_line(buf)),
        Err(httparse::Error::Version) => {
            return Err(Bad::new(505, "HTTP version not supported").of_line(buf));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Bad::new(431, "Too many header fields").of_line(buf));
        }
        Err(_) => return Err(Bad::new(400, "Malformed request").of_line(buf)),
    };
    let method = req.method.unwrap_or("-");
    let target = req.path.unwrap_or("-");
    let bad = |status, message| Bad::new(status, message).of(method, target);
    if has_bare_lf(&buf[..len]) {
        return Err(bad(400, "Line endings must be CRLF"));
    }
    if target.len() > MAX_TARGET_BYTES {
        return Err(bad(414, "Request target too long"));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(400, "Request target must be ASCII"));
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(bad(431, "Request header fields too large"));
    }
    let version = req.version.unwrap_or(1);
    let values = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
            .collect()
    };
    let hosts = values("Host").len();
    if hosts > 1 || (version == 1 && hosts == 0) {
        return Err(bad(400, "Exactly one Host header is required"));
    }
    if !values("Transfer-Encoding").is_empty() {
        return Err(bad(413, "Request body too large"));
    }
    let lengths = values("Content-Length");
    let content_length = match lengths.as_slice() {
        [] => 0,
        [one] if !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()) => {
            match one.parse::<usize>() {
                Ok(n) if n <= MAX_BODY_BYTES => n,
                _ => return Err(bad(413, "Request body too large")),
            }
        }
        _ => return Err(bad(400, "Invalid Content-Length")),
    };
    let expect = values("Expect");
    let expect_continue = match expect.as_slice() {
        [] => false,
        [one] if one.eq_ignore_ascii_case("100-continue") => true,
        _ => return Err(bad(417, "Expectation not supported")),
    };
    let connection: Vec<String> = values("Connection")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let keep_alive = match version {
        0 => connection.iter().any(|t| t == "keep-alive"),
        _ => !connection.iter().any(|t| t == "close"),
    };
    let request_id = values("X-Request-Id").into_iter().next();
    let head = Head {
        method: method.to_string(),
        target: origin_form(target),
        http10: version == 0,
        keep_alive,
        content_length,
        expect_continue,
        request_id,
    };
    Ok(Some((head, len)))
}

/// A head too long to wait for: 414 if the request line alone is over the limit, else 431.
fn too_long(buf: &[u8]) -> Bad {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if end <= MAX_TARGET_BYTES + 64 => {
            Bad::new(431, "Request header fields too large")
        }
        _ => Bad::new(414, "Request target too long"),
    }
}

/// Whether a line of the head ends in a bare LF (no CR before it).
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// `http://host/path?q` → `/path?q`; any other target is kept as sent.
fn origin_form(target: &str) -> String {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let Some(rest) = ["http://", "https://"]
        .iter()
        .find(|scheme| lower.starts_with(**scheme))
        .map(|scheme| &target[scheme.len()..])
    else {
        return target.to_string();
    };
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => rest[i..].to_string(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".to_string(),
    }
}

// --- Writing an answer ---------------------------------------------------------------

/// The bytes of an answer: status line, the headers every answer carries (`Content-Type`,
/// `X-Content-Type-Options`, `X-Request-Id`), the handler's own, `Content-Length` (none and
/// no body for HEAD, 204 and 304) and `Connection: close` when the connection ends after it.
fn encode(response: &Response, id: &str, head: bool, close: bool) -> Vec<u8> {
    let status = response.status;
    let bodiless = head || status == 204 || status == 304;
    let mut out = Vec::with_capacity(192 + response.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nX-Request-Id: {id}\r\n",
        reason(status),
        response.content_type
    );
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !bodiless {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

/// The reason phrase of the statuses the services send (empty for others, as HTTP allows).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<(Head, usize)>, Bad> {
        parse_head(raw.as_bytes())
    }

    fn status(raw: &str) -> Option<u16> {
        parse(raw).err().and_then(|bad| bad.status)
    }

    #[test]
    fn a_valid_head_is_parsed_and_its_length_known() {
        let raw = "GET /echo?msg=hi HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc\r\n\r\nNEXT";
        let (head, len) = parse(raw).ok().flatten().expect("complete head");
        assert_eq!(&raw[len..], "NEXT");
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("GET", "/echo?msg=hi")
        );
        assert_eq!(head.request_id.as_deref(), Some("abc"));
        assert!(head.keep_alive && head.content_length == 0 && !head.expect_continue);
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: t\r\n"), Ok(None)));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let alive = |raw: &str| parse(raw).ok().flatten().map(|(h, _)| h.keep_alive);
        assert_eq!(alive("GET / HTTP/1.0\r\n\r\n"), Some(false));
        assert_eq!(
            alive("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            alive("GET / HTTP/1.1\r\nHost: t\r\nConnection: x, close\r\n\r\n"),
            Some(false)
        );
    }

    #[test]
    fn framing_must_be_unambiguous() {
        for cl in ["abc", "-1", "1 , 1", "0x10", "+5", ""] {
            let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(status(&raw), Some(400), "{cl:?}");
        }
        let two = "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status(two), Some(400));
        for cl in ["1025", "18446744073709551616", "99999999999999999999999"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(status(&raw), Some(413), "{cl}");
        }
        let te =
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(status(te), Some(413));
        let ok = parse("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
        assert_eq!(ok.ok().flatten().map(|(h, _)| h.content_length), Some(1024));
    }

    #[test]
    fn protocol_rules_are_strict() {
        assert_eq!(status("GET / HTTP/2.0\r\nHost: t\r\n\r\n"), Some(505));
        assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(505));
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), Some(400), "no Host");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(status("GET / HTTP/1.1\nHost: t\n\n"), Some(400), "bare LF");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(status("GET /\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n"), Some(400));
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: t\r\nExpect: odd\r\n\r\n"),
            Some(417)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n")),
            Some(431)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
            "v".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(status(&big), Some(431));
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: t\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES)
        );
        assert_eq!(status(&long), Some(414));
        let endless = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(&endless), Some(414));
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(&endless), Some(431));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(origin_form("http://x/echo?msg=1"), "/echo?msg=1");
        assert_eq!(origin_form("HTTP://x:80?msg=1"), "/?msg=1");
        assert_eq!(origin_form("https://x"), "/");
        assert_eq!(origin_form("/plain"), "/plain");
        assert_eq!(origin_form("*"), "*");
    }

    #[test]
    fn answers_are_framed() {
        let text = |r: &Response, head, close| {
            String::from_utf8(encode(r, "id", head, close)).unwrap_or_default()
        };
        let ok = Response::error(404, "Not found").with_header("Allow", "GET");
        let out = text(&ok, false, false);
        assert!(
            out.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Request-Id: id\r\nAllow: GET\r\nContent-Length: 21\r\n\r\n{\"error\":\"Not found\"}"), "{out}");
        assert!(!out.contains("Connection"));
        let head = text(&ok, true, true);
        assert!(
            head.ends_with("Connection: close\r\n\r\n") && !head.contains("Content-Length"),
            "{head}"
        );
        let empty = text(&Response::error(204, "x"), false, false);
        assert!(
            empty.ends_with("nosniff\r\nX-Request-Id: id\r\n\r\n"),
            "{empty}"
        );
    }

    #[test]
    fn the_listener_has_no_timeout() {
        let listener = bind("127.0.0.1:0").expect("bind");
        let sock = socket2::SockRef::from(&listener);
        assert_eq!(sock.read_timeout().ok(), Some(None));
        assert_eq!(sock.write_timeout().ok(), Some(None));
    }
}
