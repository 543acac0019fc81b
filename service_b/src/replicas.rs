//! The replicas of Service A that B balances over: every address of every `--service-a-url`
//! (a name resolving to several addresses means all of them), each with its own breaker, its
//! calls in flight and its latency estimate. Names are resolved at start, then in the
//! background (`upkeep`) every `--resolve-every-ms` and at once (at most every
//! [`MIN_RESOLVE_GAP`]) when a call finds no usable replica or a connect is refused; never
//! on a call's path. An IP literal is never resolved. A replica that joins a running set
//! starts slowly (see `choice`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::breaker::{Breaker, Open};
use crate::metrics::Upstream;
use crate::upkeep::Wake;

/// One `--service-a-url`, parsed: where it points and the path prefix of `/echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    port: u16,
    prefix: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]` (checked by [`crate::parse_service_a_url`]).
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        if uri.scheme_str() != Some("http") || host.is_empty() {
            return Err(format!("'{url}' must be http://HOST[:PORT]"));
        }
        Ok(Target {
            host,
            port: uri.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The length of the path prefix of `/echo` on this target.
    pub(crate) fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The addresses this target means now: the IP itself, or every address of the name.
    fn resolve(&self, resolve: &Resolve) -> Result<Vec<SocketAddr>, String> {
        if let Some(ip) = self.ip() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found = resolve(&self.host, self.port)
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        match found.is_empty() {
            true => Err(format!("{} resolves to no address", self.host)),
            false => Ok(found),
        }
    }
}

/// How long the state of a replica that left its name's addresses is kept for its return.
const DEPARTED_KEPT: Duration = Duration::from_secs(600);
/// Re-resolutions asked for by calls (no usable replica, a refused connect) come at most
/// this often; the periodic one runs regardless.
pub(crate) const MIN_RESOLVE_GAP: Duration = Duration::from_millis(250);
/// How fast the latency estimate forgets: the weight of an old estimate after `dt` without
/// an answer is `exp(-dt / TAU)`.
const TAU_NS: f64 = 1e9;

/// How a host name becomes addresses: [`system_resolver`] in the service; tests may give
/// names of their own to several loopback addresses.
pub type Resolve = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system's resolver (`/etc/hosts`, DNS), through the standard library.
pub fn system_resolver() -> Resolve {
    Arc::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
}

/// Nanoseconds on a clock an atomic can hold: since this process first asked, plus an hour,
/// so that "a while ago" is never before its start.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 3_600_000_000_000
}

/// The settings every replica's breaker and start share.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) threshold: u32,
    pub(crate) cooldown: Duration,
    pub(crate) max_cooldown: Duration,
    pub(crate) max_ejected_percent: u32,
    pub(crate) slow_start: Duration,
}

/// One replica: an address of A, the URL prefix of its target, its breaker, its load and
/// how fast it has been answering.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    /// Which `--service-a-url` it came from (its index).
    target: usize,
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
}

impl Replica {
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

    /// Whether it is still in its name's addresses (or an IP of its own).
    pub(crate) fn departed(&self) -> bool {
        self.departed.load(Ordering::Relaxed)
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

    fn start_slowly(&self, slow_start: Duration, estimate: f64) {
        let now = now_ns();
        self.slow_from.store(now, Ordering::Relaxed);
        self.slow_until
            .store(now + slow_start.as_nanos() as u64, Ordering::Relaxed);
        self.set_estimate(estimate, now);
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

/// Why no replica could take a call.
#[derive(Debug)]
pub(crate) enum NoReplica {
    /// No address is known: every name failed to resolve so far.
    Unresolved(String),
    /// Every replica is ejected; the one whose probe comes first.
    AllEjected(Open),
}

/// The replica set, replaced whole when a resolution changes it.
pub(crate) struct Replicas {
    targets: Vec<Target>,
    resolve: Resolve,
    current: RwLock<Arc<[Arc<Replica>]>>,
    /// The errors of the last resolution (empty when every name resolved).
    unresolved: RwLock<String>,
    /// Replicas a name stopped resolving to, and since when: one that comes back within
    /// [`DEPARTED_KEPT`] keeps its breaker (an ejected replica still owes its probe).
    departed: Mutex<Vec<(Arc<Replica>, Instant)>>,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Upstream>,
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
        metrics: Arc<Upstream>,
    ) -> Replicas {
        let replicas = Replicas {
            targets,
            resolve,
            current: RwLock::new(Arc::from(Vec::new())),
            unresolved: RwLock::new(String::new()),
            departed: Mutex::new(Vec::new()),
            settings,
            metrics,
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

    /// Asks the upkeep thread to look at the probes due again (a replica was ejected).
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
                        replica.departed.store(false, Ordering::Relaxed);
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
        departed.retain(|(_, since)| now.duration_since(*since) < DEPARTED_KEPT);
        for replica in old
            .iter()
            .filter(|r| !next.iter().any(|n| n.addr == r.addr))
        {
            replica.departed.store(true, Ordering::Relaxed);
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
        let prefix = &self.targets[target].prefix;
        let s = &self.settings;
        let replica = Arc::new(Replica {
            addr,
            target,
            base: format!("http://{addr}{prefix}"),
            ready_path: format!("{prefix}/ready"),
            breaker: Breaker::new(
                &format!("replica {addr}"),
                s.threshold,
                s.cooldown,
                s.max_cooldown,
            ),
            pending: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
            ewma: AtomicU64::new(0f64.to_bits()),
            ewma_at: AtomicU64::new(now_ns()),
            picked_at: AtomicU64::new(0),
            slow_from: AtomicU64::new(0),
            slow_until: AtomicU64::new(0),
            departed: AtomicBool::new(false),
        });
        replica.set_estimate(0.0, now_ns());
        replica
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

/// The middle estimate of the usable replicas (0 with none): where a joining replica starts.
pub(crate) fn median_estimate(set: &[Arc<Replica>]) -> f64 {
    let now = now_ns();
    let mut estimates: Vec<f64> = set
        .iter()
        .filter(|r| r.usable())
        .map(|r| r.estimate_ns(now))
        .collect();
    estimates.sort_by(f64::total_cmp);
    estimates.get(estimates.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        };
        Replicas::new(
            targets,
            system_resolver(),
            settings,
            Arc::new(Upstream::default()),
        )
    }

    #[test]
    fn targets_parse_with_defaults() {
        let t = Target::parse("http://a.example/pre/").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("a.example", 80, "/pre")
        );
        let t = Target::parse("http://[::1]:9").expect("url");
        assert_eq!((t.ip(), t.port), (Some("::1".parse().expect("ip")), 9));
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
