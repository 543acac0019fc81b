//! The HTTP model handlers see, independent of the server crate, so a handler is a plain
//! function from [`Request`] to [`Response`] that unit tests call without a socket.
//! Also the rules of the API both services share: routing with 404/405, strict query
//! decoding, the form encoding B uses for A's URL, request ids and the JSON error body.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::trace::Trace;

/// A request as a handler sees it: the method, the raw path and query, and the request id
/// already chosen by the request-id rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (`GET`, `HEAD`, …).
    pub method: String,
    /// The path as sent, still percent-encoded, without the query.
    pub path: String,
    /// The query as sent (empty when there is none), decoded on demand by [`Request::param`].
    pub query: String,
    /// The id this request is logged and answered with.
    pub request_id: String,
    /// The trace it belongs to, and this service's span in it.
    pub trace: Trace,
    /// How long the caller will wait for the answer, from when the request was read (the
    /// [`TIMEOUT_HEADER`] it sent); `None` when it did not say.
    pub budget: Option<Duration>,
    /// The service is draining before it stops: readiness fails, every answer closes its
    /// connection.
    pub draining: bool,
    /// The body as sent (at most the server's 1 KiB limit; empty when there is none).
    pub body: Vec<u8>,
    /// The `Content-Type` the client sent with the body, as sent.
    pub content_type: Option<String>,
    /// The server's worker running this handler, told of a wait by [`Request::blocking`].
    pub(crate) worker: Worker,
}

/// What a handler's wait tells the worker that runs it: before a wait (a call to another
/// service) the worker makes sure another one serves the other connections; after it, the
/// pool may shrink again.
pub trait Blocking: Send + Sync {
    /// A wait begins on this worker.
    fn enter(&self);
    /// The wait is over.
    fn leave(&self);
}

/// The worker behind a request, if a server runs it (a unit test's request has none).
#[derive(Clone, Default)]
pub(crate) struct Worker(pub(crate) Option<Arc<dyn Blocking>>);

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Worker" } else { "None" })
    }
}

/// Requests are equal whatever worker runs them.
impl PartialEq for Worker {
    fn eq(&self, _: &Worker) -> bool {
        true
    }
}

impl Eq for Worker {}

/// Ends the blocking section when the wait ends, a panic included.
struct Leave<'a>(&'a dyn Blocking);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The header in which a caller says how many milliseconds it will wait for the answer:
/// what is left of its deadline when it sends the request (as gRPC's `grpc-timeout` and
/// Envoy's `x-envoy-expected-rq-timeout-ms` do). B sends it to A; A refuses at once work it
/// cannot finish in time.
pub const TIMEOUT_HEADER: &str = "X-Request-Timeout-Ms";

/// The header a service adds to a 504 that refused work because the caller's
/// [`TIMEOUT_HEADER`] was too short, so the caller can tell it from any other 504.
pub const DEADLINE_EXCEEDED_HEADER: &str = "X-Deadline-Exceeded";

/// A [`TIMEOUT_HEADER`] value: a whole number of milliseconds (at most 9 digits); anything
/// else is ignored, as if the header were absent.
pub fn parse_budget(value: &str) -> Option<Duration> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_millis)
}

impl Request {
    /// Splits a request target (`/echo?msg=hi`) into path and query.
    pub fn new(method: &str, target: &str, request_id: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            request_id: request_id.to_string(),
            trace: Trace::start(),
            budget: None,
            draining: false,
            body: Vec::new(),
            content_type: None,
            worker: Worker::default(),
        }
    }

    /// Runs `wait` (a call to another service, anything that sleeps) as a blocking section:
    /// the server's other connections never wait behind it. Handlers that only compute need
    /// no such section.
    pub fn blocking<T>(&self, wait: impl FnOnce() -> T) -> T {
        match &self.worker.0 {
            Some(worker) => {
                worker.enter();
                let _leave = Leave(worker.as_ref());
                wait()
            }
            None => wait(),
        }
    }

    /// A GET request with a fixed id, for tests and examples.
    pub fn get(target: &str) -> Request {
        Request::new("GET", target, "test-id")
    }

    /// The first value of query parameter `name`, decoded strictly: the whole query must
    /// decode, so a malformed escape anywhere is the client's mistake, never silently kept.
    pub fn param(&self, name: &str) -> Result<Option<String>, QueryError> {
        Ok(decode_query(&self.query)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v))
    }
}

/// What a handler answers: a status, a JSON (or text) body and any extra headers. The
/// server wrapper adds the headers every response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The route that answered (`None` for a 404), the `route` label of the metrics.
    pub route: Option<&'static str>,
    /// The body: JSON, or the text of `content_type`.
    pub body: String,
    /// `application/json` unless the answer is text (the metrics exposition).
    pub content_type: &'static str,
    /// Headers of this answer beyond those every answer carries (`Allow`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
    /// How long to wait before sending it (fault injection): the server's timer sends it
    /// when due, holding no thread meanwhile.
    pub delay: Duration,
    /// `key=value` fields the access line carries after the request id, such as the replica
    /// of Service A that B's answer came from: the handler knows them, the server logs.
    pub log_fields: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON response; serde_json escapes every control character, so any string is safe.
    pub fn json(status: u16, value: &Value) -> Response {
        Response {
            status,
            route: None,
            body: value.to_string(),
            content_type: "application/json",
            headers: Vec::new(),
            delay: Duration::ZERO,
            log_fields: Vec::new(),
        }
    }

    /// A text response, such as the metrics exposition.
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            content_type,
            body,
            ..Response::json(status, &Value::Null)
        }
    }

    /// The one JSON error body both services answer with: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "error": message }))
    }

    /// Adds a header such as `Allow` or `Retry-After`.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds `name=value` to the access line of this answer (values are ours, not a
    /// client's: the logger escapes control characters anyway).
    pub fn with_log_field(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.log_fields.push((name, value.into()));
        self
    }

    /// Sends this response only after `delay`.
    pub fn after(mut self, delay: Duration) -> Response {
        self.delay = delay;
        self
    }

    /// The body parsed as JSON (`Value::Null` if it is not), for tests.
    pub fn json_body(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The liveness answer both services give on `/health`: 200 whenever the process serves.
pub fn health() -> Response {
    Response::json(200, &json!({ "status": "ok" }))
}

/// The readiness answer both services give on `/ready`: ready whenever the service serves,
/// whatever its upstreams do, until a drain begins; then 503, so that an orchestrator and
/// B's probes send it no new work while it finishes what it has.
pub fn ready(req: &Request) -> Response {
    match req.draining {
        false => Response::json(200, &json!({ "status": "ready" })),
        true => Response::json(503, &json!({ "status": "draining" })),
    }
}

/// A route's handler: a plain function of the service state and the request.
pub type Handler<S> = fn(&S, &Request) -> Response;

/// Finds the route for the request's path: 404 when no route has it, 405 with `Allow` when
/// the method is neither GET nor HEAD (HEAD runs the GET handler; the server drops the body).
pub fn route<S>(state: &S, req: &Request, routes: &[(&'static str, Handler<S>)]) -> Response {
    let Some(&(path, handler)) = routes.iter().find(|(path, _)| *path == req.path) else {
        return Response::error(404, "Not found");
    };
    let response = if req.method != "GET" && req.method != "HEAD" {
        Response::error(405, "Method not allowed").with_header("Allow", "GET, HEAD")
    } else {
        handler(state, req)
    };
    Response {
        route: Some(path),
        ..response
    }
}

/// Why a query string could not be decoded; always the client's mistake (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryError::MalformedEscape => "Malformed percent-escape in query string",
            QueryError::NotUtf8 => "Query string is not valid UTF-8",
        })
    }
}

impl std::error::Error for QueryError {}

/// Decodes `application/x-www-form-urlencoded` pairs strictly (`+` is a space, `%XX` a byte),
/// unlike lenient decoders that pass a bad escape through or replace bad UTF-8.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_component(k)?, decode_component(v)?))
        })
        .collect()
}

fn decode_component(s: &str) -> Result<String, QueryError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(QueryError::MalformedEscape),
                }
            }
            other => other,
        });
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Encodes a value for a query string (the inverse of [`decode_query`]'s rules): every byte
/// but `A-Za-z0-9*-._` is escaped and a space becomes `+`, so any string arrives byte-exact.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The request-id rule: a well-formed incoming id is kept so a caller can follow its request
/// through both services; anything else (absent, too long, odd characters) is replaced.
pub fn request_id(incoming: Option<&str>) -> String {
    match incoming {
        Some(id) if is_valid_request_id(id) => id.to_string(),
        _ => new_request_id(),
    }
}

/// `^[A-Za-z0-9._-]{1,128}$`: nothing that could break a header or a log line.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 16 hex digits from a per-process randomly keyed hash of a counter: unique within the
/// process by construction and across restarts by the random keys, with no extra crate.
pub fn new_request_id() -> String {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &(), _: &Request) -> Response {
        Response::json(200, &json!({"ok": true}))
    }

    #[test]
    fn route_answers_404_405_and_runs_get_and_head() {
        let routes: &[(&'static str, Handler<()>)] = &[("/x", ok)];
        let missing = route(&(), &Request::get("/nope"), routes);
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json_body(), json!({"error": "Not found"}));

        let post = route(&(), &Request::new("POST", "/x", "id"), routes);
        assert_eq!(post.status, 405);
        assert_eq!(post.json_body(), json!({"error": "Method not allowed"}));
        assert_eq!(post.headers, vec![("Allow", "GET, HEAD".to_string())]);
        assert_eq!((missing.route, post.route), (None, Some("/x")));

        assert_eq!(route(&(), &Request::get("/x?a=b"), routes).status, 200);
        assert_eq!(
            route(&(), &Request::new("HEAD", "/x", "id"), routes).status,
            200
        );
    }

    #[test]
    fn request_splits_target_and_takes_first_param() {
        let req = Request::get("/echo?msg=a&msg=b&x=1");
        assert_eq!(req.path, "/echo");
        assert_eq!(req.param("msg"), Ok(Some("a".to_string())));
        assert_eq!(req.param("nope"), Ok(None));
        assert_eq!(Request::get("/echo").param("msg"), Ok(None));
    }

    #[test]
    fn decoding_follows_form_rules() {
        let pairs = decode_query("a=hello+world&b=%26%3D%2B%25&c&d=&=e&&f=%F0%9F%98%80").unwrap();
        let want = [
            ("a", "hello world"),
            ("b", "&=+%"),
            ("c", ""),
            ("d", ""),
            ("", "e"),
            ("f", "😀"),
        ];
        let got: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(got, want);
        assert_eq!(decode_query("a=%4a%4A").unwrap()[0].1, "JJ");
    }

    #[test]
    fn decoding_rejects_bad_escapes_and_bad_utf8() {
        for bad in ["msg=%", "msg=%4", "msg=%zz", "msg=%g0", "x=%%41", "%=1"] {
            assert_eq!(decode_query(bad), Err(QueryError::MalformedEscape), "{bad}");
        }
        for bad in ["msg=%FF", "msg=%C3", "msg=%ED%A0%80"] {
            assert_eq!(decode_query(bad), Err(QueryError::NotUtf8), "{bad}");
        }
    }

    #[test]
    fn encoding_round_trips() {
        for s in ["", "hello world", "&=+%#?/\n\t\"'", "é😀\u{0}", "a+b c"] {
            let query = format!("msg={}", form_encode(s));
            assert_eq!(decode_query(&query).unwrap()[0].1, s);
        }
        assert_eq!(form_encode("a b&c"), "a+b%26c");
    }

    #[test]
    fn budgets_are_whole_milliseconds() {
        assert_eq!(parse_budget("1999"), Some(Duration::from_millis(1999)));
        assert_eq!(parse_budget(" 0\t"), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "1e3", "0x10", "1234567890", "\u{a0}5"] {
            assert_eq!(parse_budget(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_replaced() {
        assert_eq!(request_id(Some("abc-1.2_3")), "abc-1.2_3");
        let long = "a".repeat(128);
        assert_eq!(request_id(Some(&long)), long);
        for bad in ["", "a b", "a\nb", "ä", "a/b", &"a".repeat(129)] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert!(is_valid_request_id(&id));
        }
        let fresh = request_id(None);
        assert_eq!(fresh.len(), 16);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_request_id(), new_request_id());
    }
}
