//! What every connection of one server shares: the handler and how it is run (a panic
//! becomes a 500), the access line of each answer, the metrics, and the state of a drain
//! and a stop. Socket work is `conn`'s; this part touches no socket.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::kv::{Key, Source, ToValue, Value, VisitSource};
use log::Level;

use super::encode::encode;
use super::wire::{Head, Rejection};
use super::HandlerFn;
use crate::http::{parse_budget, request_id, Blocking, Request, Response, Worker};
use crate::metrics::Metrics;
use crate::trace::Trace;

/// The handler, the log and the metrics of one server, and its drain and stop.
pub(super) struct App {
    pub(super) name: &'static str,
    pub(super) handler: Box<HandlerFn>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stopping: AtomicBool,
    /// Draining before the stop: every answer closes its connection, `/ready` fails.
    pub(super) draining: AtomicBool,
    /// Requests read and not yet answered (their answer not yet written, or failed).
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

/// The paths a connection over `--max-connections` may still ask for: liveness, readiness
/// and the metrics must not fail because the service is full.
const OVER_LIMIT_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// An answer made and not yet written: its bytes are in the connection's buffer, its access
/// line waits until they are out (or failed), so the latency covers the write.
pub(super) struct Answered {
    method: String,
    path: String,
    response: Response,
    id: String,
    trace: Trace,
    started: Instant,
    /// The limit's 503: counted and logged by [`App::log_refusals`], with no access line
    /// of its own (a flood must not flood the log).
    refused: bool,
}

impl Answered {
    /// The delay the handler asked for before this answer goes out.
    pub(super) fn delay(&self) -> Duration {
        self.response.delay
    }
}

impl App {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(super) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs the handler for one whole request (a panic becomes a 500) and appends the
    /// answer's bytes to `out`. A connection `over_limit` gets an answer only to
    /// [`OVER_LIMIT_PATHS`], else the limit's 503. Returns the answer (its access line
    /// is due once written) and whether the connection stays open after it.
    pub(super) fn answer(
        &self,
        head: Head,
        body: &[u8],
        over_limit: bool,
        worker: &Arc<dyn Blocking>,
        out: &mut Vec<u8>,
    ) -> (Answered, bool) {
        let started = Instant::now();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let id = request_id(head.request_id.as_deref());
        let mut req = Request::new(&head.method, &head.target, &id);
        req.trace = Trace::from_headers(head.traceparent.as_deref(), head.tracestate.as_deref());
        req.budget = head.timeout_ms.as_deref().and_then(parse_budget);
        req.draining = self.draining();
        req.body = body.to_vec();
        req.content_type = head.content_type;
        req.worker = Worker(Some(Arc::clone(worker)));
        log::debug!(target: self.name, "{} {} started request_id={id}", req.method, req.path);
        let refused = over_limit && !OVER_LIMIT_PATHS.contains(&req.path.as_str());
        let mut response = if refused {
            self.refused()
        } else {
            catch_unwind(AssertUnwindSafe(|| (self.handler)(&req)))
                .unwrap_or_else(|_| Response::error(500, "Internal server error"))
        };
        let keep_alive = head.keep_alive && !over_limit && !self.stopping() && !self.draining();
        if keep_alive && head.http10 {
            // An HTTP/1.0 client keeps the connection only when told so.
            let value = "keep-alive".to_string();
            response.headers.push(("Connection", value));
        }
        out.extend_from_slice(&encode(&response, &id, req.method == "HEAD", !keep_alive));
        let answered = Answered {
            method: req.method,
            path: req.path,
            response,
            id,
            trace: req.trace,
            started,
            refused,
        };
        (answered, keep_alive)
    }

    /// Answers a request that breaks the rules with its 4xx/5xx (the connection closes
    /// after it). A connection over the limit gets the limit's 503 instead.
    pub(super) fn reject(
        &self,
        rejection: Rejection,
        over_limit: bool,
        out: &mut Vec<u8>,
    ) -> Answered {
        if over_limit {
            return self.refuse(out);
        }
        let Rejection {
            status,
            message,
            method,
            path,
        } = rejection;
        self.closing_answer(Response::error(status, message), method, path, false, out)
    }

    /// The limit's 503 to a connection over `--max-connections` that asked for nothing it
    /// may have (or nothing at all, in time); the connection closes after it.
    pub(super) fn refuse(&self, out: &mut Vec<u8>) -> Answered {
        let (method, path) = ("-".to_string(), "-".to_string());
        self.closing_answer(self.refused(), method, path, true, out)
    }

    fn closing_answer(
        &self,
        response: Response,
        method: String,
        path: String,
        refused: bool,
        out: &mut Vec<u8>,
    ) -> Answered {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let id = request_id(None);
        out.extend_from_slice(&encode(&response, &id, false, true));
        Answered {
            method,
            path,
            response,
            id,
            trace: Trace::start(),
            started: Instant::now(),
            refused,
        }
    }

    /// The 503 of a connection over `--max-connections`, counted.
    fn refused(&self) -> Response {
        self.metrics.refused();
        self.log_refusals(1);
        Response::error(503, "Too many connections")
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

    /// The access line of an answer now written (or failed): `METHOD PATH STATUS
    /// LATENCYms request_id=…`, WARN for 5xx, and the request metrics. The logger escapes
    /// anything a client put in the method or path.
    pub(super) fn log_access(&self, answered: Answered) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let Answered {
            method,
            path,
            response,
            id,
            trace,
            started,
            refused,
        } = &answered;
        if *refused {
            log::debug!(target: self.name, "refused a connection: 503 request_id={id}");
            return;
        }
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
                ("method", Value::from(method.as_str())),
                ("path", Value::from(path.as_str())),
                ("status", Value::from(status)),
                ("latency_ms", Value::from(ms)),
                ("request_id", Value::from(id.as_str())),
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
