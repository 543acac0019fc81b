//! Which replica a call goes to: the power of two choices over each replica's expected cost
//! (its latency estimate, times the calls it would join), as Finagle and Linkerd do, with
//! three additions:
//! - the estimate also counts how long a replica has kept its calls waiting without an
//!   answer, so a replica that hangs is passed over within milliseconds, not after its
//!   calls time out;
//! - a replica the choice keeps passing over is probed: when it has had no call for
//!   [`PROBE_EVERY`], the next call goes to it under a tight limit (a few times the fastest
//!   replica's estimate, see `call`), so that it wins its share back when it recovers while
//!   a user pays at most that limit when it has not;
//! - a replica in its slow start (just joined, or just readmitted) keeps a call it won only
//!   with its warm share, growing from 10 % to all over `--slow-start-ms`;
//! - a replica that said it drains gets no call while another can take it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::replica::{now_ns, Replica};

/// A replica with no call for this long gets the next one as a probe.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Costs closer than this (or than half the smaller one) count as equal, so that noise in
/// the estimates of equally fast replicas does not send every call to one of them.
const SAME_COST_NS: f64 = 500_000.0;

/// How the chosen replica was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chosen {
    /// The only usable replica.
    Only,
    /// The cheaper of two, among several.
    Balanced,
    /// A replica passed over for a while, probed by this call.
    Probe,
}

/// Chooses among the usable replicas of `set`, never `except`; `None` if there is none.
/// First tries may probe (`may_probe`); retries never do.
pub(crate) fn choose<'a>(
    set: &'a [Arc<Replica>],
    except: Option<&Replica>,
    may_probe: bool,
) -> Option<(&'a Arc<Replica>, Chosen)> {
    let open = |r: &&Arc<Replica>| r.usable() && except.is_none_or(|e| e.addr != r.addr);
    // A draining replica takes calls only when no other can.
    let avoid_draining = set.iter().any(|r| open(&r) && !r.draining());
    let usable = |r: &&Arc<Replica>| open(r) && !(avoid_draining && r.draining());
    let count = set.iter().filter(usable).count();
    let now = now_ns();
    let nth = |n: usize| set.iter().filter(usable).nth(n);
    let (replica, chosen) = match count {
        0 => return None,
        1 => (nth(0)?, Chosen::Only),
        _ => match may_probe.then(|| passed_over(set, &usable, now)).flatten() {
            Some(starved) => (starved, Chosen::Probe),
            None => {
                let first = fastrand::usize(..count);
                let second = (first + 1 + fastrand::usize(..count - 1)) % count;
                let (a, b) = (nth(first)?, nth(second)?);
                let (ca, cb) = (a.cost(now), b.cost(now));
                let a_wins = match (ca - cb).abs() < SAME_COST_NS.max(ca.min(cb) / 2.0) {
                    true => fastrand::bool(), // as good as equal: spread the calls
                    false => ca < cb,
                };
                let (mut win, lose) = if a_wins { (a, b) } else { (b, a) };
                let share = win.warm_share(now);
                if share < 1.0 && lose.warm_share(now) >= 1.0 && fastrand::f64() >= share {
                    win = lose; // still warming up: it keeps only its share of what it wins
                }
                (win, Chosen::Balanced)
            }
        },
    };
    replica.picked_at.store(now, Ordering::Relaxed);
    Some((replica, chosen))
}

/// The usable replica that has gone longest without a call, if that is over
/// [`PROBE_EVERY`]; claimed for this call, so one call probes it, not all at once.
fn passed_over<'a>(
    set: &'a [Arc<Replica>],
    usable: &impl Fn(&&Arc<Replica>) -> bool,
    now: u64,
) -> Option<&'a Arc<Replica>> {
    let oldest = set
        .iter()
        .filter(usable)
        .min_by_key(|r| r.picked_at.load(Ordering::Relaxed))?;
    let at = oldest.picked_at.load(Ordering::Relaxed);
    let due = now.saturating_sub(at) > PROBE_EVERY.as_nanos() as u64;
    let claimed = due
        && oldest
            .picked_at
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    claimed.then_some(oldest)
}

/// The lowest latency estimate among the usable replicas (ns), for per-try limits.
pub(crate) fn fastest_estimate(set: &[Arc<Replica>]) -> f64 {
    let now = now_ns();
    set.iter()
        .filter(|r| r.usable())
        .map(|r| r.estimate_ns(now))
        .min_by(f64::total_cmp)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::tests::replicas;
    use std::collections::HashMap;

    fn three() -> crate::replicas::Replicas {
        replicas(&[
            "http://127.0.0.2:1",
            "http://127.0.0.3:1",
            "http://127.0.0.4:1",
        ])
    }

    /// Picks `n` times without probes and counts the picks per replica.
    fn spread(set: &[Arc<Replica>], n: usize) -> HashMap<std::net::SocketAddr, usize> {
        let mut seen = HashMap::new();
        for _ in 0..n {
            if let Some((r, _)) = choose(set, None, false) {
                *seen.entry(r.addr).or_insert(0) += 1;
            }
        }
        seen
    }

    #[test]
    fn equal_replicas_share_the_calls() {
        let r = three();
        let seen = spread(&r.snapshot(), 3000);
        assert!(seen.values().all(|n| *n > 800), "{seen:?}");
    }

    #[test]
    fn a_slow_or_busy_replica_is_passed_over() {
        let r = three();
        let set = r.snapshot();
        for replica in set.iter() {
            replica.observe(Duration::from_micros(300), false);
        }
        set[0].observe(Duration::from_millis(300), false);
        let seen = spread(&set, 3000);
        assert_eq!(seen.get(&set[0].addr), None, "{seen:?}");
        // Calls waiting on a replica make it costlier too.
        let r = three();
        let set = r.snapshot();
        let held: Vec<_> = (0..5).map(|_| set[1].enter()).collect();
        let seen = spread(&set, 3000);
        assert!(
            seen.get(&set[1].addr).copied().unwrap_or(0) < 300,
            "{seen:?}"
        );
        drop(held);
        // `except` is never chosen; with one left, it is the only one.
        let (only, how) = choose(&set[..2], Some(&set[0]), false).expect("one");
        assert_eq!((only.addr, how), (set[1].addr, Chosen::Only));
    }

    #[test]
    fn a_passed_over_replica_gets_one_probe() {
        let r = three();
        let set = r.snapshot();
        let long_ago = now_ns() - 2 * PROBE_EVERY.as_nanos() as u64;
        for replica in set.iter() {
            replica.picked_at.store(now_ns(), Ordering::Relaxed);
        }
        set[2].picked_at.store(long_ago, Ordering::Relaxed);
        let (probed, how) = choose(&set, None, true).expect("a replica");
        assert_eq!((probed.addr, how), (set[2].addr, Chosen::Probe));
        let (_, how) = choose(&set, None, true).expect("a replica");
        assert_eq!(how, Chosen::Balanced, "probed once, not by every call");
    }
}
