//! The circuit breaker in front of one replica of Service A: after `threshold` failed calls in
//! a row it opens for `cooldown` (the replica is ejected: no call reaches it); then one trial
//! call is let through, and its outcome closes the breaker (readmitted) or opens it again.
//! It remembers the last failure, so a call refused while it is open can still say what went
//! wrong.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

/// Where the breaker stands; also the value of the `circuit_breaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls fail at once until `until`; the first call after it is the trial.
    Open { until: Instant },
    /// The trial call is in flight; other calls fail at once.
    HalfOpen,
}

impl State {
    fn gauge_value(self) -> i64 {
        match self {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen => 2,
        }
    }
}

/// A circuit breaker; `threshold` 0 switches it off.
#[derive(Debug)]
pub struct Breaker {
    /// Who it guards, for its log lines (`replica 10.0.0.2:8080`).
    name: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<Inner>,
    gauge: Mutex<Gauge>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Failures in a row so far (while closed) or when it opened, and the last one's cause.
    failures: u32,
    last: String,
}

/// Why a call was refused without reaching A: the breaker is open (or its trial is in
/// flight). Its `Display` is the 503 `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Until the next trial call may go through.
    pub left: Duration,
    /// Failed calls in a row that opened it.
    pub failures: u32,
    /// The last failure, as its 503 `details` said.
    pub last: String,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Circuit open after {} failures; last: {}; next try in {}ms",
            self.failures,
            self.last,
            self.left.as_millis()
        )
    }
}

/// Leave to make one call. Its outcome must be reported with [`Permit::record`]; a permit
/// dropped without one (a panic) counts as a failure, so a trial can never stay in flight.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// This call is the half-open trial: only its outcome may close or reopen the breaker.
    trial: bool,
    recorded: bool,
}

impl Permit<'_> {
    /// Reports the call's outcome: `None` for success, else the failure's cause.
    pub fn record(mut self, failure: Option<String>) {
        self.recorded = true;
        self.breaker.record(failure, self.trial);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let cause = "the call ended without an outcome".to_string();
            self.breaker.record(Some(cause), self.trial);
        }
    }
}

impl Breaker {
    /// `gauge` shows the state: 0 closed, 1 open, 2 half-open.
    pub fn new(name: &str, threshold: u32, cooldown: Duration, gauge: Gauge) -> Breaker {
        Breaker {
            name: name.to_string(),
            threshold,
            cooldown,
            state: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                failures: 0,
                last: String::new(),
            }),
            gauge: Mutex::new(gauge),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows the state on `gauge` from now on (a replica back under its name gets the
    /// gauge its metric label has now).
    pub fn show_on(&self, gauge: Gauge) {
        let inner = self.lock();
        gauge.set(inner.state.gauge_value());
        *self.gauge.lock().unwrap_or_else(|p| p.into_inner()) = gauge;
    }

    fn set(&self, state: &mut State, next: State) {
        *state = next;
        let gauge = self.gauge.lock().unwrap_or_else(|p| p.into_inner());
        gauge.set(next.gauge_value());
    }

    /// Leave to call A, or why not and until when.
    pub fn permit(&self) -> Result<Permit<'_>, Open> {
        let mut trial = false;
        if self.threshold > 0 {
            let mut inner = self.lock();
            let open = |inner: &Inner, left| Open {
                left,
                failures: inner.failures,
                last: inner.last.clone(),
            };
            match inner.state {
                State::Closed { .. } => {}
                State::Open { until } => match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => return Err(open(&inner, left)),
                    _ => {
                        trial = true;
                        self.set(&mut inner.state, State::HalfOpen);
                        log::warn!(target: "service_b", "{} half-open: letting one trial call through", self.name);
                    }
                },
                State::HalfOpen => {
                    return Err(open(&inner, self.cooldown.min(Duration::from_secs(1))))
                }
            }
        }
        Ok(Permit {
            breaker: self,
            trial,
            recorded: false,
        })
    }

    fn record(&self, failure: Option<String>, trial: bool) {
        if self.threshold == 0 {
            return;
        }
        let mut inner = self.lock();
        let ok = failure.is_none();
        let current = inner.state;
        // Counted while closed, and by the trial; a late call from before the opening is not.
        if let Some(cause) = failure.filter(|_| trial || matches!(current, State::Closed { .. })) {
            inner.failures = match current {
                State::Closed { failures } => failures + 1,
                _ => inner.failures + 1,
            };
            inner.last = cause;
        }
        let state = &mut inner.state;
        match (current, ok) {
            // A call let through before the breaker opened, finishing late: it neither
            // settles the trial nor counts again.
            (State::HalfOpen, _) | (State::Open { .. }, _) if !trial => {}
            (State::Closed { .. }, true) => self.set(state, State::Closed { failures: 0 }),
            (State::Closed { failures }, false) if failures + 1 >= self.threshold => {
                self.set(
                    state,
                    State::Open {
                        until: Instant::now() + self.cooldown,
                    },
                );
                log::warn!(target: "service_b", "{} ejected: {} failed calls in a row; trial call in {}ms", self.name, failures + 1, self.cooldown.as_millis());
            }
            (State::Closed { failures }, false) => self.set(
                state,
                State::Closed {
                    failures: failures + 1,
                },
            ),
            (State::HalfOpen, true) => {
                self.set(state, State::Closed { failures: 0 });
                log::warn!(target: "service_b", "{} readmitted: the trial call succeeded", self.name);
            }
            (State::HalfOpen, false) => {
                self.set(
                    state,
                    State::Open {
                        until: Instant::now() + self.cooldown,
                    },
                );
                log::warn!(target: "service_b", "{} ejected again: the trial call failed; next trial in {}ms", self.name, self.cooldown.as_millis());
            }
            (State::Open { .. }, _) => {}
        }
    }

    /// Whether a call may go through now: closed, or open with its cooldown over (the next
    /// call is the trial). Changes nothing.
    pub fn available(&self) -> bool {
        self.ejected().is_none()
    }

    /// `None` while [`Breaker::available`]; else why and for how long not (a half-open
    /// breaker, its trial in flight, counts as open for its cooldown, at most 1 s).
    pub fn ejected(&self) -> Option<Open> {
        if self.threshold == 0 {
            return None;
        }
        let inner = self.lock();
        let left = match inner.state {
            State::Closed { .. } => return None,
            State::Open { until } => until.checked_duration_since(Instant::now())?,
            State::HalfOpen => self.cooldown.min(Duration::from_secs(1)),
        };
        Some(Open {
            left,
            failures: inner.failures,
            last: inner.last.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Breaker {
        fn gauge_value(&self) -> i64 {
            self.gauge.lock().map(|g| g.get()).unwrap_or(-1)
        }
    }

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(
            "test",
            threshold,
            Duration::from_millis(cooldown_ms),
            Gauge::default(),
        )
    }

    fn fail(b: &Breaker) {
        b.permit()
            .expect("permitted")
            .record(Some("Connection error: refused".to_string()));
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let b = breaker(3, 60_000);
        fail(&b);
        fail(&b);
        b.permit().expect("permitted").record(None); // resets the count
        fail(&b);
        fail(&b);
        assert!(b.available());
        fail(&b);
        let open = b.permit().expect_err("open");
        assert!(open.left > Duration::from_secs(59), "{open:?}");
        assert_eq!(
            (open.failures, open.last.as_str()),
            (3, "Connection error: refused")
        );
        let details = open.to_string();
        let want = "Circuit open after 3 failures; last: Connection error: refused; next try in ";
        assert!(details.starts_with(want), "{details}");
        assert!(b.ejected().is_some_and(|o| o.failures == 3));
        assert_eq!(b.gauge_value(), 1);
    }

    #[test]
    fn one_trial_after_the_cooldown_closes_or_reopens() {
        let b = breaker(1, 0);
        fail(&b); // open, cooldown 0: the next permit is the trial
        assert!(b.available(), "cooldown over: ready for the trial");
        let trial = b.permit().expect("trial");
        assert_eq!(b.gauge_value(), 2);
        assert!(b.permit().is_err(), "only one trial at a time");
        assert!(!b.available(), "half-open: its trial is in flight");
        trial.record(Some("x".to_string()));
        assert_eq!(b.gauge_value(), 1);
        let trial = b.permit().expect("second trial");
        trial.record(None);
        assert_eq!(b.gauge_value(), 0);
        assert!(b.permit().is_ok());
    }

    #[test]
    fn only_the_trial_settles_the_half_open_breaker() {
        let b = breaker(1, 0);
        let late = b.permit().expect("while closed");
        fail(&b); // opens; cooldown 0
        let trial = b.permit().expect("trial");
        late.record(Some("late".to_string())); // a call from before, finishing now: ignored
        assert_eq!(b.gauge_value(), 2, "still half-open");
        trial.record(None);
        assert_eq!(b.gauge_value(), 0);
    }

    #[test]
    fn a_dropped_trial_counts_as_a_failure() {
        let b = breaker(1, 0);
        fail(&b);
        drop(b.permit().expect("trial"));
        assert_eq!(b.gauge_value(), 1);
    }

    #[test]
    fn threshold_zero_is_off() {
        let b = breaker(0, 60_000);
        for _ in 0..100 {
            fail(&b);
        }
        assert!(b.permit().is_ok());
        assert!(b.available());
    }
}
