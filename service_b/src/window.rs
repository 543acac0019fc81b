//! Rolling counts of the last minute, per second, for `/replicas` and the live page: small
//! ring buffers of 60 one-second buckets of atomics. A call adds to its second's bucket with
//! one compare-and-swap and no lock; each counter carries the second it counts, so a bucket
//! left from a minute ago reads as zero and the first call of a new second restarts it,
//! with no sweeper thread and no count lost at the boundary. Reading sums what is there.
//! [`CallStats`] holds B's own: its calls by outcome and latency, its retries, and the
//! last failed calls (a failure also takes a short lock to be remembered).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds kept: the page's strip chart and the 60 s outcome counts.
pub(crate) const SECONDS: usize = 60;

/// The outcome kinds counted: a call's `ok`, or its 503 `kind`.
pub(crate) const OUTCOMES: [&str; 7] = [
    "ok",
    "connect",
    "timeout",
    "status",
    "bad_response",
    "circuit_open",
    "overloaded",
];

/// The index of an outcome in [`OUTCOMES`] (an unknown kind counts as the last).
pub(crate) fn outcome_index(kind: &str) -> usize {
    OUTCOMES
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(OUTCOMES.len() - 1)
}

/// The wall clock in milliseconds since the Unix epoch (what the page shows).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `N` counters per second over the last [`SECONDS`] seconds.
#[derive(Debug)]
pub(crate) struct Window<const N: usize> {
    /// Each counter: its second (Unix, upper 32 bits) and its count (lower 32).
    buckets: [[AtomicU64; N]; SECONDS],
}

impl<const N: usize> Default for Window<N> {
    fn default() -> Self {
        Window {
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl<const N: usize> Window<N> {
    /// Counts one event of counter `i` in second `now` (Unix seconds).
    pub(crate) fn add(&self, now: u64, i: usize) {
        let Some(counter) = self.buckets[now as usize % SECONDS].get(i) else {
            return;
        };
        let stamp = (now & 0xffff_ffff) << 32;
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v & !0xffff_ffff == stamp {
                v + 1
            } else {
                stamp | 1
            })
        });
    }

    /// The counts of second `second`, zero when its bucket holds another second.
    pub(crate) fn at(&self, second: u64) -> [u64; N] {
        let stamp = (second & 0xffff_ffff) << 32;
        let bucket = &self.buckets[second as usize % SECONDS];
        std::array::from_fn(|i| {
            let v = bucket[i].load(Ordering::Relaxed);
            if v & !0xffff_ffff == stamp {
                v & 0xffff_ffff
            } else {
                0
            }
        })
    }

    /// The counts of the last `seconds` seconds up to `now`, `now` included.
    pub(crate) fn sum(&self, now: u64, seconds: u64) -> [u64; N] {
        let mut total = [0; N];
        for second in now.saturating_sub(seconds.min(SECONDS as u64) - 1)..=now {
            for (t, n) in total.iter_mut().zip(self.at(second)) {
                *t += n;
            }
        }
        total
    }
}

/// Latency buckets: four per doubling from 16 µs (2^4) to about 17 s (2^24).
pub(crate) const LATENCY_BUCKETS: usize = 80;

/// The bucket of a latency in microseconds: its doubling, then which quarter of it (integer
/// operations only: this runs once per call).
pub(crate) fn latency_bucket(micros: u64) -> usize {
    let micros = micros.max(16);
    let doubling = 63 - micros.leading_zeros() as usize; // 4 for 16 µs
    let quarter = (micros >> (doubling - 2)) as usize & 3;
    ((doubling - 4) * 4 + quarter).min(LATENCY_BUCKETS - 1)
}

/// The lower bound of a bucket, in microseconds.
fn bucket_floor(bucket: usize) -> f64 {
    let (doubling, quarter) = (bucket / 4 + 4, bucket % 4);
    (1u64 << doubling) as f64 * (1.0 + quarter as f64 / 4.0)
}

/// The 99th percentile of one second's latency counts, in milliseconds (the middle of its
/// bucket, so within 12.5 % of the truth); `None` without a call.
pub(crate) fn p99_ms(counts: &[u64; LATENCY_BUCKETS]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total * 99).div_ceil(100);
    let mut seen = 0;
    let bucket = counts
        .iter()
        .position(|n| {
            seen += n;
            seen >= rank
        })
        .unwrap_or(LATENCY_BUCKETS - 1);
    let middle = (bucket_floor(bucket) + bucket_floor(bucket + 1)) / 2.0;
    Some(middle / 1000.0)
}

/// Failed calls remembered for the page.
pub(crate) const RECENT_FAILURES: usize = 20;

/// B's wall clock against its monotonic one, so a call's second is read from the instants
/// it already took.
#[derive(Debug)]
pub(crate) struct Clock {
    at: Instant,
    unix_ms: u64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            at: Instant::now(),
            unix_ms: unix_ms(),
        }
    }
}

impl Clock {
    /// The Unix second of `instant`.
    pub(crate) fn second(&self, instant: Instant) -> u64 {
        (self.unix_ms + instant.saturating_duration_since(self.at).as_millis() as u64) / 1000
    }
}

/// One failed call, as the page lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) at_ms: u64,
    pub(crate) request_id: String,
    pub(crate) kind: &'static str,
    pub(crate) details: String,
    pub(crate) replica: Option<SocketAddr>,
}

/// B's calls over the last minute: by outcome, their latency, retries, and the last
/// failures.
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) clock: Clock,
    pub(crate) outcomes: Window<7>,
    pub(crate) latency: Window<LATENCY_BUCKETS>,
    /// Retried, and not retried because the budget was spent.
    pub(crate) retries: Window<2>,
    failures: Mutex<VecDeque<Failure>>,
}

impl CallStats {
    /// Counts a call that ended at `end` with outcome `kind`; `took` if A was called.
    pub(crate) fn call(&self, end: Instant, kind: &str, took: Option<Duration>) {
        let second = self.clock.second(end);
        self.outcomes.add(second, outcome_index(kind));
        if let Some(took) = took {
            self.latency
                .add(second, latency_bucket(took.as_micros() as u64));
        }
    }

    /// Counts a retry (`spent`) or one the budget denied.
    pub(crate) fn retry(&self, spent: bool) {
        let second = self.clock.second(Instant::now());
        self.retries.add(second, usize::from(!spent));
    }

    /// Counts a call begun at `started` that ended now with outcome `kind`, on `replica`
    /// (`None`: A was not called); a failed one (its request id and 503 details) is also
    /// remembered.
    pub(crate) fn ended(
        &self,
        started: Instant,
        kind: &'static str,
        replica: Option<SocketAddr>,
        failed: Option<(&str, String)>,
    ) {
        let end = Instant::now();
        let made = replica.map(|_| end.saturating_duration_since(started));
        self.call(end, kind, made);
        if let Some((request_id, details)) = failed {
            self.failed(Failure {
                at_ms: unix_ms(),
                request_id: request_id.to_string(),
                kind,
                details,
                replica,
            });
        }
    }

    /// Remembers a failed call, forgetting the oldest beyond [`RECENT_FAILURES`].
    pub(crate) fn failed(&self, failure: Failure) {
        let mut list = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == RECENT_FAILURES {
            list.pop_front();
        }
        list.push_back(failure);
    }

    /// The remembered failures, oldest first.
    pub(crate) fn failures(&self) -> MutexGuard<'_, VecDeque<Failure>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_second_and_forgets_after_a_minute() {
        let w = Window::<3>::default();
        let t = 1_764_000_000;
        w.add(t, 0);
        w.add(t, 0);
        w.add(t, 2);
        w.add(t + 1, 1);
        w.add(t + 1, 9); // out of range: ignored
        assert_eq!(w.at(t), [2, 0, 1]);
        assert_eq!(w.sum(t + 1, 10), [2, 1, 1]);
        assert_eq!(w.sum(t + 1, 1), [0, 1, 0]);
        // The same bucket a minute later: a new count, the old ones not read.
        w.add(t + 60, 0);
        assert_eq!(w.at(t + 60), [1, 0, 0]);
        assert_eq!(w.sum(t + 60, 60), [1, 1, 0]);
        assert_eq!(w.sum(t + 120, 60), [0, 0, 0]);
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let w = Window::<1>::default();
        let t = 1_764_000_000;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..10_000).for_each(|_| w.add(t, 0)));
            }
        });
        assert_eq!(w.at(t), [40_000]);
    }

    #[test]
    fn outcomes_and_latency_buckets() {
        assert_eq!(outcome_index("ok"), 0);
        assert_eq!(outcome_index("overloaded"), 6);
        assert_eq!(outcome_index("surprise"), 6);
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(16), 0);
        assert_eq!(latency_bucket(32), 4);
        assert_eq!((latency_bucket(39), latency_bucket(40)), (4, 5));
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // Every bucket holds the latencies from its floor to the next one's.
        for micros in [16, 17, 100, 999, 1_000, 65_535, 300_000, 16_000_000] {
            let b = latency_bucket(micros);
            assert!(bucket_floor(b) <= micros as f64 && (micros as f64) < bucket_floor(b + 1));
        }
        let mut counts = [0; LATENCY_BUCKETS];
        assert_eq!(p99_ms(&counts), None);
        counts[latency_bucket(1_000)] = 99; // 1 ms
        counts[latency_bucket(300_000)] = 1; // 300 ms: the 100th of 100
        let p99 = p99_ms(&counts).unwrap_or(0.0);
        assert!((0.9..1.1).contains(&p99), "{p99}");
        counts[latency_bucket(300_000)] = 2;
        let p99 = p99_ms(&counts).unwrap_or(0.0);
        assert!((270.0..330.0).contains(&p99), "{p99}");
    }
}
