//! B's one background thread for its replicas: it resolves A's names again every
//! `--resolve-every-ms` and at once when a call asks (see `Replicas::resolve_soon`), and it
//! starts the probe of each ejected replica when its cooldown ends, B's own `GET /ready`
//! (503 while A drains) on a thread of its own (see `probe`), which readmits it on a 200
//! as fast as the fleet answers and ejects it again, for longer, on anything else; and it
//! asks a replica that said it drains for its `/ready` until it says 200. No probe can
//! hold up a re-resolution or another probe.
//! So no user call is ever the trial of an ejected replica, and no call ever resolves.
//! It also runs its owner's [`Chore`] on its timer (B closes its idle connections gone
//! stale, see `upstream::Pool::prune`).

use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::ewma::now_ns;
use super::probe::{self, PROBE_TIMEOUT};
use super::replica::{fastest_estimate, median_estimate};
use super::replica::{Replica, DRAIN_CHECK_EVERY};
use super::set::{Replicas, Wake};

/// A job the upkeep thread runs every `every`, for the one who starts it.
pub(crate) struct Chore {
    pub(crate) every: Duration,
    pub(crate) run: Box<dyn Fn() + Send>,
}

/// Starts the thread; it ends once the replicas are dropped.
pub(crate) fn start(replicas: &Arc<Replicas>, resolve_every: Duration, chore: Chore) {
    let weak: Weak<Replicas> = Arc::downgrade(replicas);
    let wake = Arc::clone(&replicas.wake);
    let spawned = thread::Builder::new()
        .name("service_b-upkeep".to_string())
        .spawn(move || run(&weak, &wake, resolve_every, &chore));
    if let Err(e) = spawned {
        log::error!(target: "service_b", "cannot start the upkeep thread: {e}; names are not resolved again and ejected replicas are not probed");
    }
}

fn run(weak: &Weak<Replicas>, wake: &Wake, every: Duration, chore: &Chore) {
    let mut next_resolution = Instant::now() + every;
    let mut next_chore = Instant::now() + chore.every;
    let mut asked = None;
    loop {
        let Some(replicas) = weak.upgrade() else {
            return;
        };
        if Instant::now() >= next_chore {
            (chore.run)();
            next_chore = Instant::now() + chore.every;
        }
        if let Some(why) = asked.take() {
            resolve(&replicas, why);
        } else if Instant::now() >= next_resolution {
            // Moved on even with no name to resolve: a time left in the past would make
            // every wait below 1 ms long.
            if replicas.has_names() {
                resolve(&replicas, "periodic");
            }
            next_resolution = Instant::now() + every;
        }
        let set = replicas.snapshot();
        start_probes(&replicas, &set);
        // Sleep until the next resolution, probe or chore, whichever comes first; a call may
        // wake us sooner. The replicas are not held meanwhile, so they can be dropped.
        let now = Instant::now();
        let mut until = next_resolution.min(next_chore).max(now);
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
    replicas.events.resolved(why);
    if why != "periodic" {
        log::info!(target: "service_b", "resolving Service A's names again now: {why}");
    }
    replicas.resolve_now(Some(why));
}

/// Starts the probes due: of each ejected replica whose cooldown ended, and of each
/// draining one whose check is due, each on a thread of its own while there is room.
fn start_probes(replicas: &Arc<Replicas>, set: &Arc<[Arc<Replica>]>) {
    for replica in set.iter() {
        if !probe::room() {
            return; // the next look starts the rest
        }
        let owned = (Arc::clone(replicas), Arc::clone(set), Arc::clone(replica));
        if replica.breaker.probe_due() {
            let (replicas, set, target) = owned;
            let job = move || self::probe(&replicas, &set, &target);
            if !probe::spawn(job) {
                let _ = replica
                    .breaker
                    .probed(Some("no thread for its probe".to_string()));
            }
        } else if replica.drain_check_at().is_some_and(|at| at <= now_ns()) {
            // Not asked again while this check runs.
            replica.start_draining(PROBE_TIMEOUT + DRAIN_CHECK_EVERY);
            let (replicas, set, target) = owned;
            probe::spawn(move || check_drain(&replicas, &set, &target));
        } else if replica.take_close_check() {
            let (replicas, _, target) = owned;
            probe::spawn(move || check_close(&replicas, &target));
        }
    }
}

/// B's own `GET /ready` of an ejected replica, and what it decides: a 200 readmits it
/// when it came as fast as the fleet answers (its limit, see `probe::limit_for`), and the
/// replica then starts from that limit as its estimate, pessimistic until its calls show
/// otherwise.
fn probe(replicas: &Replicas, set: &[Arc<Replica>], replica: &Replica) {
    let (median, fastest) = (median_estimate(set), fastest_estimate(set));
    let (limit, judged) = probe::limit_for(fastest);
    let failure = match probe::ready(replica.addr, &replica.ready_path, limit) {
        Ok((200, _)) => None,
        Ok((other, _)) => Some(format!("/ready answered {other}")),
        Err(e) if judged => Some(format!(
            "/ready: {e}, as fast as the fleet answers (its fastest estimate {:.1}ms)",
            fastest / 1e6
        )),
        Err(e) => Some(format!("/ready: {e}")),
    };
    let ok = failure.is_none();
    replicas.events.probed(replica.addr, "health", ok);
    if replica.breaker.probed(failure) {
        let start = if judged {
            limit.as_nanos() as f64
        } else {
            median
        };
        replica.start_slowly(replicas.settings.slow_start, start.max(median));
    } else {
        replicas.events.ejected(replica.addr);
    }
}

/// B's own `GET /ready` of a replica whose answer closed its connection: a 503 says it
/// drains (no new calls while others can take them, until its `/ready` says 200); a 200
/// says it only closes its connections (keep-alive off), and it keeps its share.
fn check_close(replicas: &Replicas, replica: &Replica) {
    let status = probe::ready(replica.addr, &replica.ready_path, PROBE_TIMEOUT);
    let ready = matches!(status, Ok((200, _)));
    replicas.events.probed(replica.addr, "drain", ready);
    if matches!(status, Ok((503, _))) && replica.start_draining(DRAIN_CHECK_EVERY) {
        log::info!(target: "service_b", "replica {} is draining (an answer closed its connection, its /ready says 503): no new calls while others can take them, until its /ready says 200", replica.addr);
        replicas.events.drained(replica.addr);
    }
}

/// B's own `GET /ready` of a replica that said it drains: on a 200 (a new process at the
/// address, or a drain called off) it takes calls again; when nothing answers at all, the
/// drain is over and the process gone: it is ejected now (no call is sent to find out) and
/// probed back like any ejected replica; else it is asked again later.
fn check_drain(replicas: &Replicas, set: &[Arc<Replica>], replica: &Replica) {
    let status = probe::ready(replica.addr, &replica.ready_path, PROBE_TIMEOUT);
    let ready = status.as_ref().is_ok_and(|(status, _)| *status == 200);
    replicas.events.probed(replica.addr, "drain", ready);
    if ready {
        replica.stop_draining();
        log::info!(target: "service_b", "replica {} is ready again after its drain", replica.addr);
        return;
    }
    if let Err(e) = status {
        let cause = format!("its drain is over: /ready: {e}");
        if replica.breaker.gone(cause, || replicas.may_eject(set)) {
            replica.stop_draining();
            replicas.events.ejected(replica.addr);
            return;
        }
    }
    replica.start_draining(DRAIN_CHECK_EVERY);
}
