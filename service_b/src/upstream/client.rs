//! One attempt of a call from B to a replica of A over `ureq`, within its limits and the
//! call's one deadline over connect, send and receive: A's JSON object, or the failure
//! classified by the 503 contract (`crate::error`). Every attempt runs on a ureq agent of
//! its own that keeps no connection: the connections are B's shared pool's (see `pool`),
//! and what the transport saw of the attempt comes back to it as a value, never through a
//! thread's state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echo_core::client::form_encode;
use echo_core::http::{DEADLINE_EXCEEDED_HEADER, TIMEOUT_HEADER};
use serde_json::Value;
use ureq::Agent;

use super::pool::Pool;
use super::transport::{AddressOnly, Connect, INPUT_BUFFER, OUTPUT_BUFFER};
use crate::error::{
    classify, classify_body, classify_body_failure, classify_status, retry_after, Failure, Seen,
};

/// Largest body accepted from A; an echo of the longest possible message fits easily.
const MAX_A_BODY: u64 = 1024 * 1024;
/// Room in the output buffer for the request line and headers beyond the URL and the
/// forwarded values: the buffer must hold the whole request head.
const HEAD_ROOM: usize = 512;

/// The limits of one attempt, each within what is left of the call's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The call's deadline: `--timeout-ms`, or the client's shorter one.
    pub(crate) deadline: Duration,
    /// What is left of the deadline.
    pub(crate) left: Duration,
    /// At most this to connect (`None`: the deadline).
    pub(crate) connect: Option<Duration>,
    /// At most this until the head of the answer (`None`: the deadline); A is told it.
    pub(crate) head: Option<Duration>,
    /// On a new connection, never a pooled one (a retry on the same replica).
    pub(crate) fresh: bool,
}

impl Limits {
    /// The time A is told it has (`X-Request-Timeout-Ms`): the head's limit, within what
    /// is left.
    fn time_told(&self) -> Duration {
        self.head.map_or(self.left, |h| h.min(self.left))
    }

    /// What a failure needs to know of these limits, for a call with `deadline`.
    fn seen(&self, received: usize, deadline: Duration) -> Seen {
        let short = |limit: Option<Duration>| limit.filter(|l| *l < self.left);
        Seen {
            received,
            short_connect: short(self.connect),
            short_head: short(self.head).is_some(),
            deadline,
        }
    }
}

/// A's answer to one attempt.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Its JSON object.
    pub(crate) value: Value,
    /// It closed its connection (`Connection: close`): A is draining, or sheds connections.
    pub(crate) closing: bool,
}

/// The headers of the incoming request that go on to A.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forward<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) traceparent: &'a str,
    pub(crate) tracestate: Option<&'a str>,
}

/// The client for Service A's `/echo`: one attempt at a time, on a replica's base URL.
#[derive(Debug)]
pub(crate) struct EchoClient {
    timeout: Duration,
    /// The settings of every attempt's agent.
    config: ureq::config::Config,
    pool: Arc<Pool>,
}

impl EchoClient {
    /// `timeout` is the deadline of a call; idle connections are kept in `pool`.
    pub(crate) fn new(timeout: Duration, pool: Arc<Pool>) -> EchoClient {
        let config = Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .input_buffer_size(INPUT_BUFFER)
            .max_response_header_size(INPUT_BUFFER - 1)
            // ureq keeps no connection: the shared pool does.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build();
        EchoClient {
            timeout,
            config,
            pool,
        }
    }

    /// The path and query of A's `/echo` for `msg`, form-encoded so that any string comes
    /// back byte-exact.
    pub(crate) fn path(msg: &str) -> String {
        format!("/echo?msg={}", form_encode(msg))
    }

    /// The deadline every call gets, unless its client asks for a shorter one.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One attempt: GET `url` within `limits` and return A's JSON object, which must be
    /// the echo of `expect`, the message sent.
    pub(crate) fn attempt(
        &self,
        url: &str,
        expect: &str,
        limits: Limits,
        forward: Forward<'_>,
    ) -> Result<Answer, Failure> {
        let received = Arc::new(AtomicUsize::new(0));
        let connect = Connect {
            pool: Arc::clone(&self.pool),
            fresh: limits.fresh,
            received: Arc::clone(&received),
        };
        let agent = Agent::with_parts(self.config.clone(), connect, AddressOnly);
        let seen =
            |received: &AtomicUsize| limits.seen(received.load(Ordering::Relaxed), limits.deadline);
        let told = limits.time_told();
        let mut request = agent
            .get(url)
            .header("X-Request-Id", forward.request_id)
            .header("traceparent", forward.traceparent)
            .header(TIMEOUT_HEADER, told.as_millis().to_string())
            .header("Accept", "application/json");
        if let Some(state) = forward.tracestate {
            request = request.header("tracestate", state);
        }
        let head = url.len()
            + forward.request_id.len()
            + forward.traceparent.len()
            + forward.tracestate.map_or(0, str::len)
            + HEAD_ROOM;
        let mut response = request
            .config()
            .output_buffer_size(head.next_power_of_two().max(OUTPUT_BUFFER))
            .timeout_global(Some(limits.left))
            .timeout_connect(limits.connect)
            .timeout_recv_response(limits.head)
            .build()
            .call()
            .map_err(|e| classify(e, seen(&received)))?;
        let headers = response.headers();
        let closing = headers
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        let refused_for_time = headers.contains_key(DEADLINE_EXCEEDED_HEADER);
        let after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let status = response.status().as_u16();
        if let Some(failure) =
            classify_status(status, refused_for_time, told, after, seen(&received))
        {
            return Err(failure);
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_A_BODY)
            .read_to_vec()
            .map_err(|e| classify_body_failure(e, limits.deadline))?;
        let value = classify_body(&body, expect)?;
        Ok(Answer { value, closing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_form_encodes_the_message() {
        assert_eq!(EchoClient::path("a b&c=d#"), "/echo?msg=a+b%26c%3Dd%23");
    }
}
