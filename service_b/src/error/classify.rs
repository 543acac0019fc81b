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
    /// It answered what no healthy A answers to B's well-formed request (a 4xx, or a 200
    /// that is not exactly the echo of the message sent): failing when other replicas
    /// answer well (the call's retry elsewhere did, or one did lately), else B asked
    /// wrongly and nothing counts against it, so a B that asks wrongly ejects no replica.
    /// A 429's `Retry-After` (whole seconds) comes with it: the replica is kept out that
    /// long.
    Suspect(Option<Duration>),
    /// It answered at once that it could not finish within the time it was given, so it is
    /// at least this slow: its estimate learns that, its breaker does not count it.
    Slower(Duration),
    /// B itself failed (no descriptor left for a socket): nothing is learnt or counted.
    BsOwn,
}

/// Whether another attempt of a failed call may still succeed, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// No: bytes of the answer had arrived and it was cut, or the deadline passed.
    No,
    /// On another replica only: this one answered, wrongly (a 5xx, a 4xx, a body that is
    /// not the echo); asking it again would get the same.
    Elsewhere,
    /// On another replica, or on this one over a fresh connection: nothing of the answer
    /// had arrived (a pooled connection may have died while idle), or A refused at once for
    /// lack of time.
    Anywhere,
}

/// A failed attempt, classified.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: CallError,
    /// Whether another attempt may still succeed, and where.
    pub(crate) retry: Retry,
    /// What it says about the replica.
    pub(crate) verdict: Verdict,
    /// The connect was refused or the address unreachable: the names may have moved.
    pub(crate) refused: bool,
}

impl Failure {
    /// A failure that counts against its replica, retried anywhere when `retryable`.
    pub(crate) fn failing(error: CallError, retryable: bool) -> Failure {
        Failure {
            error,
            retry: if retryable {
                Retry::Anywhere
            } else {
                Retry::No
            },
            verdict: Verdict::Failing,
            refused: false,
        }
    }

    /// A complete answer that is wrong: retried on another replica only.
    fn answered(error: CallError, verdict: Verdict) -> Failure {
        Failure {
            error,
            retry: Retry::Elsewhere,
            verdict,
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
/// Any other non-2xx is a complete answer, retried on another replica: a 5xx counts
/// against the replica; a 4xx (or a redirect) is [`Verdict::Suspect`], with a 429's
/// `retry_after`.
pub(crate) fn classify_status(
    status: u16,
    refused_for_time: bool,
    told: Duration,
    retry_after: Option<Duration>,
    seen: Seen,
) -> Option<Failure> {
    if status == 504 && refused_for_time {
        return Some(Failure {
            error: CallError::RefusedForTime {
                told,
                deadline: seen.deadline,
            },
            retry: if seen.short_head {
                Retry::Anywhere
            } else {
                Retry::No
            },
            verdict: Verdict::Slower(told),
            refused: false,
        });
    }
    if (200..300).contains(&status) {
        return None;
    }
    let verdict = match status {
        500.. => Verdict::Failing,
        429 => Verdict::Suspect(retry_after),
        _ => Verdict::Suspect(None),
    };
    Some(Failure::answered(CallError::Status(status), verdict))
}

/// A `Retry-After` in whole seconds (its HTTP-date form is not honoured); `None` for 0.
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = value.parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
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

/// A's body must be a JSON object whose one key `echo` is the message sent (`expect`);
/// it is passed on as received. Not JSON, or not an object with a string `echo`: the
/// replica is failing. An object with another echo or other keys: no healthy A answers
/// that to this message, so it is [`Verdict::Suspect`] (unless B built the message wrongly,
/// which its peers' answers tell).
pub(crate) fn classify_body(body: &[u8], expect: &str) -> Result<Value, Failure> {
    let malformed = |why: String| Failure::answered(CallError::BadResponse(why), Verdict::Failing);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("body is not JSON ({e})")))?;
    let Some(Value::String(echo)) = value.get("echo").filter(|_| value.is_object()) else {
        return Err(malformed(
            "expected a JSON object with a string \"echo\"".to_string(),
        ));
    };
    let lie = |why: &str| {
        Failure::answered(
            CallError::BadResponse(why.to_string()),
            Verdict::Suspect(None),
        )
    };
    if echo != expect {
        return Err(lie("the echo is not the message sent"));
    }
    if value.as_object().is_some_and(|o| o.len() != 1) {
        return Err(lie("keys other than \"echo\" in the answer"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_echo_of_the_message_sent_is_accepted() {
        assert_eq!(
            classify_body(br#"{"echo":"hi"}"#, "hi").unwrap(),
            json!({"echo":"hi"})
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"echo":1}"#,
            br#""echo""#,
            b"",
        ] {
            let failure = classify_body(bad, "hi").unwrap_err();
            assert_eq!(failure.error.kind(), "bad_response");
            assert_eq!(
                (failure.verdict, failure.retry),
                (Verdict::Failing, Retry::Elsewhere)
            );
        }
        for lie in [
            &br#"{"echo":"WRONG"}"#[..],
            br#"{"echo":"hi","injected":{"x":1}}"#,
        ] {
            let failure = classify_body(lie, "hi").unwrap_err();
            assert_eq!(failure.error.kind(), "bad_response");
            assert_eq!(failure.verdict, Verdict::Suspect(None));
        }
    }

    #[test]
    fn a_4xx_is_suspect_and_a_429_carries_its_retry_after() {
        let seen = Seen {
            received: 100,
            short_connect: None,
            short_head: false,
            deadline: Duration::from_secs(2),
        };
        let told = Duration::from_secs(2);
        let status = |s, after| classify_status(s, false, told, after, seen);
        assert!(status(200, None).is_none());
        let secs = Some(Duration::from_secs(3));
        let failure = status(429, secs).expect("a failure");
        assert_eq!(
            (failure.verdict, failure.retry),
            (Verdict::Suspect(secs), Retry::Elsewhere)
        );
        assert_eq!(
            status(404, secs).map(|f| f.verdict),
            Some(Verdict::Suspect(None))
        );
        assert_eq!(status(500, None).map(|f| f.verdict), Some(Verdict::Failing));
        assert_eq!(retry_after(" 3 "), secs);
        for bad in [
            "0",
            "",
            "-1",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "1.5",
            "9999999999",
        ] {
            assert_eq!(retry_after(bad), None, "{bad}");
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
