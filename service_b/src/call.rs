//! The policy of a call from B to A: a bulkhead slot, a replica chosen by the balancer,
//! limits for the attempt, and at most one retry — for a failure before any byte of the answer, within
//! what is left of the one deadline, on another replica of B's current view when one is
//! usable (never the one that just failed, never one that left), else on a fresh connection
//! to the same, and only while the retry budget allows. Each attempt's outcome feeds its
//! replica's breaker and latency estimate; a refused connect or no usable replica asks for a
//! re-resolution at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::balance::DRAIN_CHECK_EVERY;
use crate::balance::{choose, fastest_estimate, Chosen, Events, Replica, Replicas};
use crate::error::{CallError, Failure, Retry, Verdict};
use crate::metrics::Upstream;
use crate::upstream::{Answer, EchoClient, Forward, Limits};
use crate::window::{outcome_index, CallStats};

mod guards;

use guards::{Bulkhead, RetryBudget};

/// A first try among several replicas waits at most this many times the fastest replica's
/// estimate for the head of the answer (at least [`PER_TRY_FLOOR`], at most half the
/// deadline), then the call moves on: Envoy's per-try timeout, learnt.
const PER_TRY_FACTOR: f64 = 10.0;
const PER_TRY_FLOOR: Duration = Duration::from_millis(100);
/// A revisit of a passed-over replica waits at most this many times the fastest estimate
/// (at least [`REVISIT_FLOOR`], at most the per-try limit): what a user pays when it is
/// still slow.
const REVISIT_FACTOR: f64 = 4.0;
const REVISIT_FLOOR: Duration = Duration::from_millis(20);
/// A replica's wrong answer (a 4xx, a false echo) counts against it when another replica
/// answered well within this long: then B did not ask wrongly.
const PEERS_ANSWERED_WITHIN: Duration = Duration::from_secs(10);
/// A wrong answer to a request that another replica then answered well counts as this many
/// failed calls for the breaker: the surest sign B gets, and one such replica, passed over
/// by the choice after its first, is otherwise tried only every 250 ms (a revisit), so
/// five in a row would take over a second.
const PROVEN_WRONG_WEIGHT: u32 = 2;

/// One attempt's outcome and how long it took.
type Tried = Result<(Answer, Duration), (Failure, Duration)>;

/// How a call to A ended, and on which replica (`None` when it was never made).
pub(crate) struct Call {
    pub(crate) result: Result<Value, CallError>,
    pub(crate) replica: Option<Arc<Replica>>,
}

/// What calls A: the client, the replicas, what guards them and the metrics of the calls.
#[derive(Debug)]
pub(crate) struct Caller {
    pub(crate) client: EchoClient,
    pub(crate) replicas: Arc<Replicas>,
    pub(crate) metrics: Arc<Upstream>,
    connect_timeout: Duration,
    bulkhead: Bulkhead,
    budget: RetryBudget,
    /// The calls of the last minute, for `/replicas`.
    pub(crate) stats: CallStats,
}

impl Caller {
    /// `max_inflight` calls at once, retries within `retry_percent` of the calls.
    pub(crate) fn new(
        client: EchoClient,
        replicas: Arc<Replicas>,
        metrics: Arc<Upstream>,
        connect_timeout: Duration,
        max_inflight: usize,
        retry_percent: u32,
    ) -> Caller {
        let gauge = metrics.in_flight.clone();
        Caller {
            client,
            replicas,
            metrics,
            connect_timeout,
            bulkhead: Bulkhead::new(max_inflight, gauge),
            budget: RetryBudget::new(retry_percent),
            stats: CallStats::default(),
        }
    }

    /// The bulkhead: its limit and the calls in it now.
    pub(crate) fn bulkhead(&self) -> (usize, usize) {
        self.bulkhead.now()
    }

    /// The retry budget: its percent of the calls, and the retries it allows now.
    pub(crate) fn retry_budget(&self) -> (u32, f64) {
        self.budget.now()
    }

    /// Calls A's `path` (`/echo?msg=…`, the echo of `msg` expected) with the forwarded
    /// headers, within `deadline` (at most `--timeout-ms`; a client's own
    /// `X-Request-Timeout-Ms` may shorten it).
    pub(crate) fn call(
        &self,
        msg: &str,
        path: &str,
        deadline: Duration,
        forward: Forward<'_>,
    ) -> Call {
        let never_made = |e| Call {
            result: Err(e),
            replica: None,
        };
        let timeout = deadline.min(self.client.timeout());
        if timeout.is_zero() {
            return never_made(CallError::Timeout(timeout)); // no time at all: A not called
        }
        let Some(_slot) = self.bulkhead.try_enter() else {
            return never_made(CallError::Overloaded(self.bulkhead.limit));
        };
        let started = Instant::now();
        let set = self.replicas.snapshot();
        let Some((first, chosen)) = choose(&set, None, true) else {
            self.replicas.resolve_soon("no_replica");
            return never_made(self.replicas.none_available(&set).into());
        };
        self.budget.deposit();
        let limits = self.first_limits(&set, chosen, timeout);
        let attempt = |replica: &Replica, limits| self.attempt(replica, msg, path, limits, forward);
        let outcome = attempt(first, limits);
        let revisit = chosen == Chosen::Revisit;
        if revisit {
            self.metrics.probed(first.addr, "latency", outcome.is_ok());
        }
        let failed = match outcome {
            Err(failed) if failed.0.retry != Retry::No => failed,
            outcome => return self.done(started, first, outcome, revisit, None),
        };
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            let (failure, took) = failed;
            let timed_out = Failure {
                error: CallError::Timeout(timeout),
                ..failure
            };
            return self.done(started, first, Err((timed_out, took)), revisit, None);
        }
        if !self.budget.withdraw() {
            self.metrics.retries_denied.inc();
            self.stats.retry(false);
            log::debug!(target: "service_b", "not retried (the retry budget is spent): {} request_id={}", failed.0.error, forward.request_id);
            return self.done(started, first, Err(failed), revisit, None);
        }
        // From the view now: another usable replica, else (when nothing of the answer
        // arrived) the same on a fresh connection (a pooled connection may have died while
        // idle), where the call counts once.
        let now = self.replicas.snapshot();
        let (replica, fresh) = match choose(&now, Some(first.addr), false) {
            Some((second, _)) => (Arc::clone(second), false),
            None if failed.0.retry == Retry::Anywhere && !first.departed() => {
                (Arc::clone(first), true)
            }
            None => return self.done(started, first, Err(failed), revisit, None),
        };
        self.metrics.retries.inc();
        self.stats.retry(true);
        log::debug!(target: "service_b", "retrying on replica {} after {} failed request_id={}", replica.addr, first.addr, forward.request_id);
        let limits = Limits {
            deadline: timeout,
            left,
            connect: Some(self.connect_timeout.min(left)),
            head: None,
            fresh,
        };
        let outcome = attempt(&replica, limits);
        if fresh {
            return self.done(started, &replica, outcome, false, None);
        }
        self.judged(started, (first, failed, revisit), &replica, outcome)
    }

    /// Ends a call retried on another replica: the two answers to the same request judge
    /// each other. A wrong answer where the other answered well is the replica's; wrong
    /// answers from both say B asked wrongly, and count against neither.
    fn judged(
        &self,
        started: Instant,
        (first, failed, revisit): (&Replica, (Failure, Duration), bool),
        replica: &Arc<Replica>,
        outcome: Tried,
    ) -> Call {
        let suspect = |f: &Failure| matches!(f.verdict, Verdict::Suspect(_));
        let first_suspect = suspect(&failed.0);
        let second_suspect = matches!(&outcome, Err((f, _)) if suspect(f));
        let evidence = match &outcome {
            Ok(_) => Some(true),
            Err(_) if second_suspect => Some(false),
            Err(_) => None,
        };
        self.record(first, &Err(failed), revisit, evidence);
        let evidence = (first_suspect && second_suspect).then_some(false);
        self.done(started, replica, outcome, false, evidence)
    }

    /// The limits of a first try: alone, the whole deadline for every phase; among
    /// several, `--connect-timeout-ms` to connect and a learnt per-try limit for the head
    /// of the answer; a revisit, a tighter one.
    fn first_limits(&self, set: &[Arc<Replica>], chosen: Chosen, timeout: Duration) -> Limits {
        let fastest = Duration::from_nanos(fastest_estimate(set) as u64);
        let per_try = fastest
            .mul_f64(PER_TRY_FACTOR)
            .max(PER_TRY_FLOOR)
            .min(timeout / 2);
        let head = match chosen {
            Chosen::Only => {
                return Limits {
                    deadline: timeout,
                    left: timeout,
                    connect: None,
                    head: None,
                    fresh: false,
                }
            }
            Chosen::Balanced => per_try,
            Chosen::Revisit => fastest
                .mul_f64(REVISIT_FACTOR)
                .max(REVISIT_FLOOR)
                .min(per_try),
        };
        Limits {
            deadline: timeout,
            left: timeout,
            connect: Some(self.connect_timeout.min(head.max(REVISIT_FLOOR))),
            head: Some(head),
            fresh: false,
        }
    }

    /// One attempt on `replica`, counted in its load.
    fn attempt(
        &self,
        replica: &Replica,
        msg: &str,
        path: &str,
        limits: Limits,
        forward: Forward<'_>,
    ) -> Tried {
        let _load = replica.enter();
        let started = Instant::now();
        let url = format!("{}{path}", replica.base);
        self.client
            .attempt(&url, msg, limits, forward)
            .map(|answer| (answer, started.elapsed()))
            .map_err(|failure| (failure, started.elapsed()))
    }

    /// What an attempt teaches about its replica: its breaker and latency estimate, and a
    /// re-resolution when its connect was refused. A wrong answer ([`Verdict::Suspect`])
    /// counts against it when `evidence` says another replica answered the same call well
    /// (`Some(false)`: it answered wrongly too), or, without evidence, when another replica
    /// answered well lately.
    fn record(&self, replica: &Replica, outcome: &Tried, revisit: bool, evidence: Option<bool>) {
        let kind = outcome
            .as_ref()
            .map_or_else(|(f, _)| f.error.kind(), |_| "ok");
        let second = self.stats.clock.second(Instant::now());
        replica.outcomes.add(second, outcome_index(kind));
        let (failure, took) = match outcome {
            Ok((answer, took)) => {
                replica.breaker.succeeded();
                replica.answered_well();
                // Perhaps a notice that it drains, perhaps its habit (keep-alive off): its
                // /ready tells, asked by the upkeep at once.
                if answer.closing && replica.closed_connection(DRAIN_CHECK_EVERY) {
                    self.replicas.wake_upkeep();
                }
                return replica.load.observe(*took, revisit);
            }
            Err((failure, took)) => (failure, *took),
        };
        let verdict = match (&failure.error, failure.verdict) {
            // The client's own deadline, shorter than B's, passed: the replica is at least
            // that slow, not failing.
            (CallError::Timeout(d), Verdict::Failing) if *d < self.client.timeout() => {
                Verdict::Slower(took)
            }
            (_, verdict) => verdict,
        };
        match verdict {
            Verdict::BsOwn => {}
            Verdict::Slower(at_least) => replica.load.observe(took.max(at_least), revisit),
            Verdict::Suspect(_)
                if !evidence.unwrap_or_else(|| self.peers_answered(replica.addr)) =>
            {
                replica.breaker.succeeded(); // B asked wrongly: it answered what all answer
            }
            Verdict::Failing | Verdict::Suspect(_) => {
                let proven =
                    evidence == Some(true) && matches!(failure.verdict, Verdict::Suspect(_));
                let weight = if proven { PROVEN_WRONG_WEIGHT } else { 1 };
                self.failing(replica, failure, took, revisit, weight);
            }
        }
        if failure.refused {
            self.replicas.resolve_soon("refused");
        }
    }

    /// Whether a replica other than `except` answered a call well lately.
    fn peers_answered(&self, except: std::net::SocketAddr) -> bool {
        let set = self.replicas.snapshot();
        set.iter()
            .any(|r| r.addr != except && r.answered_within(PEERS_ANSWERED_WITHIN))
    }

    /// A failed call of `replica`: its estimate takes a penalty, its breaker counts it (a
    /// 429's `Retry-After` ejects it at once for that long).
    fn failing(
        &self,
        replica: &Replica,
        failure: &Failure,
        took: Duration,
        revisit: bool,
        weight: u32,
    ) {
        let penalty = took.max(self.client.timeout() / 2);
        replica.load.observe(penalty, revisit);
        let set = self.replicas.snapshot();
        let cause = failure.error.to_string();
        let may_eject = || self.replicas.may_eject(&set);
        let ejected = match failure.verdict {
            Verdict::Suspect(Some(wait)) => replica.breaker.hold(cause, wait, may_eject),
            _ => replica.breaker.failed_as(weight, cause, may_eject),
        };
        if ejected {
            self.metrics.ejected(replica.addr);
            self.replicas.wake_upkeep();
        }
    }

    /// Ends the call on `replica`: records the last attempt and the duration.
    fn done(
        &self,
        started: Instant,
        replica: &Arc<Replica>,
        outcome: Tried,
        revisit: bool,
        evidence: Option<bool>,
    ) -> Call {
        self.record(replica, &outcome, revisit, evidence);
        self.metrics
            .duration
            .0
            .observe(started.elapsed().as_secs_f64());
        Call {
            result: outcome
                .map(|(answer, _)| answer.value)
                .map_err(|(failure, _)| failure.error),
            replica: Some(Arc::clone(replica)),
        }
    }
}
