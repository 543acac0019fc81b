//! The request-id rule: a well-formed incoming id is kept so a caller can follow its request
//! through both services; anything else (absent, too long, odd characters) is replaced.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The id a request is logged and answered with: `incoming` if it is valid, else a new one.
pub fn request_id(incoming: Option<&str>) -> String {
    match incoming {
        Some(id) if is_valid_request_id(id) => id.to_string(),
        _ => new_request_id(),
    }
}

/// `^[A-Za-z0-9._-]{1,128}$`: nothing that could break a header or a log line.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 16 hex digits from a per-process randomly keyed hash of a counter: unique within the
/// process by construction and across restarts by the random keys, with no extra crate.
pub(crate) fn new_request_id() -> String {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_replaced() {
        assert_eq!(request_id(Some("abc-1.2_3")), "abc-1.2_3");
        let long = "a".repeat(128);
        assert_eq!(request_id(Some(&long)), long);
        for bad in ["", "a b", "a\nb", "ä", "a/b", &"a".repeat(129)] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert!(is_valid_request_id(&id));
        }
        let fresh = request_id(None);
        assert_eq!(fresh.len(), 16);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_request_id(), new_request_id());
    }
}
