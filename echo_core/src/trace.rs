//! W3C Trace Context (the `traceparent` and `tracestate` headers, W3C Recommendation): a
//! request continues its caller's trace with a span of its own, or starts a trace, so one
//! `trace_id` follows a call from the client through B to A in every log line. An invalid
//! `traceparent` is replaced by a new trace, as an invalid request id is, and its
//! `tracestate` goes with it.

use std::fmt;

/// The trace a request belongs to and this service's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// This service's span for the request: 16 lower-case hex digits, never all zero.
    pub span_id: String,
    /// The caller's span (the `parent-id` received), when the trace was continued.
    pub parent_id: Option<String>,
    /// `trace-flags` as received (bit 0: sampled); `01` for a trace started here.
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged.
    pub state: Option<String>,
}

impl Trace {
    /// A new trace with a new span (nothing valid came in).
    pub fn start() -> Trace {
        Trace {
            trace_id: hex_id(16),
            span_id: hex_id(8),
            parent_id: None,
            flags: 0x01,
            state: None,
        }
    }

    /// Continues the caller's trace when `traceparent` is valid (with `tracestate` as
    /// received), else starts one.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Trace {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent_id, flags)) => Trace {
                trace_id: trace_id.to_string(),
                span_id: hex_id(8),
                parent_id: Some(parent_id.to_string()),
                flags,
                state: tracestate
                    .filter(|s| !s.is_empty() && s.len() <= 512)
                    .map(str::to_string),
            },
            None => Trace::start(),
        }
    }

    /// The `traceparent` to send a callee: this trace, with this span as the callee's parent.
    pub fn child_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

impl fmt::Display for Trace {
    /// The log fields: `trace_id=… span_id=…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace_id={} span_id={}", self.trace_id, self.span_id)
    }
}

/// `version-traceid-parentid-flags`: lower-case hex only; version `ff` is invalid; version
/// `00` is exactly 55 characters; a later version may add fields after a `-`; the trace id
/// and parent id must not be all zeros.
fn parse_traceparent(value: &str) -> Option<(&str, &str, u8)> {
    let value = value.trim_matches([' ', '\t']);
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let version = value.get(..2)?;
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    let rest = value.get(2..)?;
    match (version, rest.len()) {
        ("00", 53) => {}
        ("00", _) => return None,
        (_, n) if n == 53 || (n > 53 && rest.as_bytes()[53] == b'-') => {}
        _ => return None,
    }
    let bytes = rest.as_bytes();
    if bytes[0] != b'-' || bytes[33] != b'-' || bytes[50] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&rest[1..33], &rest[34..50], &rest[51..53]);
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    if !lower_hex(trace_id, 32) || !lower_hex(parent_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    if !nonzero(trace_id) || !nonzero(parent_id) {
        return None;
    }
    Some((trace_id, parent_id, u8::from_str_radix(flags, 16).ok()?))
}

/// `bytes` random bytes as lower-case hex, never all zero.
fn hex_id(bytes: usize) -> String {
    loop {
        let id: String = (0..bytes)
            .map(|_| format!("{:02x}", fastrand::u8(..)))
            .collect();
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Recommendation's example.
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = Trace::from_headers(Some(EXAMPLE), Some("congo=t61rcWkgMzE"));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(
            (t.flags, t.state.as_deref()),
            (1, Some("congo=t61rcWkgMzE"))
        );
        let child = t.child_traceparent();
        assert_eq!(child, format!("00-{}-{}-01", t.trace_id, t.span_id));
        assert!(parse_traceparent(&child).is_some());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(Trace::from_headers(Some(unsampled), None).flags, 0);
        // A later version may carry more fields after the four it shares with 00.
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(parse_traceparent(future).is_some());
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        let invalid = [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero parent id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper-case hex
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // trace id too short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  // parent id too short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  // flags too short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // 00 with more
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", // wrong separators
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // later version, no dash
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ];
        for value in invalid {
            let t = Trace::from_headers(Some(value), Some("congo=t61rcWkgMzE"));
            assert_eq!(t.parent_id, None, "{value:?} accepted");
            assert_eq!(t.state, None, "{value:?} kept its tracestate");
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn new_ids_are_lower_hex_and_never_zero() {
        for _ in 0..100 {
            let t = Trace::start();
            assert_eq!((t.trace_id.len(), t.span_id.len()), (32, 16));
            assert!(parse_traceparent(&t.child_traceparent()).is_some());
        }
    }
}
