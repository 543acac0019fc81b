//! The breaker of one replica of Service A: after `threshold` failed calls in a row the
//! replica is ejected (no call reaches it) for a cooldown that doubles with each ejection in
//! a row, up to a cap, and resets once the replica has stayed in for five first cooldowns.
//! After the cooldown B's own probe (A's `/ready`, in the background, see `upkeep`) decides:
//! success readmits it, failure ejects it again for longer. No user call is ever the trial.
//! Whether a replica may be ejected at all is decided by its set (never more than a share of
//! the replicas). While closed, the breaker costs one atomic load per call and no lock; the
//! lock is taken on failures and state changes only. It remembers the last failure, so a
//! call refused while every replica is out can still say what went wrong.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Ejected;

/// Calls go through.
const IN: u8 = 0;
/// Ejected until its cooldown ends.
const EJECTED: u8 = 1;
/// The cooldown ended and B's probe is deciding.
const PROBING: u8 = 2;

/// A breaker; `threshold` 0 switches it off.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Who it guards, for its log lines (`replica 10.0.0.2:8080`).
    name: String,
    threshold: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    state: AtomicU8,
    /// Failed calls in a row while closed.
    failures: AtomicU32,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Failures in a row when it opened, and the last one's cause.
    failures: u32,
    last: String,
    /// When the current cooldown ends.
    until: Instant,
    /// Ejections in a row (the cooldown doubles with each).
    ejections: u32,
    /// When it was last readmitted (or created).
    closed_since: Instant,
    /// The cooldown of the current ejection.
    cooldown: Duration,
}

impl Breaker {
    /// A closed breaker that ejects after `threshold` failures in a row, for `cooldown`
    /// doubling up to `max_cooldown`.
    pub(crate) fn new(
        name: &str,
        threshold: u32,
        cooldown: Duration,
        max_cooldown: Duration,
    ) -> Breaker {
        Breaker {
            name: name.to_string(),
            threshold,
            cooldown,
            max_cooldown: max_cooldown.max(cooldown),
            state: AtomicU8::new(IN),
            failures: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                failures: 0,
                last: String::new(),
                until: Instant::now(),
                ejections: 0,
                closed_since: Instant::now(),
                cooldown: Duration::ZERO,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `circuit_breaker_state` of the metrics: 0 closed, 1 open (ejected), 2 half-open
    /// (being probed).
    pub(crate) fn state_value(&self) -> i64 {
        i64::from(self.state.load(Ordering::Relaxed))
    }

    /// The cooldown of the current ejection (zero while in).
    pub(crate) fn cooldown(&self) -> Duration {
        match self.state.load(Ordering::Relaxed) {
            IN => Duration::ZERO,
            _ => self.lock().cooldown,
        }
    }

    /// Whether calls may go to the replica: closed (or switched off).
    pub(crate) fn available(&self) -> bool {
        self.threshold == 0 || self.state.load(Ordering::Relaxed) == IN
    }

    /// A call succeeded: the count of failures in a row starts again.
    pub(crate) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed with `cause` (its 503 details). At the threshold the replica is
    /// ejected if `may_eject` says its set allows one more ejection; else it stays in
    /// (the latency-aware choice still steers calls away) and the count goes on. A call
    /// that ends while the breaker is not closed (it started before) changes nothing.
    /// Returns whether this failure ejected the replica.
    pub(crate) fn failed(&self, cause: String, may_eject: impl FnOnce() -> bool) -> bool {
        self.failed_as(1, cause, may_eject)
    }

    /// Like [`Breaker::failed`], for a failure that counts as `weight` failed calls: a wrong
    /// answer to a request another replica answered well is the surest sign there is.
    pub(crate) fn failed_as(
        &self,
        weight: u32,
        cause: String,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        if self.threshold == 0 || self.state.load(Ordering::SeqCst) != IN {
            return false;
        }
        let failures = self.failures.fetch_add(weight, Ordering::SeqCst) + weight;
        let mut inner = self.lock();
        inner.last = cause;
        if failures < self.threshold {
            return false;
        }
        if !may_eject() {
            if failures - weight < self.threshold {
                log::warn!(target: "service_b", "{} not ejected after {failures} failed calls in a row: as many replicas as may be are out already", self.name);
            }
            return false;
        }
        inner.failures = failures;
        self.eject(&mut inner, &format!("{failures} failed calls in a row"));
        true
    }

    /// The replica is gone (its drain over, nothing answers): ejected now, whatever the
    /// count, if `may_eject` allows one more. Returns whether it was ejected.
    pub(crate) fn gone(&self, cause: String, may_eject: impl FnOnce() -> bool) -> bool {
        if self.threshold == 0 || self.state.load(Ordering::SeqCst) != IN || !may_eject() {
            return false;
        }
        let mut inner = self.lock();
        self.eject(&mut inner, &cause);
        inner.last = cause;
        true
    }

    /// The replica asked to be left alone for `wait` (a 429's `Retry-After`): it is ejected
    /// at once for that long (at most the longest cooldown), if `may_eject` allows one more
    /// ejection, else the answer counts as one failed call. Its ejection series does not
    /// grow: it asked, it did not fail. Returns whether it was ejected.
    pub(crate) fn hold(
        &self,
        cause: String,
        wait: Duration,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        if self.threshold == 0 || self.state.load(Ordering::SeqCst) != IN {
            return false;
        }
        if !may_eject() {
            return self.failed(cause, || false);
        }
        let failures = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inner = self.lock();
        let cooldown = wait.min(self.max_cooldown);
        inner.last = cause;
        inner.failures = failures;
        inner.until = Instant::now() + cooldown;
        inner.cooldown = cooldown;
        self.state.store(EJECTED, Ordering::SeqCst);
        log::warn!(target: "service_b", "{} ejected: it answered 429 with Retry-After; probe in {}ms", self.name, cooldown.as_millis());
        true
    }

    /// How long a readmitted replica stays in before its ejection series ends, so that an
    /// old fault does not lengthen the cooldown of the next: five first cooldowns (10 s at
    /// the defaults), at most the longest cooldown.
    fn series_end(&self) -> Duration {
        self.cooldown.saturating_mul(5).min(self.max_cooldown)
    }

    /// Opens the breaker for the next cooldown of the series.
    fn eject(&self, inner: &mut Inner, why: &str) {
        if inner.closed_since.elapsed() >= self.series_end()
            && self.state.load(Ordering::SeqCst) == IN
        {
            inner.ejections = 0; // served for long enough: the series starts again
        }
        let doubling = 1u32.checked_shl(inner.ejections).unwrap_or(u32::MAX);
        let cooldown = self
            .cooldown
            .saturating_mul(doubling)
            .min(self.max_cooldown);
        inner.ejections = inner.ejections.saturating_add(1);
        inner.until = Instant::now() + cooldown;
        inner.cooldown = cooldown;
        self.state.store(EJECTED, Ordering::SeqCst);
        log::warn!(target: "service_b", "{} ejected: {why}; probe in {}ms (ejection {} in a row)", self.name, cooldown.as_millis(), inner.ejections);
    }

    /// Whether the cooldown is over and B's probe should decide now; true once per
    /// cooldown (the breaker is half-open until [`Breaker::probed`]).
    pub(crate) fn probe_due(&self) -> bool {
        if self.state.load(Ordering::SeqCst) != EJECTED || self.lock().until > Instant::now() {
            return false;
        }
        self.state
            .compare_exchange(EJECTED, PROBING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Which ejection in a row the current (or last) one is: the cooldown doubles with each.
    pub(crate) fn ejections_in_a_row(&self) -> u32 {
        self.lock().ejections
    }

    /// When the current cooldown ends (`None` while closed).
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        (self.state.load(Ordering::SeqCst) == EJECTED).then(|| self.lock().until)
    }

    /// The probe's outcome: `None` readmits the replica (and returns true); a failure
    /// ejects it again, for longer.
    pub(crate) fn probed(&self, failure: Option<String>) -> bool {
        let mut inner = self.lock();
        if self.state.load(Ordering::SeqCst) != PROBING {
            return false;
        }
        match failure {
            None => {
                self.failures.store(0, Ordering::SeqCst);
                inner.closed_since = Instant::now();
                self.state.store(IN, Ordering::SeqCst);
                log::warn!(target: "service_b", "{} readmitted: B's probe succeeded", self.name);
                true
            }
            Some(cause) => {
                let why = format!("B's probe failed: {cause}");
                self.eject(&mut inner, &why);
                false
            }
        }
    }

    /// Its name resolves to it again after it left: most likely a new process at the same
    /// address, which owes nothing to the old one's failures. An ejection series starts
    /// again, and an ejected replica is probed at once rather than at the end of a cooldown
    /// that may have grown to the longest.
    pub(crate) fn returned(&self) {
        let mut inner = self.lock();
        inner.ejections = 0;
        if self.state.load(Ordering::SeqCst) == EJECTED {
            inner.until = Instant::now();
        }
    }

    /// `None` while calls may go through; else why not and until when (a replica being
    /// probed counts as out for at most 1 s more).
    pub(crate) fn ejected(&self) -> Option<Ejected> {
        if self.available() {
            return None;
        }
        let inner = self.lock();
        let left = match self.state.load(Ordering::SeqCst) {
            EJECTED => inner.until.saturating_duration_since(Instant::now()),
            _ => self.cooldown.min(Duration::from_secs(1)),
        };
        Some(Ejected {
            left,
            failures: inner.failures,
            last: inner.last.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
