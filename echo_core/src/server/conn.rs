//! One connection's life on its own thread: read a request head (and any small body), run
//! the handler, write the answer and its access line, and go on while the connection is
//! kept alive; on a broken request, answer it and close; at the end, linger so that closing
//! cannot reset the last answer away. Pipelined requests are answered in order, and a
//! client that never reads blocks only this thread, until the write timeout ends it.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::Level;

use super::wire::{encode, parse_head, Head, Rejection};
use super::HandlerFn;
use crate::http::{request_id, Request, Response};
use crate::metrics::Metrics;

/// The whole request head must arrive within this, from its first byte (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no new request for this long is closed. Longer than a
/// pooling client keeps an idle connection (B's ureq: 15 s), so such a client never reuses
/// a connection just as we close it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write blocked this long (a client that stopped reading) fails and the connection ends.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Before closing a connection, unread input is drained for at most this long (or
/// [`LINGER_BYTES`]): closing with input unread sends a reset, which can destroy our last
/// answer (a 400, say) before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
pub(super) const LINGER_BYTES: usize = 64 * 1024;

/// What every connection of one server shares: its name in the log, the handler, the
/// metrics, and the state of a stop.
pub(super) struct App {
    pub(super) name: &'static str,
    pub(super) handler: Box<HandlerFn>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stopping: AtomicBool,
    /// Requests read and not yet answered.
    pub(super) in_flight: AtomicUsize,
}

impl App {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Reads, answers and writes requests in order until the client closes, a timeout
    /// passes, a request asks to close, or a bad request ends the connection.
    pub(super) fn serve(&self, stream: &TcpStream) {
        let mut buf = Vec::new();
        let mut reader = Reader::new(stream);
        loop {
            let head = match reader.head(&mut buf) {
                Ok(Some(head)) => head,
                Ok(None) => return, // closed, idle too long, or stopping
                Err(rejection) => return self.reject(stream, &rejection),
            };
            let started = Instant::now();
            let keep_alive = match read_body(stream, &mut reader, &mut buf, &head) {
                Ok(()) => head.keep_alive,
                Err(rejection) => return self.reject(stream, &rejection),
            };
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let keep_alive = self.answer(stream, &head, keep_alive, started);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !keep_alive {
                return;
            }
        }
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

    /// Answers a request that breaks the rules with its 4xx/5xx (the connection closes
    /// after it); a [`Rejection::Close`] gets nothing.
    fn reject(&self, stream: &TcpStream, rejection: &Rejection) {
        let Rejection::Answer {
            status,
            message,
            method,
            path,
        } = rejection
        else {
            return;
        };
        let started = Instant::now();
        let id = request_id(None);
        let response = Response::error(*status, message);
        let _ = (&*stream).write_all(&encode(&response, &id, false, true));
        self.log_access(method, path, &response, &id, started);
    }

    /// The access line (`METHOD PATH STATUS LATENCYms request_id=…`, WARN for 5xx) and the
    /// request metrics. The logger escapes anything a client put in the method or path.
    pub(super) fn log_access(
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

/// Reads and drops the request's body (at most [`super::MAX_BODY_BYTES`], checked with the
/// head), after `100 Continue` if the client waits for it.
fn read_body(
    stream: &TcpStream,
    reader: &mut Reader<'_>,
    buf: &mut Vec<u8>,
    head: &Head,
) -> Result<(), Rejection> {
    if head.content_length == 0 {
        return Ok(());
    }
    if head.expect_continue && buf.len() < head.content_length {
        (&*stream)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| Rejection::Close)?;
    }
    reader.body(buf, head.content_length)
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
pub(super) fn linger(stream: &TcpStream) {
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
    fn head(&mut self, buf: &mut Vec<u8>) -> Result<Option<Head>, Rejection> {
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
                    Err(Rejection::Close)
                };
            }
            deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
        }
    }

    /// Takes `len` body bytes off `buf`, reading more within [`HEAD_TIMEOUT`] if needed.
    fn body(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), Rejection> {
        let deadline = Instant::now() + HEAD_TIMEOUT;
        while buf.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(buf, left) {
                return Err(Rejection::Close);
            }
        }
        buf.drain(..len);
        Ok(())
    }
}
