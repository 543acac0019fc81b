//! The server loop both services run: a listener we bind ourselves, one `tiny_http::Server`
//! built from it, a fixed pool of workers calling `recv`, one wrapper per request (limits,
//! request id, panic → 500, common headers, access log) and a bounded graceful shutdown.
//!
//! tiny_http 0.12's accept thread ends for good on an accept error (EMFILE) or panics in
//! `try_clone().unwrap()`; we keep our own handle on the listening socket so the port
//! survives, notice the death (the error from `recv`, or the panic hook below) and build a
//! fresh `Server` from a clone of the listener.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::Level;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::guard;
use crate::http::{request_id, Request, Response};
use crate::metrics::Metrics;

/// How long an idle worker waits before it looks at shutdown and accept-thread health.
const POLL: Duration = Duration::from_millis(100);
/// The longest wait between two restarts of a dead accept thread.
const RESTART_WAIT: Duration = Duration::from_millis(250);
/// Retired servers (whose accept thread we believed dead) still drained, at most.
const MAX_RETIRED: usize = 4;

/// Twice the CPUs (at least 2): enough workers for handlers that never block. More only add
/// wake-ups: with 64 workers A served about a fifth fewer requests a second than with 4.
pub fn default_workers() -> u16 {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    u16::try_from(cpus * 2).unwrap_or(1024).clamp(2, 1024)
}

/// The request handler a service gives to [`serve`].
pub type HandlerFn = dyn Fn(&Request) -> Response + Send + Sync + 'static;

/// A running server: its bound address and the way to stop it. Dropping it stops accepting
/// without waiting for in-flight requests.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
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

    /// Stops accepting new connections at once; [`ServerHandle::shutdown`] does this too.
    pub fn stop_accepting(&self) {
        self.shared.stop();
    }

    /// Stops accepting, lets the workers finish what was already received (delayed answers
    /// included), and waits at most `grace` for them. Returns how many requests were still
    /// in flight when it gave up.
    pub fn shutdown(mut self, grace: Duration) -> usize {
        self.shared.stop();
        let deadline = Instant::now() + grace;
        let busy = |workers: &[JoinHandle<()>]| {
            workers.iter().any(|w| !w.is_finished())
                || self.shared.in_flight.load(Ordering::SeqCst) > 0
        };
        while busy(&self.workers) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        for worker in std::mem::take(&mut self.workers) {
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// A connection silent this long is closed (its thread ends): the idle timeout tiny_http
/// lacks. Longer than a pooling client keeps an idle connection (ureq: 15 s), so such a
/// client never reuses a connection just as we close it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write blocked this long (a client that stopped reading) fails, freeing its worker.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `listen` (an `IP:PORT`; port 0 picks a free one) with SO_REUSEADDR, TCP_NODELAY,
/// [`IDLE_TIMEOUT`] and [`WRITE_TIMEOUT`]. tiny_http sets none of these on the sockets it
/// accepts; Linux copies them from the listener to each. TCP_NODELAY avoids a ~40 ms
/// delayed-ACK stall on responses written in two parts.
pub fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr = listen
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(Some(IDLE_TIMEOUT))?;
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `listen` and serves `handler` on `workers` threads; logs `listening on http://…`
/// once the port is bound. `name` is the service name of every log line; every answered
/// request is counted in `metrics`.
pub fn serve(
    name: &'static str,
    listen: &str,
    workers: usize,
    metrics: Arc<Metrics>,
    handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
) -> io::Result<ServerHandle> {
    install_panic_hook();
    let listener = bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let first = new_server(&listener)?;
    let shared = Arc::new(Shared {
        name,
        listener,
        port: addr.port(),
        servers: RwLock::new(Arc::from(vec![first])),
        panics_seen: AtomicUsize::new(ACCEPT_PANICS.load(Ordering::SeqCst)),
        restarts: Mutex::new((Instant::now(), 0)),
        stopping: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        timer: Mutex::new(Timer::default()),
        timer_wake: Condvar::new(),
        delayed: AtomicUsize::new(0),
        metrics,
        handler: Box::new(handler),
    });
    let workers = (0..workers.max(1))
        .map(|i| {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("{name}-worker-{i}"))
                .spawn(move || shared.work())
        })
        .collect::<io::Result<Vec<_>>>()?;
    let timed = Arc::clone(&shared);
    thread::Builder::new()
        .name(format!("{name}-timer"))
        .spawn(move || timed.run_timer())?;
    let watched = Arc::clone(&shared);
    thread::Builder::new()
        .name(format!("{name}-watchdog"))
        .spawn(move || watched.watch())?;
    log::info!(target: name, "listening on http://{addr}");
    Ok(ServerHandle {
        addr,
        shared,
        workers,
    })
}

fn new_server(listener: &TcpListener) -> io::Result<Arc<tiny_http::Server>> {
    let server = tiny_http::Server::from_listener(listener.try_clone()?, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Arc::new(server))
}

/// Counts panics of tiny_http's accept threads; each server compares it with the count it
/// last saw to learn that an accept thread may have died without a word.
static ACCEPT_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Panics in our own threads (`NAME-worker-N`, `NAME-timer`, `NAME-writer`) are caught per
/// request; they are logged as one ERROR line of the service's log instead of the default
/// report on stderr. Panics in tiny_http's accept thread are counted (see above).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = thread::current();
            // The accept thread's own code: the `try_clone().unwrap()` of each accepted
            // socket, and the thread pool it hands connections to.
            let in_accept_thread = info.location().is_some_and(|l| {
                l.file().contains("tiny_http")
                    && (l.file().ends_with("refined_tcp_stream.rs")
                        || l.file().ends_with("task_pool.rs"))
            });
            if thread.name().is_none() && in_accept_thread {
                ACCEPT_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            match thread.name().and_then(|n| n.split_once('-')) {
                Some((service, role)) if ["worker", "timer", "writer"].iter().any(|r| role.starts_with(r)) => {
                    let what = info.payload_as_str().unwrap_or("a panic");
                    let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
                    log::error!(target: service, "caught a panic in {}: {what}{}", thread.name().unwrap_or(""), place.unwrap_or_default());
                }
                _ => previous(info),
            }
        }));
    });
}

struct Shared {
    name: &'static str,
    /// Our own handle on the listening socket: keeps the port when an accept thread dies.
    listener: TcpListener,
    /// The bound port, which tells our accepted sockets from others.
    port: u16,
    /// The current server first, then retired ones still drained of queued requests.
    servers: RwLock<Arc<[Arc<tiny_http::Server>]>>,
    panics_seen: AtomicUsize,
    /// When the accept thread was last restarted, and how many restarts in a row.
    restarts: Mutex<(Instant, u32)>,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
    timer: Mutex<Timer>,
    timer_wake: Condvar,
    /// Answers on the timer not yet written (lets workers skip the timer's lock).
    delayed: AtomicUsize,
    metrics: Arc<Metrics>,
    handler: Box<HandlerFn>,
}

impl Shared {
    fn work(&self) {
        loop {
            let servers = self.servers();
            let stopping = self.stopping.load(Ordering::SeqCst);
            // While stopping, a worker still takes what arrives within one POLL, so a request
            // on a connection accepted just before the stop is answered, not dropped.
            match servers[0].recv_timeout(POLL) {
                Ok(Some(rq)) => self.answer(rq),
                Ok(None) if stopping => return,
                Ok(None) => {}
                Err(_) if stopping => return,
                Err(e) => self.replace_server(Some(&servers[0]), &format!("accept failed: {e}")),
            }
            for old in &servers[1..] {
                while let Ok(Some(rq)) = old.try_recv() {
                    self.answer(rq);
                }
            }
            let panics = ACCEPT_PANICS.load(Ordering::SeqCst);
            if !stopping && self.panics_seen.swap(panics, Ordering::SeqCst) != panics {
                self.replace_server(None, "a tiny_http thread panicked");
            }
        }
    }

    fn servers(&self) -> Arc<[Arc<tiny_http::Server>]> {
        Arc::clone(&self.servers.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Builds a fresh `Server` on a clone of our listener and keeps draining the old one.
    /// `dead` is the server whose `recv` reported the error; `None` (a panic, which does not
    /// say whose) means the current one. Restarts less than 2 s apart wait longer each time,
    /// up to 250 ms, and only every 20th of them is logged, so exhausted descriptors cost a
    /// few attempts a second and recovery takes well under a second once they are free.
    fn replace_server(&self, dead: Option<&Arc<tiny_http::Server>>, why: &str) {
        if self.stopping.load(Ordering::SeqCst) {
            return; // the stop itself ends the accept thread
        }
        let wait = {
            let mut streak = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            let (last, n) = *streak;
            let n = if last.elapsed() < Duration::from_secs(2) {
                n + 1
            } else {
                0
            };
            *streak = (Instant::now(), n);
            if n % 20 == 0 {
                log::error!(target: self.name, "accept thread stopped ({why}); restarting it (restarts in a row: {})", n + 1);
            }
            Duration::from_millis(25 << n.min(4)).min(RESTART_WAIT) * u32::from(n > 0)
        };
        thread::sleep(wait);
        let fresh = loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            match new_server(&self.listener) {
                Ok(server) => break server,
                Err(e) => {
                    log::debug!(target: self.name, "cannot restart accept thread yet: {e}");
                    thread::sleep(RESTART_WAIT);
                }
            }
        };
        let mut guard = self.servers.write().unwrap_or_else(|p| p.into_inner());
        if dead.is_none_or(|dead| Arc::ptr_eq(&guard[0], dead)) {
            let mut list = vec![fresh];
            list.extend(guard.iter().take(MAX_RETIRED).cloned());
            *guard = Arc::from(list);
            log::info!(target: self.name, "accept thread restarted");
        }
    }

    /// Frees threads for connections tiny_http's pool left waiting (see [`guard::unstarve`]),
    /// until the server stops.
    fn watch(&self) {
        let mut waiting_since = std::collections::HashMap::new();
        while !self.stopping.load(Ordering::SeqCst) {
            thread::sleep(guard::UNSTARVE_EVERY);
            let closed = guard::unstarve(self.port, &mut waiting_since);
            if closed > 0 {
                log::warn!(target: self.name, "connections were waiting for a tiny_http thread: closed {closed} idle keep-alive connection(s) to free threads");
            }
        }
    }

    /// Stops accepting at once: shutting down the listening socket (shared by every clone)
    /// wakes each accept thread with an error and makes new connections fail fast; open
    /// connections are shut down for reading, so no new request arrives on them either.
    fn stop(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            let _ = SockRef::from(&self.listener).shutdown(std::net::Shutdown::Read);
            guard::close_connections(self.port);
        }
    }

    /// The one wrapper every request goes through: limits, request id, the handler (a panic
    /// becomes a 500), then the answer is written now or, when delayed, by the timer.
    fn answer(&self, rq: tiny_http::Request) {
        let started = Instant::now();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let method = rq.method().to_string();
        let target = rq.url().to_string();
        let incoming_id = header(&rq, "X-Request-Id");
        let id = request_id(incoming_id.as_deref());
        let req = Request::new(&method, &target, &id);
        log::debug!(target: self.name, "{method} {} started request_id={id}", req.path);

        let refused = guard::check_request(&rq);
        let close = refused.is_some();
        let response = match refused {
            Some(response) => response,
            None => catch_unwind(AssertUnwindSafe(|| (self.handler)(&req)))
                .unwrap_or_else(|_| Response::error(500, "Internal server error")),
        };
        let peer = rq.remote_addr().copied();
        let answer = Answer {
            rq,
            peer,
            response,
            close,
            started,
            method,
            path: req.path,
            id,
        };
        // An answer behind a delayed one on the same (pipelined) connection waits its turn on
        // the timer too, so no worker blocks on tiny_http's in-order writing.
        if answer.response.delay.is_zero() && !self.delayed_on(peer) {
            self.finish(answer);
        } else {
            self.delay(answer);
        }
    }

    /// Writes the answer, records it and writes the access line.
    fn finish(&self, answer: Answer) {
        let Answer {
            rq,
            response,
            close,
            started,
            method,
            path,
            id,
            ..
        } = answer;
        let (status, route) = (response.status, response.route);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            guard::respond(rq, to_tiny(response, &id, close), close, self.port)
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!(target: self.name, "writing the response failed: {e}"),
            Err(_) => log::error!(target: self.name, "finishing request {id} panicked"),
        }
        let level = if status >= 500 {
            Level::Warn
        } else {
            Level::Info
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.observe(&method, route, status, seconds);
        let ms = seconds * 1000.0;
        log::log!(target: self.name, level, "{method} {path} {status} {ms:.2}ms request_id={id}");
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether an answer for this connection is waiting on the timer (a lock only when any
    /// answer is).
    fn delayed_on(&self, peer: Option<SocketAddr>) -> bool {
        self.delayed.load(Ordering::SeqCst) > 0
            && self.lock_timer().pending.get(&peer).is_some_and(|n| *n > 0)
    }

    fn lock_timer(&self) -> std::sync::MutexGuard<'_, Timer> {
        self.timer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an answer to the timer thread, to be written when due; once that thread has
    /// ended (shutdown), waits and writes it here.
    fn delay(&self, answer: Answer) {
        let due = Instant::now() + answer.response.delay;
        let mut timer = self.lock_timer();
        if timer.ended {
            drop(timer);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            return self.finish(answer);
        }
        timer.seq += 1;
        let seq = timer.seq;
        *timer.pending.entry(answer.peer).or_default() += 1;
        self.delayed.fetch_add(1, Ordering::SeqCst);
        timer.due.push(Reverse((due, seq)));
        timer.answers.insert(seq, answer);
        self.timer_wake.notify_one();
    }

    /// The timer thread: when an answer is due, a short-lived thread writes it. The timer
    /// itself never writes: tiny_http writes the answers of one connection in order, so a
    /// write can wait for an earlier answer that is due later, and must not hold up the
    /// timer that will release it. It ends once the server is stopping and nothing is in
    /// flight.
    fn run_timer(self: &Arc<Self>) {
        let mut timer = self.lock_timer();
        loop {
            let now = Instant::now();
            let wait = match timer.due.peek() {
                Some(&Reverse((at, seq))) if at <= now => {
                    timer.due.pop();
                    if let Some(answer) = timer.answers.remove(&seq) {
                        drop(timer);
                        self.write_later(answer);
                        timer = self.lock_timer();
                    }
                    continue;
                }
                Some(&Reverse((at, _))) => at - now,
                None if self.stopping.load(Ordering::SeqCst)
                    && self.in_flight.load(Ordering::SeqCst) == 0 =>
                {
                    timer.ended = true;
                    return;
                }
                None => POLL,
            };
            timer = match self.timer_wake.wait_timeout(timer, wait) {
                Ok((t, _)) => t,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Writes a due answer on a thread of its own (here if none can be started).
    fn write_later(self: &Arc<Self>, answer: Answer) {
        let slot = Arc::new(Mutex::new(Some(answer)));
        let (shared, taken) = (Arc::clone(self), Arc::clone(&slot));
        let spawned = thread::Builder::new()
            .name(format!("{}-writer", self.name))
            .spawn(move || shared.write_due(&taken));
        if spawned.is_err() {
            log::error!(target: self.name, "cannot start a writer thread; writing on the timer thread");
            self.write_due(&slot);
        }
    }

    fn write_due(&self, slot: &Mutex<Option<Answer>>) {
        let Some(answer) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let peer = answer.peer;
        self.finish(answer);
        let mut timer = self.lock_timer();
        if let Some(n) = timer.pending.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                timer.pending.remove(&peer);
            }
        }
        self.delayed.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request answered by its handler, waiting to be written.
struct Answer {
    rq: tiny_http::Request,
    peer: Option<SocketAddr>,
    response: Response,
    close: bool,
    started: Instant,
    method: String,
    path: String,
    id: String,
}

/// Delayed answers by due time (then arrival), for the timer thread.
#[derive(Default)]
struct Timer {
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    answers: HashMap<u64, Answer>,
    /// Answers handed to the timer and not yet written, per connection.
    pending: HashMap<Option<SocketAddr>, usize>,
    seq: u64,
    ended: bool,
}

fn header(rq: &tiny_http::Request, name: &str) -> Option<String> {
    rq.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

/// Adds the headers every response carries: `Content-Type`, `X-Content-Type-Options`,
/// `X-Request-Id`, and `Connection: close` when the connection must not be reused.
fn to_tiny(response: Response, id: &str, close: bool) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let mut headers = vec![
        ("Content-Type", response.content_type.to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("X-Request-Id", id.to_string()),
    ];
    if close {
        headers.push(("Connection", "close".to_string()));
    }
    headers.extend(response.headers);
    let mut out = tiny_http::Response::from_data(response.body.into_bytes())
        .with_status_code(response.status);
    for (name, value) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(h);
        }
    }
    out
}
