//! What a handler answers: a status, a body and the headers of this answer; the one JSON
//! error body; and the `/health` and `/ready` answers both services give.

use std::time::Duration;

use serde_json::{json, Value};

use super::Request;

/// What a handler answers: a status, a JSON (or text) body and any extra headers. The
/// server core adds the headers every response carries (`server::encode`).
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

    /// The body parsed as JSON (`Value::Null` if it is not), for this crate's unit tests (the
    /// services' tests have `echo_tests::JsonBody`).
    #[cfg(test)]
    pub(crate) fn json_body(&self) -> Value {
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
