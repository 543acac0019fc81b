//! What a handler is given: the request, and the blocking sections through which a handler
//! that waits tells the server's worker running it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::query::{decode_query, QueryError};
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
    /// [`super::TIMEOUT_HEADER`] it sent); `None` when it did not say.
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
pub(crate) trait Blocking: Send + Sync {
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

    /// A GET request with a fixed id, for this crate's unit tests (the services' tests have
    /// `echo_tests::GetRequest`).
    #[cfg(test)]
    pub(crate) fn get(target: &str) -> Request {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_splits_target_and_takes_first_param() {
        let req = Request::get("/echo?msg=a&msg=b&x=1");
        assert_eq!(req.path, "/echo");
        assert_eq!(req.param("msg"), Ok(Some("a".to_string())));
        assert_eq!(req.param("nope"), Ok(None));
        assert_eq!(Request::get("/echo").param("msg"), Ok(None));
    }
}
