//! One connection's life on its own thread: read a request head (and any small body), run
//! the handler, write the answer and its access line, and go on while the connection is
//! kept alive; on a broken request, answer it and close. Pipelined requests are answered in
//! order, and a client that never reads blocks only this thread, until the write timeout
//! ends it (the socket's reads and writes within their timeouts are `stream`'s).

use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::kv::{Key, Source, ToValue, Value, VisitSource};
use log::Level;

use super::encode::encode;
use super::stream::{Reader, Writer, HEAD_TIMEOUT};
use super::wire::{Head, Rejection};
use super::HandlerFn;
use crate::http::{parse_budget, request_id, Request, Response};
use crate::metrics::Metrics;
use crate::trace::Trace;

/// What every connection of one server shares: its name in the log, the handler, the
/// metrics, and the state of a stop.
pub(super) struct App {
    pub(super) name: &'static str,
    pub(super) handler: Box<HandlerFn>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stopping: AtomicBool,
    /// Draining before the stop: every answer closes its connection, `/ready` fails.
    pub(super) draining: AtomicBool,
    /// Requests read and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// `--max-connections`, named in the refusals' log line.
    pub(super) max_connections: usize,
    /// Refusals not logged yet, and when the last refusal line was written.
    pub(super) refusals: Mutex<Refusals>,
}

/// Connections refused over the limit are counted one by one, but logged at most once per
/// [`REFUSAL_LOG_EVERY`] with the count since the last line: a flood must not flood the log.
#[derive(Default)]
pub(super) struct Refusals {
    unlogged: u64,
    logged_at: Option<Instant>,
}

/// The least time between two log lines about refused connections.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);
/// A connection over the limit has this long to send its request (a health check sends at
/// once; a silent one must not hold an over-limit thread for long).
const OVER_LIMIT_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

impl App {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Reads, answers and writes requests in order until the client closes, a timeout
    /// passes, a request asks to close, or a bad request ends the connection. A connection
    /// `over_limit` (beyond `--max-connections`) gets one answer: its `/health` if that is
    /// what it asks (liveness must not fail because the service is busy), else the 503 of
    /// the limit; and it has [`OVER_LIMIT_HEAD_TIMEOUT`] to send its request.
    pub(super) fn serve(&self, stream: &TcpStream, over_limit: bool) {
        let mut buf = Vec::new();
        let first_wait = if over_limit {
            OVER_LIMIT_HEAD_TIMEOUT
        } else {
            HEAD_TIMEOUT
        };
        let mut reader = Reader::new(stream, first_wait);
        let mut writer = Writer::new(stream);
        loop {
            let head = match reader.head(&mut buf) {
                Ok(Some(head)) => head,
                // Over the limit: whatever came (or did not), the answer is the limit's.
                Ok(None) | Err(Rejection::Close) if over_limit => return self.refuse(&mut writer),
                Ok(None) => return, // closed, idle too long, or stopping
                Err(rejection) => return self.reject(&mut writer, &rejection),
            };
            let started = Instant::now();
            let body = match read_body(&mut writer, &mut reader, &mut buf, &head) {
                Ok(body) => body,
                Err(rejection) => return self.reject(&mut writer, &rejection),
            };
            let keep_alive = head.keep_alive;
            if over_limit && head.target.split('?').next() != Some("/health") {
                return self.refuse(&mut writer);
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let keep_alive =
                self.answer(&mut writer, head, body, keep_alive && !over_limit, started);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !keep_alive {
                return;
            }
        }
    }

    /// Runs the handler (a panic becomes a 500), waits out any delay on this thread, writes
    /// the answer and its access line. Returns whether the connection stays open.
    fn answer(
        &self,
        writer: &mut Writer<'_>,
        head: Head,
        body: Vec<u8>,
        keep_alive: bool,
        started: Instant,
    ) -> bool {
        let id = request_id(head.request_id.as_deref());
        let mut req = Request::new(&head.method, &head.target, &id);
        req.trace = Trace::from_headers(head.traceparent.as_deref(), head.tracestate.as_deref());
        req.budget = head.timeout_ms.as_deref().and_then(parse_budget);
        req.draining = self.draining();
        req.body = body;
        req.content_type = head.content_type;
        log::debug!(target: self.name, "{} {} started request_id={id}", req.method, req.path);
        let response = catch_unwind(AssertUnwindSafe(|| (self.handler)(&req)))
            .unwrap_or_else(|_| Response::error(500, "Internal server error"));
        if !response.delay.is_zero() {
            thread::sleep(response.delay);
        }
        let keep_alive = keep_alive && !self.stopping() && !self.draining();
        let mut response = response;
        if keep_alive && head.http10 {
            // An HTTP/1.0 client keeps the connection only when told so.
            response
                .headers
                .push(("Connection", "keep-alive".to_string()));
        }
        let bytes = encode(&response, &id, req.method == "HEAD", !keep_alive);
        let written = writer.write(&bytes);
        if let Err(e) = &written {
            log::debug!(target: self.name, "writing the answer failed: {e} request_id={id}");
        }
        self.log_access(&req.method, &req.path, &response, &id, &req.trace, started);
        keep_alive && written.is_ok()
    }

    /// The 503 of a connection over the limit, counted one by one and logged at most once
    /// per [`REFUSAL_LOG_EVERY`].
    fn refuse(&self, writer: &mut Writer<'_>) {
        let id = request_id(None);
        let response = Response::error(503, "Too many connections");
        let _ = writer.write(&encode(&response, &id, false, true));
        self.metrics.refused();
        log::debug!(target: self.name, "refused a connection: 503 request_id={id}");
        self.log_refusals(1);
    }

    /// Counts `new` refusals and writes the line about them if it is due (a refusal now, or
    /// any later accept, writes the ones since the last line; the stop writes the rest).
    pub(super) fn log_refusals(&self, new: u64) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.unlogged += new;
        let due = refusals
            .logged_at
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY || self.stopping());
        if refusals.unlogged > 0 && due {
            log::warn!(target: self.name, "refused {} connection(s) with 503 since the last such line: {} connections open (--max-connections)", refusals.unlogged, self.max_connections);
            refusals.unlogged = 0;
            refusals.logged_at = Some(Instant::now());
        }
    }

    /// Answers a request that breaks the rules with its 4xx/5xx (the connection closes
    /// after it); a [`Rejection::Close`] gets nothing.
    fn reject(&self, writer: &mut Writer<'_>, rejection: &Rejection) {
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
        let _ = writer.write(&encode(&response, &id, false, true));
        self.log_access(method, path, &response, &id, &Trace::start(), started);
    }

    /// The access line (`METHOD PATH STATUS LATENCYms request_id=…`, WARN for 5xx) and the
    /// request metrics. The logger escapes anything a client put in the method or path.
    pub(super) fn log_access(
        &self,
        method: &str,
        path: &str,
        response: &Response,
        id: &str,
        trace: &Trace,
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
        let fields = AccessFields {
            line: [
                ("method", Value::from(method)),
                ("path", Value::from(path)),
                ("status", Value::from(status)),
                ("latency_ms", Value::from(ms)),
                ("request_id", Value::from(id)),
            ],
            trace,
            handler: &response.log_fields,
        };
        crate::logging::event(
            self.name,
            level,
            format_args!("{method} {path} {status} {ms:.2}ms"),
            &fields,
        );
    }
}

/// Reads the request's body (at most [`super::MAX_BODY_BYTES`], checked with the head),
/// after `100 Continue` if the client waits for it.
fn read_body(
    writer: &mut Writer<'_>,
    reader: &mut Reader<'_>,
    buf: &mut Vec<u8>,
    head: &Head,
) -> Result<Vec<u8>, Rejection> {
    if head.content_length == 0 {
        return Ok(Vec::new());
    }
    if head.expect_continue && buf.len() < head.content_length {
        writer
            .write(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| Rejection::Close)?;
    }
    reader.body(buf, head.content_length)
}

/// The fields of an access line: the request's own, then the handler's (such as the
/// replica of A that answered B).
struct AccessFields<'a> {
    line: [(&'static str, Value<'a>); 5],
    trace: &'a Trace,
    handler: &'a [(&'static str, String)],
}

impl Source for AccessFields<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), log::kv::Error> {
        for (key, value) in &self.line {
            visitor.visit_pair(Key::from_str(key), value.to_value())?;
        }
        let trace = self.trace;
        visitor.visit_pair(
            Key::from_str("trace_id"),
            Value::from(trace.trace_id.as_str()),
        )?;
        visitor.visit_pair(
            Key::from_str("span_id"),
            Value::from(trace.span_id.as_str()),
        )?;
        for (key, value) in self.handler {
            visitor.visit_pair(Key::from_str(key), Value::from(value.as_str()))?;
        }
        Ok(())
    }
}
