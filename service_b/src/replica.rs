//! One replica of Service A as B sees it: its address, its breaker, its calls in flight and
//! its latency estimate (a peak-EWMA of its answer times, which also counts how long it has
//! kept its calls waiting), and its slow start. Lock-free: every field is an atomic, so a
//! call's choice and its bookkeeping never wait on one another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::breaker::Breaker;

/// How fast the latency estimate forgets: the weight of an old estimate after `dt` without
/// an answer is `exp(-dt / TAU)`.
const TAU_NS: f64 = 1e9;

/// Nanoseconds on a clock an atomic can hold: since this process first asked, plus an hour,
/// so that "a while ago" is never before its start.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 3_600_000_000_000
}

/// One replica: an address of A, the URL prefix of its target, its breaker, its load and
/// how fast it has been answering.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    /// Which `--service-a-url` it came from (its index).
    pub(crate) target: usize,
    /// `http://IP:PORT/prefix`: calls never resolve a name.
    pub(crate) base: String,
    /// `/prefix/ready`, B's probe of it when it is ejected.
    pub(crate) ready_path: String,
    pub(crate) breaker: Breaker,
    /// Calls in flight on it.
    pending: AtomicUsize,
    /// Since when it has given no answer while calls wait on it (ns, see [`now_ns`]).
    busy_since: AtomicU64,
    /// Peak-EWMA of its answer time in ns (an `f64`'s bits), and when it was last updated.
    ewma: AtomicU64,
    ewma_at: AtomicU64,
    /// When a call last went to it.
    pub(crate) picked_at: AtomicU64,
    /// Its slow start: from when to when (ns); `0, 0` for none.
    slow_from: AtomicU64,
    slow_until: AtomicU64,
    /// It left the set: a call holding an older view must not retry on it.
    departed: AtomicBool,
    /// It said it is draining (`Connection: close` on an answer): when its `/ready` is next
    /// asked (ns, see [`now_ns`]); 0 when it is not draining.
    drain_check_at: AtomicU64,
}

impl Replica {
    /// A replica at `addr`, from the `target`-th `--service-a-url`, whose `/echo` is under
    /// `prefix`; no load, no estimate, no slow start.
    pub(crate) fn new(addr: SocketAddr, target: usize, prefix: &str, breaker: Breaker) -> Replica {
        let now = now_ns();
        Replica {
            addr,
            target,
            base: format!("http://{addr}{prefix}"),
            ready_path: format!("{prefix}/ready"),
            breaker,
            pending: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
            ewma: AtomicU64::new(0f64.to_bits()),
            ewma_at: AtomicU64::new(now),
            picked_at: AtomicU64::new(0),
            slow_from: AtomicU64::new(0),
            slow_until: AtomicU64::new(0),
            departed: AtomicBool::new(false),
            drain_check_at: AtomicU64::new(0),
        }
    }

    /// Counts a call in flight on this replica until the guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        if self.pending.fetch_add(1, Ordering::Relaxed) == 0 {
            self.busy_since.store(now_ns(), Ordering::Relaxed);
        }
        InFlight(self)
    }

    /// May calls go to it: breaker closed and still in the set.
    pub(crate) fn usable(&self) -> bool {
        self.breaker.available() && !self.departed.load(Ordering::Relaxed)
    }

    /// Whether it left its name's addresses (an IP of its own never does).
    pub(crate) fn departed(&self) -> bool {
        self.departed.load(Ordering::Relaxed)
    }

    /// Whether it said it is draining and has not said it is ready since: calls avoid it
    /// while another replica can take them (a lame duck, as Envoy and gRPC treat a
    /// connection that announces its end).
    pub(crate) fn draining(&self) -> bool {
        self.drain_check_at.load(Ordering::Relaxed) != 0
    }

    /// Marks it draining, its `/ready` to be asked after `check_in`; true if it was not.
    pub(crate) fn start_draining(&self, check_in: Duration) -> bool {
        let at = now_ns() + check_in.as_nanos() as u64;
        self.drain_check_at.swap(at, Ordering::Relaxed) == 0
    }

    /// When its `/ready` is next asked while it drains (ns), if it drains.
    pub(crate) fn drain_check_at(&self) -> Option<u64> {
        Some(self.drain_check_at.load(Ordering::Relaxed)).filter(|at| *at != 0)
    }

    /// Its `/ready` said 200: it takes calls again.
    pub(crate) fn stop_draining(&self) {
        self.drain_check_at.store(0, Ordering::Relaxed);
    }

    /// Marks it as having left the set (`true`) or come back (`false`).
    pub(crate) fn set_departed(&self, departed: bool) {
        self.departed.store(departed, Ordering::Relaxed);
    }

    /// The latency estimate in ns: the peak-EWMA of its answers, or how long it has kept
    /// the calls waiting on it without an answer, whichever is longer (so a replica that
    /// stops answering looks slower at once, not only after its calls time out).
    pub(crate) fn estimate_ns(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        if self.pending.load(Ordering::Relaxed) == 0 {
            return ewma;
        }
        let quiet = now.saturating_sub(self.busy_since.load(Ordering::Relaxed)) as f64;
        ewma.max(quiet)
    }

    /// What a call here is expected to cost: the estimate times the calls it would join.
    pub(crate) fn cost(&self, now: u64) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        (self.estimate_ns(now) + 1_000.0) * (pending + 1.0)
    }

    /// The share of calls it may take in its slow start (1.0 after it): from 10 % up,
    /// growing linearly.
    pub(crate) fn warm_share(&self, now: u64) -> f64 {
        let until = self.slow_until.load(Ordering::Relaxed);
        if now >= until {
            return 1.0;
        }
        let from = self.slow_from.load(Ordering::Relaxed);
        let done = now.saturating_sub(from) as f64 / until.saturating_sub(from).max(1) as f64;
        done.clamp(0.1, 1.0)
    }

    /// Starts its slow start now, from `estimate` (ns): a joining or returning replica, which
    /// is a new start of it, draining no longer.
    pub(crate) fn start_slowly(&self, slow_start: Duration, estimate: f64) {
        let now = now_ns();
        self.slow_from.store(now, Ordering::Relaxed);
        self.slow_until
            .store(now + slow_start.as_nanos() as u64, Ordering::Relaxed);
        self.set_estimate(estimate, now);
        self.stop_draining();
    }

    fn set_estimate(&self, ns: f64, now: u64) {
        self.ewma.store(ns.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// Calls in flight on it now.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Feeds the estimate one answer time (or a failure's penalty): a longer one is taken
    /// at once (the peak), a shorter one moves it by the time since the last. A probe's
    /// answer is the only news of a replica the choice passes over, so it counts as if
    /// `2 TAU` had passed: a recovered replica wins its share back in a few probes.
    pub(crate) fn observe(&self, took: Duration, probe: bool) {
        let now = now_ns();
        let sample = took.as_nanos() as f64;
        let old = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let mut dt = now.saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        if probe {
            dt = dt.max(2.0 * TAU_NS);
        }
        let next = if sample >= old {
            sample
        } else {
            let w = (-dt / TAU_NS).exp();
            old * w + sample * (1.0 - w)
        };
        self.busy_since.store(now, Ordering::Relaxed);
        self.set_estimate(next, now);
    }

    /// Readmitted by B's probe: starts slowly again, from the estimate of its peers.
    pub(crate) fn readmitted(&self, slow_start: Duration, peers: f64) {
        self.start_slowly(slow_start, peers);
    }
}

/// A call in flight on a replica (see [`Replica::enter`]).
pub(crate) struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::tests::replicas;

    #[test]
    fn the_estimate_takes_peaks_at_once_and_forgets_slowly() {
        let r = replicas(&["http://127.0.0.2:1"]);
        let one = &r.snapshot()[0];
        one.observe(Duration::from_millis(300), false);
        assert_eq!(one.estimate_ns(now_ns()), 300e6);
        one.observe(Duration::from_micros(300), false);
        let after = one.estimate_ns(now_ns());
        assert!(after < 300e6 && after > 250e6, "{after}");
        one.observe(Duration::from_micros(300), true);
        let probed = one.estimate_ns(now_ns());
        assert!(probed < after / 5.0, "a probe weighs more: {probed}");
        // A call that waits without an answer raises it while it waits.
        let _waiting = one.enter();
        one.busy_since
            .store(now_ns() - 900_000_000, Ordering::Relaxed);
        assert!(one.estimate_ns(now_ns()) >= 900e6);
    }
}
