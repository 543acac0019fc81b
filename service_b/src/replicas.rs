//! The replicas of Service A that B balances over: every address of every `--service-a-url`
//! (a name resolving to several addresses means all of them), each with its own breaker and
//! count of calls in flight. Names are resolved at start and then in the background every
//! `--resolve-every-ms`, never on a call's path; an IP literal is never resolved.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::breaker::{Breaker, Open, Permit};

/// One `--service-a-url`, parsed: where it points and the path prefix of `/echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
    prefix: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]` (checked by [`crate::parse_service_a_url`]).
    pub fn parse(url: &str) -> Result<Target, String> {
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
    pub fn prefix_len(&self) -> usize {
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

/// How a host name becomes addresses: [`system_resolver`] in the services; tests may give
/// names of their own to several loopback addresses.
pub type Resolve = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system's resolver (`/etc/hosts`, DNS), through the standard library.
pub fn system_resolver() -> Resolve {
    Arc::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
}

/// Labels of the per-replica metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub replica: String,
}

/// One replica: an address of A, the URL prefix of its target, its breaker and its load.
#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    /// Which `--service-a-url` it came from (its index).
    target: usize,
    /// `http://IP:PORT/prefix`: calls never resolve a name.
    pub base: String,
    pub breaker: Breaker,
    in_flight: AtomicUsize,
}

impl Replica {
    /// Counts a call in flight on this replica until the guard drops.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }
}

/// A call in flight on a replica (see [`Replica::enter`]).
pub struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why no replica could take a call.
#[derive(Debug)]
pub enum NoReplica {
    /// No address is known: every name failed to resolve so far.
    Unresolved(String),
    /// Every replica is ejected; the one whose trial comes first.
    AllEjected(Open),
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("targets", &self.targets)
            .field("current", &self.snapshot())
            .finish_non_exhaustive()
    }
}

/// The replica set, replaced whole when a resolution changes it.
pub struct Replicas {
    targets: Vec<Target>,
    resolve: Resolve,
    current: RwLock<Arc<[Arc<Replica>]>>,
    /// The errors of the last resolution (empty when every name resolved).
    unresolved: RwLock<String>,
    /// Replicas a name stopped resolving to, and since when: one that comes back within
    /// [`DEPARTED_KEPT`] keeps its breaker (an ejected replica still owes its trial call).
    departed: Mutex<Vec<(Arc<Replica>, Instant)>>,
    threshold: u32,
    cooldown: Duration,
    breaker_states: Family<ReplicaLabel, Gauge>,
    /// A per-process random stream for breaking ties.
    seed: u64,
    draws: AtomicU64,
}

impl Replicas {
    /// Resolves every target once (names may fail now and resolve later).
    pub fn new(
        targets: Vec<Target>,
        resolve: Resolve,
        threshold: u32,
        cooldown: Duration,
        breaker_states: Family<ReplicaLabel, Gauge>,
    ) -> Replicas {
        let replicas = Replicas {
            targets,
            resolve,
            current: RwLock::new(Arc::from(Vec::new())),
            unresolved: RwLock::new(String::new()),
            departed: Mutex::new(Vec::new()),
            threshold,
            cooldown,
            breaker_states,
            seed: RandomState::new().hash_one(0u64),
            draws: AtomicU64::new(0),
        };
        replicas.resolve_now(false);
        replicas
    }

    /// The replicas as the config line shows them: `[10.0.0.2:8080, …]`, or why none.
    pub fn describe(&self) -> String {
        let set = self.snapshot();
        if set.is_empty() {
            let why = self.unresolved.read().unwrap_or_else(|p| p.into_inner());
            return format!("[] ({why})");
        }
        let list: Vec<String> = set.iter().map(|r| r.addr.to_string()).collect();
        format!("[{}]", list.join(", "))
    }

    /// Whether any target is a name, to be re-resolved in the background.
    pub fn has_names(&self) -> bool {
        self.targets.iter().any(|t| t.ip().is_none())
    }

    /// Re-resolves names every `every` on a thread of its own, until the replicas are dropped.
    pub fn resolve_in_background(self: &Arc<Self>, every: Duration) {
        if !self.has_names() {
            return;
        }
        let weak: Weak<Replicas> = Arc::downgrade(self);
        let spawned = thread::Builder::new()
            .name("service_b-resolver".to_string())
            .spawn(move || loop {
                thread::sleep(every);
                match weak.upgrade() {
                    Some(replicas) => replicas.refresh(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            log::error!(target: "service_b", "cannot start the resolver thread: {e}; replica addresses stay as resolved at start");
        }
    }

    /// The replicas now, for one call.
    pub fn snapshot(&self) -> Arc<[Arc<Replica>]> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves every target and swaps in the new set, keeping the state (breaker, load) of
    /// addresses still there. A target that fails to resolve keeps its previous addresses.
    pub fn refresh(&self) {
        self.resolve_now(true);
    }

    /// [`Replicas::refresh`]; logs what changed when `log` (not at start, where the config
    /// line shows the set).
    fn resolve_now(&self, log: bool) {
        let old = self.snapshot();
        let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
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
                // was; else new.
                let kept = old.iter().find(|r| r.addr == addr).cloned();
                let back = departed.iter().position(|(r, _)| r.addr == addr);
                let replica = match (kept, back) {
                    (Some(replica), _) => replica,
                    (None, Some(i)) => {
                        let (replica, _) = departed.swap_remove(i);
                        let gauge = self.breaker_states.get_or_create(&label(addr)).clone();
                        replica.breaker.show_on(gauge);
                        if log {
                            log::warn!(target: "service_b", "replica {addr} readmitted: {} resolves to it again", target.host);
                        }
                        replica
                    }
                    (None, None) => self.replica(addr, index),
                };
                next.push(replica);
            }
        }
        // A stable order, so that a resolver rotating its answers changes nothing.
        next.sort_by_key(|r| r.addr);
        self.note_errors(log, errors.join("; "));
        let now = Instant::now();
        departed.retain(|(_, since)| now.duration_since(*since) < DEPARTED_KEPT);
        let gone: Vec<&Arc<Replica>> = old
            .iter()
            .filter(|r| !next.iter().any(|n| n.addr == r.addr))
            .collect();
        for replica in &gone {
            self.breaker_states.remove(&label(replica.addr));
            departed.push((Arc::clone(replica), now));
            if log {
                let host = &self.targets[replica.target].host;
                log::warn!(target: "service_b", "replica {} ejected: {host} no longer resolves to it", replica.addr);
            }
        }
        let same =
            next.len() == old.len() && next.iter().zip(old.iter()).all(|(n, o)| n.addr == o.addr);
        if !same {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(next);
            if log {
                log::info!(target: "service_b", "Service A replicas now: {}", self.describe());
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
        let gauge = self.breaker_states.get_or_create(&label(addr)).clone();
        let prefix = &self.targets[target].prefix;
        Arc::new(Replica {
            addr,
            target,
            base: format!("http://{addr}{prefix}"),
            breaker: Breaker::new(
                &format!("replica {addr}"),
                self.threshold,
                self.cooldown,
                gauge,
            ),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// How many replicas may take a call now (breaker closed, or due for its trial).
    pub fn available(&self, set: &[Arc<Replica>]) -> usize {
        set.iter().filter(|r| r.breaker.available()).count()
    }

    /// The replica with the fewest calls in flight (ties at random) among those that may
    /// take a call, other than `except`, with its breaker's leave.
    pub fn pick<'a>(
        &self,
        set: &'a [Arc<Replica>],
        except: Option<&Replica>,
    ) -> Result<(&'a Arc<Replica>, Permit<'a>), NoReplica> {
        let mut tried: Vec<SocketAddr> = except.map(|r| r.addr).into_iter().collect();
        loop {
            let mut best: Option<&Arc<Replica>> = None;
            let (mut least, mut ties) = (usize::MAX, 0u64);
            for replica in set.iter().filter(|r| !tried.contains(&r.addr)) {
                if !replica.breaker.available() {
                    continue;
                }
                let load = replica.in_flight.load(Ordering::SeqCst);
                if load < least {
                    (best, least, ties) = (Some(replica), load, 1);
                } else if load == least {
                    ties += 1;
                    if self.draw().is_multiple_of(ties) {
                        best = Some(replica);
                    }
                }
            }
            let Some(replica) = best else {
                return Err(self.none_available(set));
            };
            match replica.breaker.permit() {
                Ok(permit) => return Ok((replica, permit)),
                Err(_) => tried.push(replica.addr), // another call took its trial first
            }
        }
    }

    /// Why no replica of `set` may take a call (for the 503 and `/ready`).
    pub fn none_available(&self, set: &[Arc<Replica>]) -> NoReplica {
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

    /// A cheap random number (SplitMix64 over a counter from a random seed).
    fn draw(&self) -> u64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The metric label of a replica.
pub fn label(addr: SocketAddr) -> ReplicaLabel {
    ReplicaLabel {
        replica: addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(urls: &[&str]) -> Replicas {
        let targets = urls
            .iter()
            .map(|u| Target::parse(u).expect("url"))
            .collect();
        Replicas::new(
            targets,
            system_resolver(),
            2,
            Duration::from_secs(60),
            Family::default(),
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
    fn the_least_loaded_available_replica_is_picked_and_ties_spread() {
        let r = replicas(&[
            "http://127.0.0.2:1",
            "http://127.0.0.3:1",
            "http://127.0.0.4:1",
        ]);
        let set = r.snapshot();
        let _busy = set[0].enter();
        let mut seen = std::collections::HashMap::new();
        for _ in 0..300 {
            let (replica, permit) = r.pick(&set, None).expect("a replica");
            permit.record(None);
            *seen.entry(replica.addr).or_insert(0) += 1;
        }
        assert!(
            !seen.contains_key(&set[0].addr),
            "the busy one was picked: {seen:?}"
        );
        assert!(seen.values().all(|n| *n > 100), "ties not spread: {seen:?}");
        // `except` is never picked; ejected replicas are not either.
        let (other, permit) = r.pick(&set, Some(&set[1])).expect("a replica");
        drop(permit);
        assert_ne!(other.addr, set[1].addr);
        for replica in set.iter() {
            for _ in 0..2 {
                if let Ok(permit) = replica.breaker.permit() {
                    permit.record(Some("Connection error: refused".to_string()));
                }
            }
        }
        match r.pick(&set, None) {
            Err(NoReplica::AllEjected(open)) => assert_eq!(open.failures, 2),
            other => panic!("expected every replica ejected, got {other:?}"),
        };
    }
}
