//! B's idle connections to the replicas of A: one pool shared by every thread, in shards
//! that a call tries from a random one on, never waiting on a lock another call holds (it
//! tries the next shard), so calls to one replica do not queue on one lock; each lock is
//! held only to push or pop one entry (the liveness check and every close happen outside
//! it). An idle
//! connection keeps its socket and its small buffers (6 KiB, see `transport`), so the next
//! call on it allocates nothing.
//! Bounded per replica and in all; an idle connection older than the idle age is never used
//! and is closed by [`Pool::prune`] (B's upkeep calls it on its timer) or on the next
//! checkout.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use socket2::SockRef;
use ureq::unversioned::transport::LazyBuffers;

/// Shards of the pool: more than the threads that call at once on a small machine.
const SHARDS: usize = 16;

/// A TCP connection to a replica, the socket timeouts last set on it (`None`: never set)
/// and its buffers of the usual sizes, once it has had them.
pub(crate) struct Link {
    pub(crate) stream: TcpStream,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) buffers: Option<LazyBuffers>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.stream.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

/// An idle link and since when.
#[derive(Debug)]
struct Idle {
    addr: SocketAddr,
    link: Link,
    since: Instant,
}

/// The shared pool of idle connections.
#[derive(Debug)]
pub(crate) struct Pool {
    shards: Box<[Mutex<Vec<Idle>>]>,
    /// Idle connections to one replica in one shard at most.
    per_shard: usize,
    total: usize,
    max_age: Duration,
    idle: AtomicUsize,
}

/// The bounds of a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Idle connections kept to one replica at most (rounded up to a multiple of the
    /// shards: each keeps its share).
    pub(crate) per_replica: usize,
    /// Idle connections kept at most, every replica together.
    pub(crate) total: usize,
    /// An idle connection older than this is closed, never used.
    pub(crate) max_age: Duration,
}

impl Pool {
    /// A pool within `bounds`.
    pub(crate) fn new(bounds: Bounds) -> Pool {
        Pool {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            per_shard: bounds.per_replica.div_ceil(SHARDS).max(1),
            total: bounds.total,
            max_age: bounds.max_age,
            idle: AtomicUsize::new(0),
        }
    }

    /// Shard `i`, unless another call holds it.
    fn try_shard(&self, i: usize) -> Option<MutexGuard<'_, Vec<Idle>>> {
        match self.shards[i % self.shards.len()].try_lock() {
            Ok(shard) => Some(shard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The most recently pooled idle connection to `addr` of the first shard that has one,
    /// if it is still clean; one found dead or too old is closed and the search goes on.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<Link> {
        let start = fastrand::usize(..SHARDS);
        let mut k = 0;
        while k < SHARDS {
            let idle = {
                let Some(mut shard) = self.try_shard(start + k) else {
                    k += 1;
                    continue;
                };
                match shard.iter().rposition(|e| e.addr == addr) {
                    Some(i) => shard.swap_remove(i),
                    None => {
                        k += 1;
                        continue;
                    }
                }
            };
            self.idle.fetch_sub(1, Ordering::Relaxed);
            if idle.since.elapsed() < self.max_age && clean(&idle.link.stream) {
                return Some(idle.link);
            }
        }
        None
    }

    /// Keeps `link` for the next call to `addr` in the first free shard with room for it,
    /// unless the pool has as many idle as allowed (then it is closed, as when no shard
    /// has room).
    pub(crate) fn put(&self, addr: SocketAddr, link: Link) {
        if self.idle.fetch_add(1, Ordering::Relaxed) >= self.total {
            self.idle.fetch_sub(1, Ordering::Relaxed);
            return; // `link` closes here
        }
        let start = fastrand::usize(..SHARDS);
        for k in 0..SHARDS {
            let Some(mut shard) = self.try_shard(start + k) else {
                continue;
            };
            if shard.iter().filter(|e| e.addr == addr).count() < self.per_shard {
                shard.push(Idle {
                    addr,
                    link,
                    since: Instant::now(),
                });
                return;
            }
        }
        self.idle.fetch_sub(1, Ordering::Relaxed); // `link` closes here, outside every lock
    }

    /// Closes every idle connection older than the idle age; returns how many.
    pub(crate) fn prune(&self) -> usize {
        let mut closed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let mut i = 0;
            while i < shard.len() {
                if shard[i].since.elapsed() >= self.max_age {
                    closed.push(shard.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.idle.fetch_sub(closed.len(), Ordering::Relaxed);
        closed.len() // closed as `closed` drops, outside every lock
    }

    /// Idle connections now.
    pub(crate) fn idle(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }
}

/// Whether an idle connection is still clean, with one non-blocking peek
/// (`MSG_PEEK | MSG_DONTWAIT`): nothing waiting. A closed one reads 0; one with bytes nobody
/// asked for must not be used either.
pub(crate) fn clean(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    match SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn link(to: SocketAddr) -> Link {
        Link {
            stream: TcpStream::connect(to).expect("connect"),
            read_timeout: None,
            write_timeout: None,
            buffers: None,
        }
    }

    fn bounds(per_replica: usize, total: usize, max_age: Duration) -> Bounds {
        Bounds {
            per_replica,
            total,
            max_age,
        }
    }

    #[test]
    fn bounded_per_replica_and_in_all_and_pruned_by_age() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let second = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr2 = second.local_addr().expect("addr");
        let pool = Pool::new(bounds(SHARDS, SHARDS + 4, Duration::from_secs(60)));
        for _ in 0..SHARDS + 8 {
            pool.put(addr, link(addr));
        }
        assert_eq!(pool.idle(), SHARDS, "at most one per shard and replica");
        for _ in 0..8 {
            pool.put(addr2, link(addr2));
        }
        assert_eq!(pool.idle(), SHARDS + 4, "at most the total in all");
        assert!(pool.take(addr).is_some());
        assert_eq!(pool.idle(), SHARDS + 3);
        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(pool.take(other).is_none());
        let old = Pool::new(bounds(2, 2, Duration::ZERO));
        old.put(addr, link(addr));
        assert_eq!((old.prune(), old.idle()), (1, 0));
    }
}
