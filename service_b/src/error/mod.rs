//! The 503 contract, in one place: every way a call from B to A can fail ([`CallError`],
//! one variant per way, each exactly one `kind`), how what the client saw is classified
//! (`classify`: a failure of ureq, A's status, A's body), its `details` (`Display`: a fixed
//! prefix, then the cause), its `Retry-After`, and the body B answers
//! ([`CallError::response`]). The payloads of the refusals made without calling A
//! ([`Ejected`], [`NoReplica`]) live here too, so that every layer can name them without
//! depending on the one above.

use std::fmt;
use std::time::Duration;

use echo_core::Response;
use serde_json::json;

mod classify;

pub(crate) use classify::{
    classify, classify_body, classify_body_failure, classify_status, retry_after, Failure, Retry,
    Seen, Verdict,
};

/// Why a call to A failed. `kind` is the machine-readable 503 `kind`, `Display` the
/// `details` (its prefix is fixed, the rest is the cause).
#[derive(Debug)]
pub(crate) enum CallError {
    /// Refused, reset, unreachable: no answer could be had from A.
    Connect(String),
    /// The deadline (the duration given) passed before A's whole answer arrived.
    Timeout(Duration),
    /// A refused at once: it could not answer within the time it was told was left
    /// (its 504 with the deadline-exceeded header). Kind `timeout`, said truthfully.
    RefusedForTime {
        /// The time B told A it had.
        told: Duration,
        /// The call's deadline.
        deadline: Duration,
    },
    /// A answered with a non-2xx status.
    Status(u16),
    /// A answered 2xx, but not with the expected JSON object.
    BadResponse(String),
    /// B already has as many calls to A in flight as it allows (the bulkhead); A not called.
    Overloaded(usize),
    /// Every replica is ejected; A not called. Says how the soonest back was ejected.
    AllEjected(Ejected),
}

/// Why a replica takes no call: its breaker ejected it. Shown as the 503 `details` when
/// every replica is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ejected {
    /// Until the replica's next probe.
    pub(crate) left: Duration,
    /// Failed calls in a row that ejected it.
    pub(crate) failures: u32,
    /// The last failure, as its 503 `details` said.
    pub(crate) last: String,
}

/// Why no replica could take a call.
#[derive(Debug)]
pub(crate) enum NoReplica {
    /// No address is known: every name failed to resolve so far.
    Unresolved(String),
    /// Every replica is ejected; the one whose probe comes first.
    AllEjected(Ejected),
}

impl CallError {
    /// The `kind` field of the 503 body and of B's log line.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CallError::Connect(_) => "connect",
            CallError::Timeout(_) | CallError::RefusedForTime { .. } => "timeout",
            CallError::Status(_) => "status",
            CallError::BadResponse(_) => "bad_response",
            CallError::Overloaded(_) => "overloaded",
            CallError::AllEjected(_) => "circuit_open",
        }
    }

    /// Whether A was never called (the bulkhead or every breaker refused).
    pub(crate) fn not_made(&self) -> bool {
        matches!(self, CallError::Overloaded(_) | CallError::AllEjected(_))
    }

    /// The `Retry-After` (whole seconds, at least 1) for failures that say when to come back.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            CallError::Overloaded(_) => Some(1),
            CallError::AllEjected(out) => Some(out.left.as_millis().div_ceil(1000).max(1) as u64),
            _ => None,
        }
    }

    /// B's answer for this failure: 503 `{"error":"Service A unavailable","details","kind"}`,
    /// with `Retry-After` when it says when to come back.
    pub(crate) fn response(&self) -> Response {
        let body = json!({ "error": "Service A unavailable", "details": self.to_string(), "kind": self.kind() });
        let response = Response::json(503, &body);
        match self.retry_after() {
            Some(secs) => response.with_header("Retry-After", secs.to_string()),
            None => response,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(cause) => write!(f, "Connection error: {cause}"),
            CallError::Timeout(after) => {
                write!(f, "Timeout calling Service A after {}s", seconds(*after))
            }
            CallError::RefusedForTime { told, deadline } => write!(
                f,
                "Timeout calling Service A: it refused at once, needing more than the {}ms left of {}s",
                told.as_millis(),
                seconds(*deadline)
            ),
            CallError::Status(code) => write!(f, "Service A returned HTTP {code}"),
            CallError::BadResponse(cause) => write!(f, "Invalid response from Service A: {cause}"),
            CallError::Overloaded(limit) => write!(
                f,
                "Too many calls to Service A in flight (limit {limit}); try again later"
            ),
            CallError::AllEjected(out) => write!(
                f,
                "Circuit open after {} failures; last: {}; next try in {}ms",
                out.failures,
                out.last,
                out.left.as_millis()
            ),
        }
    }
}

impl std::error::Error for CallError {}

impl From<NoReplica> for CallError {
    fn from(none: NoReplica) -> CallError {
        match none {
            NoReplica::AllEjected(out) => CallError::AllEjected(out),
            NoReplica::Unresolved(cause) => {
                CallError::Connect(format!("no address of Service A is known ({cause})"))
            }
        }
    }
}

/// `2000 ms` → `2.0`, `250 ms` → `0.25`: as many decimals as the value needs, at least one.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    let text = format!("{}.{:03}", ms / 1000, ms % 1000);
    let trimmed = text.trim_end_matches('0');
    if trimmed.ends_with('.') {
        format!("{trimmed}0")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_tests::JsonBody;

    #[test]
    fn details_carry_the_contract_prefixes() {
        let ms = Duration::from_millis;
        let cases = [
            (
                CallError::Connect("refused".into()),
                "connect",
                "Connection error: refused",
            ),
            (
                CallError::Timeout(ms(2000)),
                "timeout",
                "Timeout calling Service A after 2.0s",
            ),
            (
                CallError::RefusedForTime {
                    told: ms(1998),
                    deadline: ms(2000),
                },
                "timeout",
                "Timeout calling Service A: it refused at once, needing more than the 1998ms left of 2.0s",
            ),
            (
                CallError::Status(500),
                "status",
                "Service A returned HTTP 500",
            ),
            (
                CallError::BadResponse("x".into()),
                "bad_response",
                "Invalid response from Service A: x",
            ),
            (
                CallError::AllEjected(ejected(1500)),
                "circuit_open",
                "Circuit open after 5 failures; last: Connection error: refused; next try in 1500ms",
            ),
        ];
        for (e, kind, details) in cases {
            assert_eq!((e.kind(), e.to_string().as_str()), (kind, details));
        }
    }

    fn ejected(ms: u64) -> Ejected {
        Ejected {
            left: Duration::from_millis(ms),
            failures: 5,
            last: "Connection error: refused".to_string(),
        }
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        assert_eq!(CallError::Overloaded(1).retry_after(), Some(1));
        assert_eq!(CallError::AllEjected(ejected(1500)).retry_after(), Some(2));
        assert_eq!(CallError::AllEjected(ejected(10)).retry_after(), Some(1));
        assert_eq!(CallError::Status(500).retry_after(), None);
        let r = CallError::AllEjected(ejected(1500)).response();
        assert_eq!(r.status, 503);
        assert_eq!(r.json_body()["kind"], "circuit_open");
    }

    #[test]
    fn seconds_keep_needed_decimals() {
        let s = |ms| seconds(Duration::from_millis(ms));
        assert_eq!(
            [s(2000), s(250), s(1234), s(100), s(0)],
            ["2.0", "0.25", "1.234", "0.1", "0.0"]
        );
    }
}
