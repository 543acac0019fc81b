//! The deadline a caller passes on: how long it will wait for the answer, and the mark of an
//! answer refused for lack of time.

use std::time::Duration;

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
pub(crate) fn parse_budget(value: &str) -> Option<Duration> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_whole_milliseconds() {
        assert_eq!(parse_budget("1999"), Some(Duration::from_millis(1999)));
        assert_eq!(parse_budget(" 0\t"), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "1e3", "0x10", "1234567890", "\u{a0}5"] {
            assert_eq!(parse_budget(bad), None, "{bad:?}");
        }
    }
}
