//! The accept loop: one thread takes each new connection and registers it with the workers'
//! epoll set, or refuses it when too many are open. It never dies: an error (EMFILE,
//! ENFILE, ECONNABORTED, …) is logged once per burst and retried after a back-off. At the
//! stop it first takes every connection already queued, so that each one accepted by the
//! kernel is answered, and then closes the listener.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};

use super::conn::Conn;
use super::deadlines::LINGER_BYTES;
use super::encode::encode;
use super::Core;
use crate::http::{request_id, Response};

/// Connections over `--max-connections` still registered, at most: each may ask for
/// `/health`, `/ready` or `/metrics`; beyond these, the accept thread answers 503 without
/// reading.
const OVER_LIMIT_CONNECTIONS: usize = 64;

/// Accepts until the stop (signalled on `stop`, an eventfd), then takes what is queued.
pub(super) fn run(core: Arc<Core>, listener: TcpListener, stop: OwnedFd) {
    let name = core.app.name;
    let mut failures: u64 = 0;
    loop {
        let stopping = core.app.stopping();
        if !stopping {
            let mut fds = [
                PollFd::new(&listener, PollFlags::IN),
                PollFd::new(&stop, PollFlags::IN),
            ];
            let _ = poll(&mut fds, None);
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if failures > 0 {
                        log::warn!(target: name, "accept works again after {failures} failure(s)");
                        failures = 0;
                    }
                    admit(&core, stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if stopping => break,
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
        core.app.log_refusals(0);
        if stopping {
            return; // the listener closes here
        }
    }
}

/// Registers a new connection with the workers, over the limit (for one answer) when
/// `--max-connections` are open, or refuses it when even that is full.
fn admit(core: &Core, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let open = core.open.load(Ordering::SeqCst);
    let over_limit = open >= core.max_connections;
    if over_limit && core.over.load(Ordering::SeqCst) >= OVER_LIMIT_CONNECTIONS {
        return refuse(core, &stream);
    }
    let counter = if over_limit { &core.over } else { &core.open };
    counter.fetch_add(1, Ordering::SeqCst);
    let clock = |at| core.clock(at);
    let registered = core
        .poller
        .register(|token| Conn::new(stream, token, over_limit, clock));
    if let Err(e) = registered {
        // The connection is closed unanswered: nothing of it was read.
        log::error!(target: core.app.name, "cannot register a connection: {e}");
        counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The 503 of a connection refused on the accept thread: it fits in a fresh socket's send
/// buffer, so the write does not block.
fn refuse(core: &Core, stream: &TcpStream) {
    let id = request_id(None);
    let response = Response::error(503, "Too many connections");
    let _ = (&*stream).write_all(&encode(&response, &id, false, true));
    let _ = stream.shutdown(Shutdown::Write);
    // Closing with unread bytes would reset the connection, and a reset can destroy the
    // 503 before the client reads it: take what has arrived, without waiting.
    let (mut drained, mut sink) = (0, [0u8; 4096]);
    while drained < LINGER_BYTES {
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    core.app.metrics.refused();
    log::debug!(target: core.app.name, "refused a connection: 503 request_id={id}");
    core.app.log_refusals(1);
}
