//! W3C Trace Context (the `traceparent` and `tracestate` headers, W3C Recommendation, as its
//! test suite checks them): a request continues its caller's trace with a span of its own,
//! or starts a trace, so one `trace_id` follows a call from the client through B to A in
//! every log line. An invalid `traceparent` (or two of them) is replaced by a new trace, as
//! an invalid request id is, and its `tracestate` goes with it. Only the flag this version
//! defines (sampled) is passed on; a `tracestate` is passed on only if every list member is
//! valid and there are at most 32 (else it is dropped, the trace kept).

/// The flags defined for version `00`: bit 0, sampled. Others are zeroed when passed on.
const KNOWN_FLAGS: u8 = 0x01;
/// The most list members a `tracestate` may have.
const MAX_STATE_MEMBERS: usize = 32;
/// The longest `tracestate` passed on (the length every vendor must propagate).
const MAX_STATE_BYTES: usize = 512;

/// The trace a request belongs to and this service's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// This service's span for the request: 16 lower-case hex digits, never all zero.
    pub span_id: String,
    /// `trace-flags` as received with the unknown bits zeroed (bit 0: sampled); `01` for a
    /// trace started here.
    pub flags: u8,
    /// The caller's `tracestate`, validated, without optional whitespace and empty members.
    pub state: Option<String>,
}

impl Trace {
    /// A new trace with a new span (nothing valid came in).
    pub fn start() -> Trace {
        Trace {
            trace_id: hex_id(16),
            span_id: hex_id(8),
            flags: 0x01,
            state: None,
        }
    }

    /// Continues the caller's trace when `traceparent` is valid (with `tracestate` if it is
    /// valid), else starts one.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Trace {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, flags)) => Trace {
                trace_id: trace_id.to_string(),
                span_id: hex_id(8),
                flags: flags & KNOWN_FLAGS,
                state: tracestate.and_then(parse_tracestate),
            },
            None => Trace::start(),
        }
    }

    /// The `traceparent` to send a callee: this trace, with this span as the callee's parent.
    pub fn child_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// A `tracestate` (its fields joined by commas) as list members `key=value` joined by commas,
/// or `None` if a member is invalid, there are more than [`MAX_STATE_MEMBERS`], none, or the
/// result is longer than [`MAX_STATE_BYTES`]. Empty members and the whitespace around members
/// go; of a key sent twice the first member is kept (both are allowed).
fn parse_tracestate(value: &str) -> Option<String> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in value.split(',').map(|m| m.trim_matches([' ', '\t'])) {
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !state_key(key) || !state_value(value) {
            return None;
        }
        if !members.iter().any(|(k, _)| *k == key) {
            members.push((key, value));
        }
    }
    if members.is_empty() || members.len() > MAX_STATE_MEMBERS {
        return None;
    }
    let state: Vec<String> = members.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(state.join(",")).filter(|s| s.len() <= MAX_STATE_BYTES)
}

/// A list member's key: 1 to 256 characters, the first `a-z` or `0-9`, then those or
/// `_ - * / @` (the test suite's rule; it takes `t@v` and `foo@@bar` alike).
fn state_key(key: &str) -> bool {
    let lower_or_digit = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match key.as_bytes() {
        [first, rest @ ..] if rest.len() < 256 && lower_or_digit(*first) => rest
            .iter()
            .all(|&b| lower_or_digit(b) || b"_-*/@".contains(&b)),
        _ => false,
    }
}

/// A list member's value: 1 to 256 printable ASCII characters but `,` and `=`, not ending in
/// a space.
fn state_value(value: &str) -> bool {
    let allowed = |b: &u8| (b' '..=b'~').contains(b) && *b != b',' && *b != b'=';
    (1..=256).contains(&value.len()) && value.bytes().all(|b| allowed(&b)) && !value.ends_with(' ')
}

/// `version-traceid-parentid-flags` as its trace id and flags: lower-case hex only; version
/// `ff` is invalid; version `00` is exactly 55 characters; a later version may add fields
/// after a `-`; the trace id and parent id must not be all zeros.
fn parse_traceparent(value: &str) -> Option<(&str, u8)> {
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
    Some((trace_id, u8::from_str_radix(flags, 16).ok()?))
}

/// `bytes` random bytes as lower-case hex, never all zero. Written digit by digit into one
/// string: a trace and a span start with every request, and formatting each byte with
/// `format!` cost most of an answer's instructions (callgrind: 61 % of A's).
fn hex_id(bytes: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(bytes * 2);
    while id.len() < bytes * 2 {
        let word = fastrand::u64(..);
        let digits = (bytes * 2 - id.len()).min(16);
        for nibble in 0..digits {
            id.push(char::from(DIGITS[(word >> (nibble * 4)) as usize & 0xf]));
        }
    }
    if id.bytes().all(|b| b == b'0') {
        return hex_id(bytes);
    }
    id
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
            assert_ne!(
                t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736",
                "{value:?} accepted"
            );
            assert_eq!(t.state, None, "{value:?} kept its tracestate");
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

    #[test]
    fn unknown_flags_are_zeroed_for_version_00_and_later() {
        let flags = |f: &str| {
            let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{f}");
            Trace::from_headers(Some(&tp), None).child_traceparent()[53..].to_string()
        };
        assert_eq!(
            (flags("ff"), flags("fe"), flags("03")),
            ("01".into(), "00".into(), "01".into())
        );
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-more";
        assert!(Trace::from_headers(Some(later), None)
            .child_traceparent()
            .ends_with("-01"));
    }

    #[test]
    fn tracestate_is_validated_and_bounded() {
        let state = |s: &str| Trace::from_headers(Some(EXAMPLE), Some(s)).state;
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            state("foo=1 \t , \t bar=2,,\tbaz=3 "),
            some("foo=1,bar=2,baz=3")
        );
        assert_eq!(
            state(",foo=1"),
            some("foo=1"),
            "an empty field is no member"
        );
        assert_eq!(state("foo=1,foo=2"), some("foo=1"));
        let all_key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/";
        let all_value: String = (b' '..=b'~')
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let all = format!("{all_key}={}", all_value.trim_start());
        assert_eq!(state(&all), some(&all));
        for key in [
            "foo@=1",
            "foo@@bar=1",
            "t@vvvvvvvvvvvvvvv=1",
            &format!("{}=1", "z".repeat(256)),
        ] {
            assert_eq!(
                state(&format!("bar=2,{key}")),
                some(&format!("bar=2,{key}")),
                "{key}"
            );
        }
        let members = |n: usize| {
            (1..=n)
                .map(|i| format!("b{i:02}={i:02}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(state(&members(32)), some(&members(32)));
        let invalid = [
            "",
            " , ",
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "@foo=1,bar=2",
            "foo=bar=baz",
            "foo=,bar=3",
            "foo",
            "foo=1,\u{3000}=2",
            &format!("{}=1", "z".repeat(257)),
            &members(33),
            &members(60),
            &format!("a={}", "v".repeat(257)),
        ];
        for s in invalid {
            assert_eq!(state(s), None, "{s:?}");
        }
        // No traceparent, no tracestate.
        assert_eq!(Trace::from_headers(None, Some("foo=1")).state, None);
    }
}
