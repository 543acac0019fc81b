//! Our HTTP/1.1 core, the card's model: a blocking accept loop (`accept`) and a pool of
//! workers (`workers`) over one epoll set (`poller`). Each accepted connection is registered
//! one-shot; the worker that gets a ready connection reads what is there into the
//! connection's own buffer, runs the handler for each whole request on its own thread,
//! writes the answers, in order, and re-arms the connection (`conn`). No request is handed
//! between threads, no thread waits on an idle connection, and every wait (a head, an idle
//! keep-alive, an answer the client does not read, a delayed answer) is a deadline of the one
//! timer thread (`timer`). A handler that blocks says so ([`crate::Request::blocking`]), and
//! another worker takes over the epoll set meanwhile.
//!
//! Here: bind, serve and its handle, and the stop. The wire rules are in `wire` (the head),
//! `host` and `encode` (the answer); the handler, access line and drain state in `app`.

mod accept;
mod app;
mod conn;
mod encode;
mod host;
mod poller;
mod timer;
mod wire;
mod workers;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};
use socket2::{Domain, Protocol, Socket, Type};

use crate::http::{Request, Response};
use crate::metrics::Metrics;
use app::App;
use conn::Conn;
use poller::Poller;
use timer::Timer;
use workers::Workers;

/// What a connection waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Interest {
    /// The next bytes of a request (or the end of a lingering connection).
    Read,
    /// Room in the socket's send buffer for the rest of an answer (nothing else is read).
    Write,
    /// Anything: a connection armed so is handled at once (the stop wakes idle ones).
    Any,
}

/// A connection's name in the epoll set: its slot (low 32 bits) and the slot's generation.
pub(super) type Token = u64;

pub use conn::{HEAD_TIMEOUT, IDLE_TIMEOUT, WRITE_TIMEOUT};
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

/// The workers that never block, by default: the CPUs this process may use (a container's
/// CPU limit included).
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a server is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Open connections at most; beyond, a new one gets 503 (`--max-connections`).
    pub max_connections: usize,
    /// Workers that never block (`--workers`).
    pub workers: usize,
    /// Handlers in a blocking section at once, at most, each on a worker of its own: the
    /// workers beyond `workers` are capped at this.
    pub max_blocked: usize,
}

/// `max_connections`, with [`default_workers`] and up to 64 blocked handlers.
impl From<usize> for Options {
    fn from(max_connections: usize) -> Options {
        Options {
            max_connections,
            workers: default_workers(),
            max_blocked: 64,
        }
    }
}

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

/// Serves `handler` on `listener` (from [`bind`]) with `options` (or just
/// `--max-connections`); logs `listening on http://…` first. `name` is the service name of
/// every log line; every answer is counted in `metrics`.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    options: impl Into<Options>,
    metrics: Arc<Metrics>,
    handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
) -> io::Result<ServerHandle> {
    let options = options.into();
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let max_connections = options.max_connections.max(1);
    let accept_stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let core = Arc::new(Core {
        poller: Poller::new()?,
        app: App {
            name,
            handler: Box::new(handler),
            metrics,
            stopping: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_connections,
            refusals: Mutex::default(),
        },
        workers: Workers::new(options.workers, options.max_blocked),
        timer: Timer::default(),
        epoch: Instant::now(),
        max_connections,
        open: AtomicUsize::new(0),
        over: AtomicUsize::new(0),
        stopped_at: OnceLock::new(),
        accept_stop: accept_stop.try_clone()?,
        accepting: AtomicBool::new(true),
        closed: (Mutex::new(()), Condvar::new()),
    });
    workers::start(&core)?;
    let timing = Arc::clone(&core);
    thread::Builder::new()
        .name(format!("{name}-timer"))
        .spawn(move || timer::run(timing))?;
    let accepting = Arc::clone(&core);
    thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || {
            accept::run(Arc::clone(&accepting), listener, accept_stop);
            accepting.accepting.store(false, Ordering::SeqCst);
            accepting.finish_if_done();
        })?;
    log::info!(target: name, "listening on http://{addr}");
    Ok(ServerHandle { addr, core })
}

/// A running server: its bound address and the way to stop it. Dropping it stops accepting
/// without waiting for in-flight requests; its threads end once its connections have.
pub struct ServerHandle {
    addr: SocketAddr,
    core: Arc<Core>,
}

/// What a stop left unanswered when its grace period ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Requests read whose answer was not written.
    pub unanswered: usize,
    /// Connections closed with part of a request read.
    pub cut_off: usize,
}

impl Stopped {
    /// Requests lost, whole or in part: 0 for a clean stop.
    pub fn lost(&self) -> usize {
        self.unanswered + self.cut_off
    }
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
        self.core.app.draining.store(true, Ordering::SeqCst);
    }

    /// Stops accepting (after taking the connections already queued), and closes idle
    /// connections; [`ServerHandle::shutdown`] does this too.
    pub fn stop_accepting(&self) {
        self.core.begin_stop();
    }

    /// Stops, lets every request already accepted finish (a connection that has sent
    /// nothing yet gets a second to begin its request), and waits at most `grace` for every
    /// connection to close. Returns what was still unanswered when it gave up.
    pub fn shutdown(self, grace: Duration) -> Stopped {
        self.shutdown_unless(grace, || false)
    }

    /// [`ServerHandle::shutdown`], whose grace period ends as soon as `now` says so (it is
    /// asked every 50 ms at most): a second signal.
    pub fn shutdown_unless(self, grace: Duration, mut now: impl FnMut() -> bool) -> Stopped {
        let core = &self.core;
        core.begin_stop();
        let deadline = Instant::now() + grace;
        let (lock, closed) = &core.closed;
        let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        while core.poller.table().open() > 0 && !now() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = match closed.wait_timeout(guard, left.min(Duration::from_millis(50))) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(guard);
        let cut_off = {
            let table = core.poller.table();
            let cut_off = table.conns().filter(|conn| conn.unread()).count();
            for conn in table.conns() {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
            cut_off
        };
        let unanswered = core.app.in_flight.load(Ordering::SeqCst);
        core.app.log_refusals(0);
        core.finish();
        Stopped {
            unanswered,
            cut_off,
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.core.begin_stop();
    }
}

/// One server: the epoll set and its connections, the workers, the timer, and what they
/// serve.
pub(crate) struct Core {
    poller: Poller,
    app: App,
    workers: Workers,
    timer: Timer,
    /// The timer's clock starts here.
    epoch: Instant,
    max_connections: usize,
    /// Connections open within `max_connections`, and over it.
    open: AtomicUsize,
    over: AtomicUsize,
    stopped_at: OnceLock<Instant>,
    /// Wakes the accept loop at the stop.
    accept_stop: OwnedFd,
    /// The accept loop still runs.
    accepting: AtomicBool,
    /// Signalled when a connection closes during a stop.
    closed: (Mutex<()>, Condvar),
}

impl Core {
    /// `at` on the timer's clock, in milliseconds (never 0, which means no deadline).
    fn clock(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
    }

    /// When the stop began, once it has.
    fn stopped_at(&self) -> Option<Instant> {
        self.stopped_at.get().copied()
    }

    fn begin_stop(&self) {
        if self.stopped_at.set(Instant::now()).is_err() {
            return;
        }
        self.app.stopping.store(true, Ordering::SeqCst);
        let _ = rustix::io::write(&self.accept_stop, &1u64.to_ne_bytes());
        self.timer.nudge(false);
    }

    /// Closes a connection for good; during a stop, the last one ends the server.
    fn close(&self, conn: &Conn) {
        let counter = if conn.over_limit {
            &self.over
        } else {
            &self.open
        };
        counter.fetch_sub(1, Ordering::SeqCst);
        let left = self.poller.forget(conn);
        if self.app.stopping() {
            self.closed.1.notify_all();
            if left == 0 {
                self.finish_if_done();
            }
        }
    }

    /// Ends the workers and the timer once the server stops, accepts no more and has no
    /// connection left.
    fn finish_if_done(&self) {
        if self.app.stopping()
            && !self.accepting.load(Ordering::SeqCst)
            && self.poller.table().open() == 0
        {
            self.finish();
        }
    }

    fn finish(&self) {
        self.poller.stop_all();
        self.timer.nudge(true);
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
