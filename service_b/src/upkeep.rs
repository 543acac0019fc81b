//! B's one background thread for its replicas: it resolves A's names again every
//! `--resolve-every-ms` and at once when a call asks (see `Replicas::resolve_soon`), and it
//! probes each ejected replica when its cooldown ends, with B's own `GET /ready` (503 while
//! A drains), readmitting it on a 200 and ejecting it again, for longer, on anything else;
//! and it asks a replica that said it drains for its `/ready` until it says 200.
//! So no user call is ever the trial of an ejected replica, and no call ever resolves.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::call::DRAIN_CHECK_EVERY;
use crate::replica::{now_ns, Replica};
use crate::replicas::{median_estimate, Replicas};

/// The longest B waits for an ejected replica's `/ready`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How calls wake the thread: a re-resolution asked for, and why.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    state: Mutex<Rung>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct Rung {
    rung: bool,
    asked: Option<&'static str>,
}

impl Wake {
    /// Asks for a re-resolution (`Some(why)`), or only for another look at the probes due.
    pub(crate) fn ring(&self, why: Option<&'static str>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.rung = true;
        if why.is_some() {
            state.asked = why;
        }
        self.cv.notify_all();
    }

    /// Waits at most `limit` for a ring; returns the re-resolution asked for, if any.
    fn wait(&self, limit: Duration) -> Option<&'static str> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut state, _) = self
            .cv
            .wait_timeout_while(state, limit, |s| !s.rung)
            .unwrap_or_else(|p| p.into_inner());
        state.rung = false;
        state.asked.take()
    }
}

/// Starts the thread; it ends once the replicas are dropped.
pub(crate) fn start(replicas: &Arc<Replicas>, resolve_every: Duration) {
    let weak: Weak<Replicas> = Arc::downgrade(replicas);
    let wake = Arc::clone(&replicas.wake);
    let spawned = thread::Builder::new()
        .name("service_b-upkeep".to_string())
        .spawn(move || run(&weak, &wake, resolve_every));
    if let Err(e) = spawned {
        log::error!(target: "service_b", "cannot start the upkeep thread: {e}; names are not resolved again and ejected replicas are not probed");
    }
}

fn run(weak: &Weak<Replicas>, wake: &Wake, every: Duration) {
    let mut next_resolution = Instant::now() + every;
    let mut asked = None;
    loop {
        let Some(replicas) = weak.upgrade() else {
            return;
        };
        if let Some(why) = asked.take() {
            resolve(&replicas, why);
        } else if Instant::now() >= next_resolution && replicas.has_names() {
            resolve(&replicas, "periodic");
            next_resolution = Instant::now() + every;
        }
        let set = replicas.snapshot();
        for replica in set.iter().filter(|r| r.breaker.probe_due()) {
            probe(&replicas, &set, replica);
        }
        let at_ns = now_ns();
        let draining_due = |r: &&Arc<Replica>| r.drain_check_at().is_some_and(|at| at <= at_ns);
        for replica in set.iter().filter(draining_due) {
            check_drain(&replicas, replica);
        }
        // Sleep until the next resolution or probe, whichever comes first; a call may wake
        // us sooner. The replicas are not held meanwhile, so they can be dropped.
        let now = Instant::now();
        let mut until = next_resolution.max(now);
        if let Some(soonest) = set.iter().filter_map(|r| r.breaker.probe_at()).min() {
            until = until.min(soonest.max(now));
        }
        if let Some(soonest) = set.iter().filter_map(|r| r.drain_check_at()).min() {
            until = until.min(now + Duration::from_nanos(soonest.saturating_sub(now_ns())));
        }
        drop(set);
        drop(replicas);
        asked = wake.wait(
            until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        );
    }
}

fn resolve(replicas: &Replicas, why: &'static str) {
    replicas
        .metrics
        .resolutions
        .get_or_create(&crate::metrics::ReasonLabel { reason: why })
        .inc();
    if why != "periodic" {
        log::info!(target: "service_b", "resolving Service A's names again now: {why}");
    }
    replicas.resolve_now(Some(why));
}

/// B's own `GET /ready` of an ejected replica, and what it decides.
fn probe(replicas: &Replicas, set: &[Arc<Replica>], replica: &Replica) {
    let status = echo_core::client::status_of(replica.addr, &replica.ready_path, PROBE_TIMEOUT);
    let failure = match status {
        Ok(200) => None,
        Ok(other) => Some(format!("/ready answered {other}")),
        Err(e) => Some(format!("/ready: {e}")),
    };
    let ok = failure.is_none();
    replicas.metrics.probed(replica.addr, "health", ok);
    if replica.breaker.probed(failure) {
        replica.readmitted(replicas.settings.slow_start, median_estimate(set));
    } else {
        replicas.metrics.ejected(replica.addr);
    }
}

/// B's own `GET /ready` of a replica that said it drains: on a 200 (a new process at the
/// address, or a drain called off) it takes calls again; else it is asked again later.
fn check_drain(replicas: &Replicas, replica: &Replica) {
    let ready = echo_core::client::status_of(replica.addr, &replica.ready_path, PROBE_TIMEOUT)
        .is_ok_and(|status| status == 200);
    replicas.metrics.probed(replica.addr, "drain", ready);
    if ready {
        replica.stop_draining();
        log::info!(target: "service_b", "replica {} is ready again after its drain", replica.addr);
    } else {
        replica.start_draining(DRAIN_CHECK_EVERY);
    }
}
