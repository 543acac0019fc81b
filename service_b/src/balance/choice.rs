//! Which replica a call goes to: the power of two choices over each replica's expected cost
//! (its latency estimate, times the calls it would join), as Finagle and Linkerd do. The
//! choice sees a replica only through [`Candidate`]: whether it may take calls, its cost
//! and warm share (tower's `Load::load()`), and when it was last picked. Beyond plain P2C:
//! - the cost also counts how long a replica has kept its calls waiting without an answer
//!   (see `ewma`), so a replica that hangs is passed over within milliseconds, not after
//!   its calls time out;
//! - a replica the choice keeps passing over is revisited: when it has had no call for
//!   [`REVISIT_EVERY`], the next call goes to it under a tight limit (a few times the
//!   fastest replica's estimate, see `call`), so that it wins its share back when it
//!   recovers while a user pays at most that limit when it has not;
//! - a replica in its slow start (just joined, or just readmitted) keeps a call it won only
//!   with its warm share, growing from 10 % to all over `--slow-start-ms`;
//! - a replica that said it drains gets no call while another can take it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::ewma::now_ns;

/// A replica with no call for this long gets the next one as a revisit.
pub(crate) const REVISIT_EVERY: Duration = Duration::from_millis(250);

/// Costs closer than this (or than half the smaller one) count as equal, so that noise in
/// the estimates of equally fast replicas does not send every call to one of them.
const SAME_COST_NS: f64 = 500_000.0;

/// Whether a replica may take calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eligibility {
    /// Ejected, or gone from the set: never.
    Out,
    /// It said it drains: only when no other can.
    Draining,
    /// Yes.
    Ready,
}

/// A replica's load as the choice weighs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Load {
    /// The expected cost of one more call (ns-like; lower is better).
    pub(crate) cost: f64,
    /// The share of the calls it wins that it keeps (below 1.0 in its slow start).
    pub(crate) warm_share: f64,
}

/// What the choice needs of a replica.
pub(crate) trait Candidate {
    /// Its identity (a retry never goes back to the replica that just failed).
    fn addr(&self) -> SocketAddr;
    /// Whether it may take calls.
    fn eligibility(&self) -> Eligibility;
    /// Its load now (`now` in ns, see `ewma::now_ns`).
    fn load(&self, now: u64) -> Load;
    /// When the choice last gave it a call (ns); the choice updates it.
    fn picked_at(&self) -> &AtomicU64;
}

/// How the chosen replica was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chosen {
    /// The only usable replica.
    Only,
    /// The cheaper of two, among several.
    Balanced,
    /// A replica passed over for a while, revisited by this call.
    Revisit,
}

/// Chooses among the usable replicas of `set`, never `except`; `None` if there is none.
/// First tries may revisit (`may_revisit`); retries never do.
pub(crate) fn choose<R: Candidate>(
    set: &[Arc<R>],
    except: Option<SocketAddr>,
    may_revisit: bool,
) -> Option<(&Arc<R>, Chosen)> {
    let open = |r: &&Arc<R>| r.eligibility() != Eligibility::Out && except != Some(r.addr());
    // A draining replica takes calls only when no other can.
    let draining = |r: &&Arc<R>| r.eligibility() == Eligibility::Draining;
    let avoid_draining = set.iter().any(|r| open(&r) && !draining(&r));
    let usable = |r: &&Arc<R>| open(r) && !(avoid_draining && draining(r));
    let count = set.iter().filter(usable).count();
    let now = now_ns();
    let nth = |n: usize| set.iter().filter(usable).nth(n);
    let (replica, chosen) = match count {
        0 => return None,
        1 => (nth(0)?, Chosen::Only),
        _ => match may_revisit
            .then(|| passed_over(set, &usable, now))
            .flatten()
        {
            Some(starved) => (starved, Chosen::Revisit),
            None => {
                let first = fastrand::usize(..count);
                let second = (first + 1 + fastrand::usize(..count - 1)) % count;
                let (a, b) = (nth(first)?, nth(second)?);
                let (la, lb) = (a.load(now), b.load(now));
                let (ca, cb) = (la.cost, lb.cost);
                let a_wins = match (ca - cb).abs() < SAME_COST_NS.max(ca.min(cb) / 2.0) {
                    true => fastrand::bool(), // as good as equal: spread the calls
                    false => ca < cb,
                };
                let (mut win, lose) = if a_wins { (a, b) } else { (b, a) };
                let (share, other) = if a_wins { (la, lb) } else { (lb, la) };
                let share = share.warm_share;
                if share < 1.0 && other.warm_share >= 1.0 && fastrand::f64() >= share {
                    win = lose; // still warming up: it keeps only its share of what it wins
                }
                (win, Chosen::Balanced)
            }
        },
    };
    replica.picked_at().store(now, Ordering::Relaxed);
    Some((replica, chosen))
}

/// The usable replica that has gone longest without a call, if that is over
/// [`REVISIT_EVERY`]; claimed for this call, so one call revisits it, not all at once.
fn passed_over<'a, R: Candidate>(
    set: &'a [Arc<R>],
    usable: &impl Fn(&&Arc<R>) -> bool,
    now: u64,
) -> Option<&'a Arc<R>> {
    let oldest = set
        .iter()
        .filter(usable)
        .min_by_key(|r| r.picked_at().load(Ordering::Relaxed))?;
    let at = oldest.picked_at().load(Ordering::Relaxed);
    let due = now.saturating_sub(at) > REVISIT_EVERY.as_nanos() as u64;
    let claimed = due
        && oldest
            .picked_at()
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    claimed.then_some(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::set::tests::replicas;
    use crate::balance::Replica;
    use std::collections::HashMap;

    fn three() -> crate::balance::Replicas {
        replicas(&[
            "http://127.0.0.2:1",
            "http://127.0.0.3:1",
            "http://127.0.0.4:1",
        ])
    }

    /// Picks `n` times without revisits and counts the picks per replica.
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
            replica.load.observe(Duration::from_micros(300), false);
        }
        set[0].load.observe(Duration::from_millis(300), false);
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
        let (only, how) = choose(&set[..2], Some(set[0].addr), false).expect("one");
        assert_eq!((only.addr, how), (set[1].addr, Chosen::Only));
    }

    #[test]
    fn a_passed_over_replica_gets_one_revisit() {
        let r = three();
        let set = r.snapshot();
        let long_ago = now_ns() - 2 * REVISIT_EVERY.as_nanos() as u64;
        for replica in set.iter() {
            replica.picked_at().store(now_ns(), Ordering::Relaxed);
        }
        set[2].picked_at().store(long_ago, Ordering::Relaxed);
        let (revisited, how) = choose(&set, None, true).expect("a replica");
        assert_eq!((revisited.addr, how), (set[2].addr, Chosen::Revisit));
        let (_, how) = choose(&set, None, true).expect("a replica");
        assert_eq!(how, Chosen::Balanced, "revisited once, not by every call");
    }
}
