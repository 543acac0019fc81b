//! Our HTTP/1.1 core: a listener we bind ([`bind`]), one accept loop, and one thread per
//! connection that reads each request, parses it with `httparse`, runs the handler and
//! writes the answer, in order ([`serve`]). The accept thread gives each new connection to
//! an idle connection thread or a new one (`pool`); after that, no request is ever handed
//! between threads, so a connection never waits behind another and a client that never
//! reads blocks only its own thread.
//!
//! Here: bind, serve and its handle, the accept loop with its limit, and the stop. The wire
//! rules are in `wire` (the head), `host` and `encode` (the answer); one connection's
//! loop in `conn`, its socket's timed reads and writes in `stream`; the threads in
//! `pool`.

mod conn;
mod encode;
mod host;
mod pool;
mod stream;
mod wire;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::http::{request_id, Request, Response};
use crate::metrics::Metrics;
use conn::App;
use pool::Pool;

pub use stream::{HEAD_TIMEOUT, IDLE_TIMEOUT, WRITE_TIMEOUT};
pub use wire::{MAX_BODY_BYTES, MAX_HEADERS, MAX_HEADER_BYTES, MAX_TARGET_BYTES};

/// Descriptors kept back from `--max-connections`' default for the process itself (or a
/// quarter of the limit, if that is less).
const RESERVED_FDS: u64 = 64;
/// The default `--max-connections` never exceeds this, whatever the descriptor limit.
pub const MAX_CONNECTIONS_CAP: usize = 10_000;

/// The limits as `--help` shows them, from the constants that enforce them.
pub fn limits_help() -> String {
    format!(
        "Limits: request target (path and query) {} KiB → 414; header fields {} KiB or {} → \
         431; request body {} KiB (bodies are not used) → 413 and close. Timeouts: request \
         head {} s, idle keep-alive {} s, write {} s.",
        MAX_TARGET_BYTES / 1024,
        MAX_HEADER_BYTES / 1024,
        MAX_HEADERS,
        MAX_BODY_BYTES / 1024,
        HEAD_TIMEOUT.as_secs(),
        IDLE_TIMEOUT.as_secs(),
        WRITE_TIMEOUT.as_secs(),
    )
}

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
        listener,
        max_connections: max_connections.max(1),
        open: Mutex::new(Open::default()),
        all_closed: Condvar::new(),
        pool: Arc::new(Pool::new(format!("{name}-conn"))),
        app: App {
            name,
            handler: Box::new(handler),
            metrics,
            stopping: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_connections: max_connections.max(1),
            refusals: Mutex::default(),
        },
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

    /// Starts the drain before a stop: requests see [`Request::draining`] (readiness fails)
    /// and every answer closes its connection, while new connections are still accepted.
    pub fn drain(&self) {
        self.shared.app.draining.store(true, Ordering::SeqCst);
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
        let mut open = self.shared.lock_open();
        while !open.streams.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            open = match self.shared.all_closed.wait_timeout(open, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(open);
        self.shared.app.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// One open connection: its id in [`Open`], the socket (shared with the stopper), and
/// whether it is over the limit.
type Conn = (u64, Arc<TcpStream>, bool);

/// The open connections, so that a stop can end them and the limit can count them.
#[derive(Default)]
struct Open {
    next_id: u64,
    streams: HashMap<u64, Arc<TcpStream>>,
    /// How many of them are over the limit.
    over: usize,
}

/// One server: the listener, its open connections, its threads and what they serve.
struct Shared {
    listener: TcpListener,
    max_connections: usize,
    open: Mutex<Open>,
    /// Signalled whenever a connection closes (shutdown waits on it).
    all_closed: Condvar,
    pool: Arc<Pool<Conn>>,
    app: App,
}

/// Connections over `--max-connections` still read by a thread of their own, at most: each
/// may ask for `/health` (liveness must be answered when the service is full); beyond
/// these, the accept thread answers 503 without reading.
const OVER_LIMIT_THREADS: usize = 8;

impl Shared {
    fn lock_open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting (shutting the listener down wakes the blocked `accept` and refuses
    /// new connections), shuts every open connection down for reading (an idle one ends at
    /// once; a busy one still writes its answer, then closes) and ends idle threads.
    fn stop(&self) {
        if self.app.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Read);
        for stream in self.lock_open().streams.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        self.pool.stop();
    }

    /// Accepts until stopped. It never dies: an error (EMFILE, ENFILE, ECONNABORTED, …) is
    /// logged once per burst and retried after a back-off that grows from 10 ms to 200 ms.
    fn accept_loop(self: Arc<Self>) {
        let name = self.app.name;
        let mut failures: u64 = 0;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) if self.app.stopping() => {
                    drop(stream);
                    self.app.log_refusals(0);
                    return;
                }
                Ok((stream, _)) => {
                    if failures > 0 {
                        log::warn!(target: name, "accept works again after {failures} failure(s)");
                        failures = 0;
                    }
                    self.admit(stream);
                    self.app.log_refusals(0);
                }
                Err(_) if self.app.stopping() => return self.app.log_refusals(0),
                Err(e) => {
                    if failures == 0 {
                        log::error!(target: name, "accept failed: {e}; retrying");
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
            let mut open = self.lock_open();
            let over_limit = open.streams.len() - open.over >= self.max_connections;
            if over_limit && open.over >= OVER_LIMIT_THREADS {
                drop(open);
                self.refuse(&stream);
                return;
            }
            open.over += usize::from(over_limit);
            let id = open.next_id;
            open.next_id += 1;
            let stream = Arc::new(stream);
            open.streams.insert(id, Arc::clone(&stream));
            if self.app.stopping() {
                // Accepted just as the stop began, after it shut the open ones: same fate.
                let _ = stream.shutdown(Shutdown::Read);
            }
            (id, stream, over_limit)
        };
        let (id, over_limit) = (conn.0, conn.2);
        let shared = Arc::clone(self);
        if let Err(e) = self.pool.run(conn, move |conn| shared.connection(conn)) {
            log::error!(target: self.app.name, "cannot start a connection thread: {e}");
            let mut open = self.lock_open();
            if let Some(stream) = open.streams.remove(&id) {
                open.over = open.over.saturating_sub(usize::from(over_limit));
                drop(open);
                self.refuse(&stream);
            }
        }
    }

    /// One connection on its thread: served to its end, lingered over, then forgotten.
    fn connection(&self, (id, stream, over_limit): Conn) {
        if catch_unwind(AssertUnwindSafe(|| self.app.serve(&stream, over_limit))).is_err() {
            log::error!(target: self.app.name, "connection thread panicked; connection closed");
        }
        stream::linger(&stream);
        let mut open = self.lock_open();
        open.streams.remove(&id);
        open.over -= usize::from(over_limit);
        drop(stream);
        self.all_closed.notify_all();
    }

    /// The answer to a connection over the limit, written on the accept thread: it fits in
    /// a fresh socket's send buffer, so the write does not block.
    fn refuse(&self, stream: &TcpStream) {
        let _ = stream.set_nonblocking(true);
        let id = request_id(None);
        let response = Response::error(503, "Too many connections");
        let _ = (&*stream).write_all(&encode::encode(&response, &id, false, true));
        let _ = stream.shutdown(Shutdown::Write);
        // Closing with unread bytes would reset the connection, and a reset can destroy the
        // 503 before the client reads it: take what has arrived, without waiting (this is
        // the accept thread).
        let (mut drained, mut sink) = (0, [0u8; 4096]);
        while drained < stream::LINGER_BYTES {
            match (&*stream).read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        self.app.metrics.refused();
        log::debug!(target: self.app.name, "refused a connection: 503 request_id={id}");
        self.app.log_refusals(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_has_no_timeout() {
        let listener = bind("127.0.0.1:0").expect("bind");
        let sock = socket2::SockRef::from(&listener);
        assert_eq!(sock.read_timeout().ok(), Some(None));
        assert_eq!(sock.write_timeout().ok(), Some(None));
    }
}
