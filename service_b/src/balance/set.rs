//! The set of replicas of Service A that B balances over: every address of every
//! `--service-a-url` (a name resolving to several addresses means all of them), each a
//! [`Replica`] that keeps its state across re-resolutions. Names are resolved at start, then in the
//! background (`upkeep`) every `--resolve-every-ms` and at once (at most every
//! [`MIN_RESOLVE_GAP`]) when a call finds no usable replica or a connect is refused; never
//! on a call's path. An IP literal is never resolved. A replica that joins a running set
//! starts slowly (see `choice`). The set owns the [`Wake`] by which calls wake its upkeep
//! thread, and tells what happens to it through [`Events`] (the caller's metrics).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::breaker::Breaker;
use super::discovery::{Resolve, Target};
use super::ewma::now_ns;
use super::replica::{median_estimate, Replica};
use crate::error::NoReplica;

/// Re-resolutions asked for by calls (no usable replica, a refused connect) come at most
/// this often; the periodic one runs regardless.
pub(crate) const MIN_RESOLVE_GAP: Duration = Duration::from_millis(250);
/// The settings every replica's breaker and start share.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) threshold: u32,
    pub(crate) cooldown: Duration,
    pub(crate) max_cooldown: Duration,
    pub(crate) max_ejected_percent: u32,
    pub(crate) slow_start: Duration,
    /// How long what B knows of a replica that left is kept (`--forget-departed-ms`).
    pub(crate) forget_departed: Duration,
}

/// What happens to the set, told to whoever counts it (B's metrics).
pub(crate) trait Events: Send + Sync + std::fmt::Debug {
    /// A replica was ejected (by its calls or by a failed probe).
    fn ejected(&self, replica: SocketAddr);
    /// A replica was seen draining: an answer closed its connection and its `/ready` said
    /// 503.
    fn drained(&self, replica: SocketAddr);
    /// B's own `GET /ready` of a replica: `kind` `health` (ejected) or `drain` (draining,
    /// or an answer closed its connection).
    fn probed(&self, replica: SocketAddr, kind: &'static str, ok: bool);
    /// A replica that left was forgotten (`--forget-departed-ms` after it left): its
    /// labels go.
    fn forgotten(&self, replica: SocketAddr);
    /// The names were resolved again, because of `why`.
    fn resolved(&self, why: &'static str);
}

/// How calls wake the upkeep thread: a re-resolution asked for, and why.
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
    fn ring(&self, why: Option<&'static str>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.rung = true;
        if why.is_some() {
            state.asked = why;
        }
        self.cv.notify_all();
    }

    /// Waits at most `limit` for a ring; returns the re-resolution asked for, if any.
    pub(crate) fn wait(&self, limit: Duration) -> Option<&'static str> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut state, _) = self
            .cv
            .wait_timeout_while(state, limit, |s| !s.rung)
            .unwrap_or_else(|p| p.into_inner());
        state.rung = false;
        state.asked.take()
    }
}

/// The replica set, replaced whole when a resolution changes it.
pub(crate) struct Replicas {
    targets: Vec<Target>,
    resolve: Resolve,
    current: RwLock<Arc<[Arc<Replica>]>>,
    /// The errors of the last resolution (empty when every name resolved).
    unresolved: RwLock<String>,
    /// Replicas a name stopped resolving to, and since when: one that comes back within
    /// `--forget-departed-ms` keeps its breaker (an ejected replica still owes its probe).
    departed: Mutex<Vec<(Arc<Replica>, Instant)>>,
    pub(crate) settings: Settings,
    pub(crate) events: Arc<dyn Events>,
    /// How calls wake the upkeep thread.
    pub(crate) wake: Arc<Wake>,
    /// When a call last asked for a re-resolution.
    asked_at: AtomicU64,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("targets", &self.targets)
            .field("current", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// Resolves every target once (names may fail now and resolve later).
    pub(crate) fn new(
        targets: Vec<Target>,
        resolve: Resolve,
        settings: Settings,
        events: Arc<dyn Events>,
    ) -> Replicas {
        let replicas = Replicas {
            targets,
            resolve,
            current: RwLock::new(Arc::from(Vec::new())),
            unresolved: RwLock::new(String::new()),
            departed: Mutex::new(Vec::new()),
            settings,
            events,
            wake: Arc::new(Wake::default()),
            asked_at: AtomicU64::new(0),
        };
        replicas.resolve_now(None);
        replicas
    }

    /// The replicas as the config line shows them: `[10.0.0.2:8080, …]`, or why none.
    pub(crate) fn describe(&self) -> String {
        let set = self.snapshot();
        if set.is_empty() {
            let why = self.unresolved.read().unwrap_or_else(|p| p.into_inner());
            return format!("[] ({why})");
        }
        let list: Vec<String> = set.iter().map(|r| r.addr.to_string()).collect();
        format!("[{}]", list.join(", "))
    }

    /// Whether any target is a name, to be re-resolved in the background.
    pub(crate) fn has_names(&self) -> bool {
        self.targets.iter().any(|t| t.ip().is_none())
    }

    /// The replicas now, for one choice.
    pub(crate) fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks the upkeep thread to resolve the names again now, because of `why`; at most
    /// once per [`MIN_RESOLVE_GAP`], and only when there are names to resolve.
    pub(crate) fn resolve_soon(&self, why: &'static str) {
        let now = now_ns();
        let last = self.asked_at.load(Ordering::Relaxed);
        if !self.has_names() || (last != 0 && now - last < MIN_RESOLVE_GAP.as_nanos() as u64) {
            return;
        }
        if self
            .asked_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another call asked just now
        }
        self.wake.ring(Some(why));
    }

    /// Asks the upkeep thread to look at the probes due again (a replica was ejected or
    /// drains).
    pub(crate) fn wake_upkeep(&self) {
        self.wake.ring(None);
    }

    /// Resolves every target and swaps in the new set, keeping the state (breaker, load,
    /// estimate) of addresses still there; a target that fails to resolve keeps its
    /// previous addresses. `why` is logged with what changed (`None` at start, where the
    /// config line shows the set).
    pub(crate) fn resolve_now(&self, why: Option<&str>) {
        let old = self.snapshot();
        let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        let peers = median_estimate(&old);
        let mut next: Vec<Arc<Replica>> = Vec::new();
        let mut errors = Vec::new();
        for (index, target) in self.targets.iter().enumerate() {
            let addrs = match target.resolve(&self.resolve) {
                Ok(addrs) => addrs,
                Err(e) => {
                    errors.push(e);
                    let previous = old.iter().filter(|r| r.target == index);
                    previous.map(|r| r.addr).collect()
                }
            };
            for addr in addrs {
                if next.iter().any(|r| r.addr == addr) {
                    continue;
                }
                // Kept if still there, or back from a short absence with its breaker as it
                // was (and a slow start); else new, starting slowly if others serve already.
                let kept = old.iter().find(|r| r.addr == addr).cloned();
                let back = departed.iter().position(|(r, _)| r.addr == addr);
                let replica = match (kept, back) {
                    (Some(replica), _) => replica,
                    (None, Some(i)) => {
                        let (replica, _) = departed.swap_remove(i);
                        replica.set_departed(false);
                        replica.breaker.returned();
                        replica.start_slowly(self.settings.slow_start, peers);
                        log::warn!(target: "service_b", "replica {addr} readmitted: {} resolves to it again", target.host);
                        replica
                    }
                    (None, None) => {
                        let replica = self.replica(addr, index);
                        if !old.is_empty() {
                            replica.start_slowly(self.settings.slow_start, peers);
                        }
                        replica
                    }
                };
                next.push(replica);
            }
        }
        // A stable order, so that a resolver rotating its answers changes nothing.
        next.sort_by_key(|r| r.addr);
        self.note_errors(why.is_some(), errors.join("; "));
        let now = Instant::now();
        let kept = self.settings.forget_departed;
        departed.retain(|(replica, since)| {
            let keep = now.duration_since(*since) < kept;
            if !keep {
                self.events.forgotten(replica.addr);
            }
            keep
        });
        for replica in old
            .iter()
            .filter(|r| !next.iter().any(|n| n.addr == r.addr))
        {
            replica.set_departed(true);
            departed.push((Arc::clone(replica), now));
            let host = &self.targets[replica.target].host;
            log::warn!(target: "service_b", "replica {} left: {host} no longer resolves to it", replica.addr);
        }
        let same =
            next.len() == old.len() && next.iter().zip(old.iter()).all(|(n, o)| n.addr == o.addr);
        if !same {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(next);
            if let Some(why) = why {
                log::info!(target: "service_b", "Service A replicas now: {} (resolved again: {why})", self.describe());
            }
        }
    }

    /// Remembers the resolution errors; logs them when they change, not at every resolution.
    fn note_errors(&self, log: bool, failed: String) {
        let mut last = self.unresolved.write().unwrap_or_else(|p| p.into_inner());
        if *last != failed {
            match (log, failed.is_empty()) {
                (false, _) => {}
                (true, false) => log::warn!(target: "service_b", "resolving Service A: {failed}"),
                (true, true) => log::info!(target: "service_b", "resolving Service A works again"),
            }
            *last = failed;
        }
    }

    fn replica(&self, addr: SocketAddr, target: usize) -> Arc<Replica> {
        let s = &self.settings;
        let breaker = Breaker::new(
            &format!("replica {addr}"),
            s.threshold,
            s.cooldown,
            s.max_cooldown,
        );
        Arc::new(Replica::new(
            addr,
            target,
            &self.targets[target].prefix,
            breaker,
        ))
    }

    /// Whether one more replica of `set` may be ejected: never more than
    /// `--max-ejected-percent` of them (at least one), so that a fleet-wide fault spreads
    /// calls over all replicas instead of piling them on the last ones.
    pub(crate) fn may_eject(&self, set: &[Arc<Replica>]) -> bool {
        let out = set.iter().filter(|r| !r.breaker.available()).count();
        let allowed = (set.len() * self.settings.max_ejected_percent as usize / 100).max(1);
        out < allowed
    }

    /// Why no replica of `set` may take a call (for the 503).
    pub(crate) fn none_available(&self, set: &[Arc<Replica>]) -> NoReplica {
        let soonest = set
            .iter()
            .filter_map(|r| r.breaker.ejected())
            .min_by_key(|open| open.left);
        match soonest {
            Some(open) => NoReplica::AllEjected(open),
            None => NoReplica::Unresolved(
                self.unresolved
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::balance::discovery::system_resolver;

    /// Events nobody counts.
    #[derive(Debug)]
    struct Uncounted;

    impl Events for Uncounted {
        fn ejected(&self, _: SocketAddr) {}
        fn drained(&self, _: SocketAddr) {}
        fn forgotten(&self, _: SocketAddr) {}
        fn probed(&self, _: SocketAddr, _: &'static str, _: bool) {}
        fn resolved(&self, _: &'static str) {}
    }

    pub(crate) fn replicas(urls: &[&str]) -> Replicas {
        let targets = urls
            .iter()
            .map(|u| Target::parse(u).expect("url"))
            .collect();
        let settings = Settings {
            threshold: 2,
            cooldown: Duration::from_secs(60),
            max_cooldown: Duration::from_secs(60),
            max_ejected_percent: 50,
            slow_start: Duration::from_secs(5),
            forget_departed: Duration::from_secs(600),
        };
        Replicas::new(targets, system_resolver(), settings, Arc::new(Uncounted))
    }

    #[test]
    fn every_address_of_every_url_is_a_replica_once() {
        let r = replicas(&[
            "http://127.0.0.2:1",
            "http://127.0.0.3:1/p",
            "http://127.0.0.2:1",
        ]);
        let set = r.snapshot();
        let bases: Vec<&str> = set.iter().map(|r| r.base.as_str()).collect();
        assert_eq!(bases, ["http://127.0.0.2:1", "http://127.0.0.3:1/p"]);
        assert!(!r.has_names());
        let named = replicas(&["http://localhost:1"]);
        assert!(named.has_names() && !named.snapshot().is_empty());
    }

    #[test]
    fn at_most_the_allowed_share_is_ejected_but_always_one() {
        let r = replicas(&[
            "http://127.0.0.2:1",
            "http://127.0.0.3:1",
            "http://127.0.0.4:1",
            "http://127.0.0.5:1",
        ]);
        let set = r.snapshot();
        let fail = |i: usize| {
            for _ in 0..2 {
                set[i].breaker.failed("x".into(), || r.may_eject(&set));
            }
        };
        fail(0);
        fail(1);
        fail(2);
        let out = set.iter().filter(|s| !s.breaker.available()).count();
        assert_eq!(out, 2, "50 % of 4");
        let single = replicas(&["http://127.0.0.2:1"]);
        let one = single.snapshot();
        for _ in 0..2 {
            one[0].breaker.failed("x".into(), || single.may_eject(&one));
        }
        assert!(
            !one[0].breaker.available(),
            "one replica may always be ejected"
        );
    }
}
