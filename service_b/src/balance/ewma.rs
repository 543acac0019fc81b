//! A replica's load, as the choice of replica sees it: a peak-EWMA of its answer times
//! (Finagle's and tower's Peak-EWMA) that also counts how long it has kept its calls
//! waiting without an answer, and its calls in flight. Lock-free: each answer claims the
//! time since the last update (`fetch_max`) and folds itself into the estimate with a
//! compare-and-swap, retried on conflict, so two answers at once never lose an update (a
//! load, compute and store could); the choice reads it with one load.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How fast the estimate forgets: the weight of an old estimate after `dt` without an
/// answer is `exp(-dt / TAU)`.
const TAU_NS: f64 = 1e9;

/// Nanoseconds on a clock an atomic can hold: since this process first asked, plus an hour,
/// so that "a while ago" is never before its start.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 3_600_000_000_000
}

/// Peak-EWMA latency and calls in flight of one replica.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// The estimate in ns (an `f64`'s bits).
    ewma: AtomicU64,
    /// When it was last updated (ns, see [`now_ns`]).
    at: AtomicU64,
    /// Calls in flight.
    pending: AtomicUsize,
    /// Since when it has given no answer while calls wait on it (ns, see [`now_ns`]).
    busy_since: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> PeakEwma {
        PeakEwma {
            ewma: AtomicU64::new(0f64.to_bits()),
            at: AtomicU64::new(now_ns()),
            pending: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
        }
    }
}

impl PeakEwma {
    /// Counts a call in flight until the guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        if self.pending.fetch_add(1, Ordering::Relaxed) == 0 {
            self.busy_since.store(now_ns(), Ordering::Relaxed);
        }
        InFlight(self)
    }

    /// Calls in flight now.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The latency estimate in ns: the peak-EWMA of the answers, or how long the calls in
    /// flight have waited without an answer, whichever is longer (so a replica that stops
    /// answering looks slower at once, not only after its calls time out).
    pub(crate) fn estimate_ns(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        if self.pending() == 0 {
            return ewma;
        }
        let quiet = now.saturating_sub(self.busy_since.load(Ordering::Relaxed)) as f64;
        ewma.max(quiet)
    }

    /// What a call here is expected to cost: the estimate times the calls it would join.
    pub(crate) fn cost(&self, now: u64) -> f64 {
        (self.estimate_ns(now) + 1_000.0) * (self.pending() as f64 + 1.0)
    }

    /// Sets the estimate to `ns` (a joining or readmitted replica starts from its peers').
    pub(crate) fn reset(&self, ns: f64) {
        self.ewma.store(ns.to_bits(), Ordering::Relaxed);
        self.at.store(now_ns(), Ordering::Relaxed);
    }

    /// Feeds the estimate one answer time (or a failure's penalty): a longer one is taken
    /// at once (the peak), a shorter one moves it by the time since the last. A revisit's
    /// answer is the only news of a replica the choice passes over, so it counts as if
    /// `2 TAU` had passed: a recovered replica wins its share back in a few revisits.
    pub(crate) fn observe(&self, took: Duration, revisit: bool) {
        let now = now_ns();
        let sample = took.as_nanos() as f64;
        let last = self.at.fetch_max(now, Ordering::Relaxed);
        let mut dt = now.saturating_sub(last) as f64;
        if revisit {
            dt = dt.max(2.0 * TAU_NS);
        }
        let w = (-dt / TAU_NS).exp();
        let fold = |bits: u64| {
            let old = f64::from_bits(bits);
            let next = if sample >= old {
                sample
            } else {
                old * w + sample * (1.0 - w)
            };
            Some(next.to_bits())
        };
        // `fold` always returns Some: the update cannot fail, only be retried.
        let _ = self
            .ewma
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, fold);
        self.busy_since.store(now, Ordering::Relaxed);
    }
}

/// A call in flight (see [`PeakEwma::enter`]).
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a PeakEwma);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_takes_peaks_at_once_and_forgets_slowly() {
        let load = PeakEwma::default();
        load.observe(Duration::from_millis(300), false);
        assert_eq!(load.estimate_ns(now_ns()), 300e6);
        load.observe(Duration::from_micros(300), false);
        let after = load.estimate_ns(now_ns());
        assert!(after < 300e6 && after > 250e6, "{after}");
        load.observe(Duration::from_micros(300), true);
        let revisited = load.estimate_ns(now_ns());
        assert!(
            revisited < after / 5.0,
            "a revisit weighs more: {revisited}"
        );
        // A call that waits without an answer raises it while it waits.
        let _waiting = load.enter();
        load.busy_since
            .store(now_ns() - 900_000_000, Ordering::Relaxed);
        assert!(load.estimate_ns(now_ns()) >= 900e6);
    }
}
