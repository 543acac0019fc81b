//! One replica of Service A as B sees it: its address, its breaker, its load (a
//! [`PeakEwma`]), its slow start, and whether it drains or left. Lock-free: its flags and
//! times are atomics and its estimate is updated by compare-and-swap, so a call's choice and
//! its bookkeeping never wait on one another. The choice sees it only through
//! [`Candidate`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::breaker::Breaker;
use super::choice::{Candidate, Eligibility, Load};
use super::ewma::{now_ns, InFlight, PeakEwma};
use crate::window::Window;

/// A replica that said it drains has its `/ready` asked this often until it says 200.
pub(crate) const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(500);

/// One replica: an address of A, the URL prefix of its target, its breaker, its load and
/// how fast it has been answering.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    /// Which `--service-a-url` it came from (its index).
    pub(crate) target: usize,
    /// `http://IP:PORT/prefix`: calls never resolve a name.
    pub(crate) base: String,
    /// `/prefix/ready`, asked by B's probe of it when it is ejected or draining.
    pub(crate) ready_path: String,
    pub(crate) breaker: Breaker,
    /// Its latency estimate and calls in flight.
    pub(crate) load: PeakEwma,
    /// Its attempts of the last minute by outcome, for `/replicas` (counted by the caller).
    pub(crate) outcomes: Window<7>,
    /// When the choice last gave it a call (ns, see [`now_ns`]).
    picked_at: AtomicU64,
    /// Its slow start: from when to when (ns); `0, 0` for none.
    slow_from: AtomicU64,
    slow_until: AtomicU64,
    /// It left the set: a call holding an older view must not retry on it.
    departed: AtomicBool,
    /// It said it is draining (`Connection: close` on an answer): when its `/ready` is next
    /// asked (ns, see [`now_ns`]); 0 when it is not draining.
    drain_check_at: AtomicU64,
    /// When it last answered a call well (ns, see [`now_ns`]; 0: never).
    answered_at: AtomicU64,
    /// When an answer that closed its connection last asked for a look at its `/ready`
    /// (ns, see [`now_ns`]; 0: never).
    close_asked_at: AtomicU64,
    /// That look is due (the upkeep takes it).
    close_check_due: AtomicBool,
}

impl Replica {
    /// A replica at `addr`, from the `target`-th `--service-a-url`, whose `/echo` is under
    /// `prefix`; no load, no estimate, no slow start.
    pub(crate) fn new(addr: SocketAddr, target: usize, prefix: &str, breaker: Breaker) -> Replica {
        Replica {
            addr,
            target,
            base: format!("http://{addr}{prefix}"),
            ready_path: format!("{prefix}/ready"),
            breaker,
            load: PeakEwma::default(),
            outcomes: Window::default(),
            picked_at: AtomicU64::new(0),
            slow_from: AtomicU64::new(0),
            slow_until: AtomicU64::new(0),
            departed: AtomicBool::new(false),
            drain_check_at: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            close_asked_at: AtomicU64::new(0),
            close_check_due: AtomicBool::new(false),
        }
    }

    /// An answer closed its connection (`Connection: close`): a notice that it drains, or
    /// its habit (keep-alive off, legal HTTP/1.1). True when its `/ready` should be asked
    /// now: it is not known to drain and was not asked within `every`.
    pub(crate) fn closed_connection(&self, every: Duration) -> bool {
        let now = now_ns();
        let last = self.close_asked_at.load(Ordering::Relaxed);
        if self.draining() || (last != 0 && now.saturating_sub(last) < every.as_nanos() as u64) {
            return false;
        }
        let claimed = self
            .close_asked_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if claimed {
            self.close_check_due.store(true, Ordering::Relaxed);
        }
        claimed
    }

    /// Takes the look at its `/ready` asked by an answer that closed its connection.
    pub(crate) fn take_close_check(&self) -> bool {
        self.close_check_due.swap(false, Ordering::Relaxed)
    }

    /// It answered a call well: the echo of the message sent.
    pub(crate) fn answered_well(&self) {
        self.answered_at.store(now_ns(), Ordering::Relaxed);
    }

    /// Whether it answered a call well within `within`.
    pub(crate) fn answered_within(&self, within: Duration) -> bool {
        let at = self.answered_at.load(Ordering::Relaxed);
        at != 0 && now_ns().saturating_sub(at) <= within.as_nanos() as u64
    }

    /// Counts a call in flight on this replica until the guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        self.load.enter()
    }

    /// May calls go to it: breaker closed and still in the set.
    pub(crate) fn usable(&self) -> bool {
        self.breaker.available() && !self.departed()
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

    /// The share of calls it may take in its slow start (1.0 after it): from 10 % up,
    /// growing linearly.
    fn warm_share(&self, now: u64) -> f64 {
        let until = self.slow_until.load(Ordering::Relaxed);
        if now >= until {
            return 1.0;
        }
        let from = self.slow_from.load(Ordering::Relaxed);
        let done = now.saturating_sub(from) as f64 / until.saturating_sub(from).max(1) as f64;
        done.clamp(0.1, 1.0)
    }

    /// The share of its full share it may take now, while in its slow start.
    pub(crate) fn slow_start_share(&self) -> Option<f64> {
        Some(self.warm_share(now_ns())).filter(|share| *share < 1.0)
    }

    /// Starts its slow start now, from `estimate` (ns): a joining, returning or readmitted
    /// replica, which is a new start of it, draining no longer.
    pub(crate) fn start_slowly(&self, slow_start: Duration, estimate: f64) {
        let now = now_ns();
        self.slow_from.store(now, Ordering::Relaxed);
        self.slow_until
            .store(now + slow_start.as_nanos() as u64, Ordering::Relaxed);
        self.load.reset(estimate);
        self.stop_draining();
    }
}

impl Candidate for Replica {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn eligibility(&self) -> Eligibility {
        match (self.usable(), self.draining()) {
            (false, _) => Eligibility::Out,
            (true, true) => Eligibility::Draining,
            (true, false) => Eligibility::Ready,
        }
    }

    fn load(&self, now: u64) -> Load {
        Load {
            cost: self.load.cost(now),
            warm_share: self.warm_share(now),
        }
    }

    fn picked_at(&self) -> &AtomicU64 {
        &self.picked_at
    }
}

/// The middle estimate of the usable replicas (0 with none): where a joining replica starts.
pub(crate) fn median_estimate(set: &[Arc<Replica>]) -> f64 {
    let now = now_ns();
    let mut estimates: Vec<f64> = set
        .iter()
        .filter(|r| r.usable())
        .map(|r| r.load.estimate_ns(now))
        .collect();
    estimates.sort_by(f64::total_cmp);
    estimates.get(estimates.len() / 2).copied().unwrap_or(0.0)
}

/// The lowest latency estimate among the usable replicas (ns), for per-try limits.
pub(crate) fn fastest_estimate(set: &[Arc<Replica>]) -> f64 {
    let now = now_ns();
    set.iter()
        .filter(|r| r.usable())
        .map(|r| r.load.estimate_ns(now))
        .min_by(f64::total_cmp)
        .unwrap_or(0.0)
}
