//! What guards the calls to A: the bulkhead (at most so many calls in flight) and the
//! retry budget (retries at most a share of the calls).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// The retry budget holds at most this many retries (and starts full): a burst beyond the
/// budget's share, for a fleet with little traffic.
const BUDGET_BURST: i64 = 10;

/// At most `limit` calls to A at once; a slot is held for the whole call.
#[derive(Debug)]
pub(super) struct Bulkhead {
    pub(super) limit: usize,
    used: AtomicUsize,
    gauge: Gauge,
}

/// One slot of the bulkhead, given back on drop.
pub(super) struct Slot<'a>(&'a Bulkhead);

impl Bulkhead {
    /// At most `limit` (at least 1) calls at once, shown in `gauge`.
    pub(super) fn new(limit: usize, gauge: Gauge) -> Bulkhead {
        Bulkhead {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            gauge,
        }
    }

    /// A slot, or `None` when `limit` calls are in flight.
    /// Its limit and the calls in it now (for `/replicas`).
    pub(super) fn now(&self) -> (usize, usize) {
        let used = self.used.load(Ordering::Relaxed);
        (self.limit, used.min(self.limit))
    }

    pub(super) fn try_enter(&self) -> Option<Slot<'_>> {
        let before = self.used.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(self);
        if before >= self.limit {
            return None; // dropping `slot` gives the count back
        }
        self.gauge.set((before + 1) as i64);
        Some(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let now = self.0.used.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.gauge.set(now.min(self.0.limit) as i64);
    }
}

/// Retries at most a share of the calls (Linkerd's and Envoy's retry budgets): each call
/// adds its share of a retry, a retry takes a whole one, and at most [`BUDGET_BURST`] are
/// kept, so a failing fleet is never sent twice its load. In thousandths, one atomic.
#[derive(Debug)]
pub(super) struct RetryBudget {
    per_call: i64,
    tokens: AtomicI64,
}

impl RetryBudget {
    /// Each call adds `percent` hundredths of a retry.
    pub(super) fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            per_call: i64::from(percent) * 10,
            tokens: AtomicI64::new(BUDGET_BURST * 1000),
        }
    }

    /// A call was made: its share of a retry.
    /// Its percent of the calls, and the retries it allows now (for `/replicas`).
    pub(super) fn now(&self) -> (u32, f64) {
        let tokens = self.tokens.load(Ordering::Relaxed).max(0);
        ((self.per_call / 10) as u32, tokens as f64 / 1000.0)
    }

    pub(super) fn deposit(&self) {
        let before = self.tokens.fetch_add(self.per_call, Ordering::Relaxed);
        if before + self.per_call > BUDGET_BURST * 1000 {
            self.tokens
                .fetch_min(BUDGET_BURST * 1000, Ordering::Relaxed);
        }
    }

    /// A retry, if the budget holds one.
    pub(super) fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_allows_its_share_and_a_burst() {
        let budget = RetryBudget::new(20);
        let burst = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(burst, BUDGET_BURST as usize);
        for _ in 0..50 {
            budget.deposit();
        }
        let allowed = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(allowed, 10, "20 % of 50 calls");
        for _ in 0..10_000 {
            budget.deposit();
        }
        assert_eq!(
            (0..100).take_while(|_| budget.withdraw()).count(),
            10,
            "never above the burst"
        );
        let none = RetryBudget::new(0);
        (0..10).for_each(|_| {
            none.withdraw();
        });
        none.deposit();
        assert!(!none.withdraw());
    }
}
