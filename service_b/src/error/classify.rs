//! How what B's client saw of an attempt becomes one [`CallError`] (its 503 `kind` and
//! `details`), whether another attempt may still succeed, and what it says about the
//! replica: a failure of ureq ([`classify`]), A's status ([`classify_status`]) and A's body
//! ([`classify_body_failure`], [`classify_body`]).

use std::io;
use std::time::Duration;

use serde_json::Value;

use super::CallError;

/// What a failed attempt says about the replica it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It is failing: counts for its breaker, and its estimate takes a penalty.
    Failing,
    /// It answered at once that it could not finish within the time it was given, so it is
    /// at least this slow: its estimate learns that, its breaker does not count it.
    Slower(Duration),
    /// B asked wrongly (a 4xx): nothing is learnt about the replica's speed, and its count
    /// of failures in a row starts again (it answered).
    NotItsFault,
    /// B itself failed (no descriptor left for a socket): nothing is learnt or counted.
    BsOwn,
}

/// A failed attempt, classified.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: CallError,
    /// Nothing of the answer had arrived, or A refused at once for lack of time: another
    /// attempt may still succeed.
    pub(crate) retryable: bool,
    /// What it says about the replica.
    pub(crate) verdict: Verdict,
    /// The connect was refused or the address unreachable: the names may have moved.
    pub(crate) refused: bool,
}

impl Failure {
    /// A failure that counts against its replica.
    pub(crate) fn failing(error: CallError, retryable: bool) -> Failure {
        Failure {
            error,
            retryable,
            verdict: Verdict::Failing,
            refused: false,
        }
    }
}

/// What is known of an attempt when the client fails, for [`classify`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// Bytes of the answer received.
    pub(crate) received: usize,
    /// The attempt's own connect limit, when shorter than what was left of the deadline.
    pub(crate) short_connect: Option<Duration>,
    /// The attempt's limit for the answer's head was shorter than what was left.
    pub(crate) short_head: bool,
    /// The call's deadline.
    pub(crate) deadline: Duration,
}

/// Sorts a failure of the client before a complete answer head into retryable or final, by
/// what had arrived: once any byte of the answer is in, it is final (and `bad_response`
/// unless the deadline passed). A timeout is retryable only when it is one of the attempt's
/// own shorter limits (connect, the answer's head); else it is the deadline. B's own lack
/// of descriptors is B's failure, never its replica's.
pub(crate) fn classify(e: ureq::Error, seen: Seen) -> Failure {
    use io::ErrorKind::*;
    let received = seen.received;
    let timeout = || CallError::Timeout(seen.deadline);
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) if seen.short_connect.is_some() => {
            let ms = seen.short_connect.map_or(0, |c| c.as_millis());
            let error = CallError::Connect(format!("connect took longer than {ms}ms"));
            Failure::failing(error, true)
        }
        ureq::Error::Timeout(ureq::Timeout::RecvResponse) if received == 0 && seen.short_head => {
            Failure::failing(timeout(), true)
        }
        ureq::Error::Timeout(_) => Failure::failing(timeout(), false),
        ureq::Error::Protocol(p) => {
            Failure::failing(CallError::BadResponse(format!("not HTTP: {p}")), false)
        }
        _ if received > 0 => Failure::failing(
            CallError::BadResponse(format!(
                "the answer was cut short after {received} bytes: {e}"
            )),
            false,
        ),
        ureq::Error::Io(io) if out_of_descriptors(&io) => Failure {
            verdict: Verdict::BsOwn,
            ..Failure::failing(CallError::Connect(format!("B itself: {io}")), false)
        },
        ureq::Error::Io(io) => {
            let refused = matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            );
            let retryable = refused
                || matches!(
                    io.kind(),
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
                );
            Failure {
                refused,
                ..Failure::failing(CallError::Connect(io.to_string()), retryable)
            }
        }
        ureq::Error::HostNotFound => {
            Failure::failing(CallError::Connect("host not found".to_string()), true)
        }
        ureq::Error::ConnectionFailed => {
            Failure::failing(CallError::Connect("connection failed".to_string()), true)
        }
        other => Failure::failing(CallError::BadResponse(other.to_string()), false),
    }
}

/// EMFILE or ENFILE: B (or its host) has no descriptor left for a socket to A.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    // The raw values of Linux (EMFILE 24, ENFILE 23), as the standard library reports them.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The failure a non-2xx answer head means, `None` for a 2xx. A's 504 with the
/// deadline-exceeded header is its refusal for lack of `told` time: kind `timeout`, the
/// replica at least that slow, and retryable when a longer time was left (`short_head`).
/// A 4xx says B asked wrongly: nothing against the replica.
pub(crate) fn classify_status(
    status: u16,
    refused_for_time: bool,
    told: Duration,
    seen: Seen,
) -> Option<Failure> {
    if status == 504 && refused_for_time {
        return Some(Failure {
            error: CallError::RefusedForTime {
                told,
                deadline: seen.deadline,
            },
            retryable: seen.short_head,
            verdict: Verdict::Slower(told),
            refused: false,
        });
    }
    if (200..300).contains(&status) {
        return None;
    }
    let verdict = match status < 500 {
        true => Verdict::NotItsFault,
        false => Verdict::Failing,
    };
    Some(Failure {
        verdict,
        ..Failure::failing(CallError::Status(status), false)
    })
}

/// A failure while A's body was read: final (bytes had arrived), `timeout` when the
/// deadline passed, else `bad_response`.
pub(crate) fn classify_body_failure(e: ureq::Error, deadline: Duration) -> Failure {
    let error = match e {
        ureq::Error::Timeout(_) => CallError::Timeout(deadline),
        other => CallError::BadResponse(format!("reading the body failed: {other}")),
    };
    Failure::failing(error, false)
}

/// A's body must be a JSON object with a string `echo`; it is passed on as received.
pub(crate) fn classify_body(body: &[u8]) -> Result<Value, CallError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CallError::BadResponse(format!("body is not JSON ({e})")))?;
    match value.get("echo") {
        Some(Value::String(_)) if value.is_object() => Ok(value),
        _ => Err(CallError::BadResponse(
            "expected a JSON object with a string \"echo\"".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_an_object_with_a_string_echo_is_accepted() {
        assert_eq!(
            classify_body(br#"{"echo":"hi","x":1}"#).unwrap(),
            json!({"echo":"hi","x":1})
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"echo":1}"#,
            br#""echo""#,
            b"",
        ] {
            assert_eq!(classify_body(bad).unwrap_err().kind(), "bad_response");
        }
    }

    #[test]
    fn b_s_own_lack_of_descriptors_is_not_the_replica_s_fault() {
        let seen = Seen {
            received: 0,
            short_connect: None,
            short_head: false,
            deadline: Duration::from_secs(2),
        };
        let emfile = ureq::Error::Io(io::Error::from_raw_os_error(24));
        let failure = classify(emfile, seen);
        assert_eq!(failure.error.kind(), "connect");
        assert_eq!(failure.verdict, Verdict::BsOwn);
        assert!(!failure.refused);
        let refused = ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(refused, seen).verdict, Verdict::Failing);
    }
}
