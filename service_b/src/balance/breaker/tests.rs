//! The breaker's unit tests: ejection, probes, series, holds.
use super::*;

fn breaker(threshold: u32, cooldown_ms: u64, max_ms: u64) -> Breaker {
    Breaker::new(
        "test",
        threshold,
        Duration::from_millis(cooldown_ms),
        Duration::from_millis(max_ms),
    )
}

fn fail(b: &Breaker) -> bool {
    b.failed("Connection error: refused".to_string(), || true)
}

#[test]
fn ejects_after_threshold_failures_in_a_row() {
    let b = breaker(3, 60_000, 60_000);
    fail(&b);
    fail(&b);
    b.succeeded(); // resets the count
    fail(&b);
    fail(&b);
    assert!(b.available());
    assert!(fail(&b), "the third in a row ejects");
    assert!(!b.available());
    let open = b.ejected().expect("ejected");
    assert!(open.left > Duration::from_secs(59), "{open:?}");
    assert_eq!(
        (open.failures, open.last.as_str()),
        (3, "Connection error: refused")
    );
    assert_eq!(
        (b.state_value(), b.cooldown()),
        (1, Duration::from_secs(60))
    );
}

#[test]
fn the_probe_decides_and_each_ejection_in_a_row_lasts_longer() {
    let b = breaker(1, 0, 0);
    fail(&b);
    assert!(b.probe_due(), "cooldown 0: due at once");
    assert!(!b.probe_due(), "one probe per cooldown");
    assert_eq!(b.state_value(), 2);
    assert!(b.probed(None));
    assert!(b.available());
    assert_eq!(b.state_value(), 0);

    let b = breaker(1, 100, 350);
    fail(&b);
    assert_eq!(b.cooldown(), Duration::from_millis(100));
    for want in [200, 350, 350] {
        b.lock().until = Instant::now(); // as if the cooldown were over
        assert!(b.probe_due());
        assert!(!b.probed(Some("refused".to_string())));
        assert_eq!(b.cooldown(), Duration::from_millis(want));
    }
    assert!(!b.available());
    assert!(b
        .ejected()
        .is_some_and(|o| o.last == "Connection error: refused"));
}

#[test]
fn a_returning_replica_is_probed_at_once_and_its_series_starts_again() {
    let b = breaker(1, 100, 10_000);
    fail(&b);
    for _ in 0..4 {
        b.lock().until = Instant::now();
        assert!(b.probe_due());
        assert!(!b.probed(Some("refused".to_string())));
    }
    assert_eq!(b.cooldown(), Duration::from_millis(1600));
    assert!(!b.probe_due(), "not before its cooldown");
    b.returned();
    assert!(b.probe_due(), "at once once it returns");
    assert!(!b.probed(Some("refused".to_string())));
    assert_eq!(b.cooldown(), Duration::from_millis(100), "a new series");
}

#[test]
fn a_retry_after_ejects_at_once_for_its_wait_without_growing_the_series() {
    let b = breaker(5, 100, 10_000);
    assert!(b.hold("429".to_string(), Duration::from_secs(3), || true));
    assert_eq!((b.state_value(), b.cooldown()), (1, Duration::from_secs(3)));
    b.lock().until = Instant::now();
    assert!(b.probe_due() && b.probed(None));
    assert!(b.hold("429".to_string(), Duration::from_secs(60), || true));
    assert_eq!(b.cooldown(), Duration::from_secs(10), "at most the longest");
    b.lock().until = Instant::now();
    assert!(b.probe_due() && b.probed(None));
    for _ in 0..5 {
        fail(&b);
    }
    assert_eq!(
        b.cooldown(),
        Duration::from_millis(100),
        "the series did not grow"
    );
    let full = breaker(5, 100, 10_000);
    assert!(!full.hold("429".to_string(), Duration::from_secs(3), || false));
    assert!(full.available(), "beyond the share, it stays in");
}

#[test]
fn a_series_ends_after_five_first_cooldowns_in() {
    let b = breaker(1, 100, 10_000);
    fail(&b);
    for _ in 0..3 {
        b.lock().until = Instant::now();
        assert!(b.probe_due());
        b.probed(Some("refused".to_string()));
    }
    assert_eq!(b.cooldown(), Duration::from_millis(800));
    b.lock().until = Instant::now();
    assert!(b.probe_due() && b.probed(None));
    b.lock().closed_since = Instant::now() - Duration::from_millis(400);
    fail(&b);
    assert_eq!(
        b.cooldown(),
        Duration::from_millis(1600),
        "in too short: the series goes on"
    );
    b.lock().until = Instant::now();
    assert!(b.probe_due() && b.probed(None));
    b.lock().closed_since = Instant::now() - Duration::from_millis(500);
    fail(&b);
    assert_eq!(b.cooldown(), Duration::from_millis(100), "a new series");
}

#[test]
fn a_refused_ejection_keeps_the_replica_in() {
    let b = breaker(2, 1000, 1000);
    for _ in 0..5 {
        assert!(!b.failed("x".to_string(), || false));
    }
    assert!(b.available());
    assert!(b.failed("x".to_string(), || true));
    assert!(!b.available());
}

#[test]
fn a_late_failure_changes_nothing_and_threshold_zero_is_off() {
    let b = breaker(1, 60_000, 60_000);
    fail(&b);
    fail(&b); // a call from before the ejection, ending now
    assert_eq!(b.ejected().map(|o| o.failures), Some(1));
    let off = breaker(0, 60_000, 60_000);
    for _ in 0..100 {
        fail(&off);
    }
    assert!(off.available() && off.ejected().is_none());
}
