//! Every way a call from B to A can fail, as one error enum: each variant is exactly one
//! 503 `kind`, and its `Display` is the `details` (a fixed prefix, then the cause).

use std::fmt;
use std::time::Duration;

use crate::replicas::NoReplica;

/// Why a call to A failed. `kind` is the machine-readable 503 `kind`, `Display` the
/// `details` (its prefix is fixed, the rest is the cause).
#[derive(Debug)]
pub(crate) enum CallError {
    /// Refused, reset, unreachable: no answer could be had from A.
    Connect(String),
    /// The deadline passed before A's whole answer arrived.
    Timeout(Duration),
    /// A answered with a non-2xx status.
    Status(u16),
    /// A answered 2xx, but not with the expected JSON object.
    BadResponse(String),
    /// B already has as many calls to A in flight as it allows (the bulkhead); A not called.
    Overloaded(usize),
    /// The circuit breaker is open; A not called. Says how it opened and when it may close.
    CircuitOpen(crate::breaker::Open),
}

impl CallError {
    /// The `kind` field of the 503 body and of B's log line.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CallError::Connect(_) => "connect",
            CallError::Timeout(_) => "timeout",
            CallError::Status(_) => "status",
            CallError::BadResponse(_) => "bad_response",
            CallError::Overloaded(_) => "overloaded",
            CallError::CircuitOpen(_) => "circuit_open",
        }
    }

    /// The `Retry-After` (whole seconds, at least 1) for failures that say when to come back.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            CallError::Overloaded(_) => Some(1),
            CallError::CircuitOpen(open) => {
                Some(open.left.as_millis().div_ceil(1000).max(1) as u64)
            }
            _ => None,
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
            CallError::Status(code) => write!(f, "Service A returned HTTP {code}"),
            CallError::BadResponse(cause) => write!(f, "Invalid response from Service A: {cause}"),
            CallError::Overloaded(limit) => {
                write!(
                    f,
                    "Too many calls to Service A in flight (limit {limit}); try again later"
                )
            }
            CallError::CircuitOpen(open) => write!(f, "{open}"),
        }
    }
}

impl std::error::Error for CallError {}

impl From<NoReplica> for CallError {
    fn from(none: NoReplica) -> CallError {
        match none {
            NoReplica::AllEjected(open) => CallError::CircuitOpen(open),
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

    #[test]
    fn details_carry_the_contract_prefixes() {
        let cases = [
            (
                CallError::Connect("refused".into()),
                "connect",
                "Connection error: refused",
            ),
            (
                CallError::Timeout(Duration::from_millis(2000)),
                "timeout",
                "Timeout calling Service A after 2.0s",
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
        ];
        for (e, kind, details) in cases {
            assert_eq!((e.kind(), e.to_string().as_str()), (kind, details));
        }
    }

    fn open(ms: u64) -> crate::breaker::Open {
        crate::breaker::Open {
            left: Duration::from_millis(ms),
            failures: 5,
            last: "Connection error: refused".to_string(),
        }
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        assert_eq!(CallError::Overloaded(1).retry_after(), Some(1));
        assert_eq!(CallError::CircuitOpen(open(1500)).retry_after(), Some(2));
        assert_eq!(CallError::CircuitOpen(open(10)).retry_after(), Some(1));
        assert_eq!(CallError::Status(500).retry_after(), None);
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
