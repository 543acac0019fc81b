//! The workers: threads that wait on the one epoll set, and each handle the connections
//! they get, one after the other, on their own thread. As many as `--workers` (the CPUs)
//! never block. A handler that waits (B's call to A) runs in a blocking section: first its
//! worker hands the rest of its batch back to the epoll set and makes sure another worker
//! waits there, starting one if none does (Go's hand-off of a blocked thread's processor,
//! Jetty's "eat what you kill"). Workers beyond `--workers` end after idling for a while.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::poller::BATCH;
use super::Core;
use super::Token;
use crate::http::Blocking;

/// A worker beyond `--workers` with nothing to do this long ends.
const SPARE_KEEP: Duration = Duration::from_secs(2);
/// Stack of a worker: the handlers need little.
const STACK_BYTES: usize = 256 * 1024;
/// Each read lands here before what arrived is appended to its connection's buffer.
const READ_CHUNK: usize = 16 * 1024;

/// How many workers there are and what they do.
pub(super) struct Workers {
    /// `--workers`: those that never block.
    target: usize,
    /// Workers at most, blocked ones included.
    cap: usize,
    live: AtomicUsize,
    /// Waiting on the epoll set now.
    waiting: AtomicUsize,
    /// In a blocking section now.
    blocked: AtomicUsize,
}

impl Workers {
    pub(super) fn new(target: usize, max_blocked: usize) -> Workers {
        let target = target.max(1);
        Workers {
            target,
            cap: target + max_blocked,
            live: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
        }
    }

    /// Workers alive now.
    pub(super) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Ends this worker if it is a spare: more workers than `--workers` are free to work.
    fn retire(&self) -> bool {
        let blocked = self.blocked.load(Ordering::SeqCst);
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| {
                (live > self.target + blocked).then(|| live - 1)
            })
            .is_ok()
    }

    fn is_spare(&self) -> bool {
        self.live() > self.target + self.blocked.load(Ordering::SeqCst)
    }
}

/// Starts the `--workers` workers.
pub(super) fn start(core: &Arc<Core>) -> io::Result<()> {
    for _ in 0..core.workers.target {
        spawn(core)?;
    }
    Ok(())
}

fn spawn(core: &Arc<Core>) -> io::Result<()> {
    core.workers.live.fetch_add(1, Ordering::SeqCst);
    let worker = Arc::clone(core);
    thread::Builder::new()
        .name(format!("{}-worker", core.app.name))
        .stack_size(STACK_BYTES)
        .spawn(move || work(worker))
        .map(drop)
        .inspect_err(|_| {
            core.workers.live.fetch_sub(1, Ordering::SeqCst);
        })
}

/// One worker's loop: wait, handle what is ready, again. After a batch in which a handler
/// blocked it takes one connection at a time (its next handler may block too, and the rest
/// of a batch would wait behind it); otherwise up to [`BATCH`].
fn work(core: Arc<Core>) {
    let section = Arc::new(Section {
        core: Arc::clone(&core),
        batch: Mutex::new(VecDeque::with_capacity(BATCH)),
        blocked: AtomicBool::new(false),
    });
    let worker: Arc<dyn Blocking> = section.clone();
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut ready = Vec::with_capacity(BATCH);
    let mut max = BATCH;
    loop {
        let workers = &core.workers;
        let timeout = workers.is_spare().then_some(SPARE_KEEP);
        workers.waiting.fetch_add(1, Ordering::SeqCst);
        let go_on = core.poller.wait(&mut ready, max, timeout);
        workers.waiting.fetch_sub(1, Ordering::SeqCst);
        if !go_on {
            workers.live.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if ready.is_empty() {
            if timeout.is_some() && workers.retire() {
                return;
            }
            continue;
        }
        section.lock().extend(ready.drain(..));
        while let Some(token) = section.next() {
            if let Some(conn) = core.poller.lookup(token) {
                conn.ready(&core, &mut scratch, &worker);
            }
        }
        max = if section.blocked.swap(false, Ordering::Relaxed) {
            1
        } else {
            BATCH
        };
    }
}

/// One worker as its handlers see it: the connections of its batch not handled yet, and
/// how it hands them back when a handler blocks.
struct Section {
    core: Arc<Core>,
    batch: Mutex<VecDeque<Token>>,
    /// A handler blocked during this batch.
    blocked: AtomicBool,
}

impl Section {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Token>> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self) -> Option<Token> {
        self.lock().pop_front()
    }
}

impl Blocking for Section {
    /// Before the wait: the rest of the batch goes back to the epoll set, and some worker
    /// must be waiting there (a new one if none is and the cap allows).
    fn enter(&self) {
        self.blocked.store(true, Ordering::Relaxed);
        let rest: Vec<Token> = self.lock().drain(..).collect();
        let core = &self.core;
        for conn in rest.iter().filter_map(|token| core.poller.lookup(*token)) {
            core.poller.arm(&conn, conn.interest());
        }
        let workers = &core.workers;
        workers.blocked.fetch_add(1, Ordering::SeqCst);
        if workers.waiting.load(Ordering::SeqCst) == 0 && workers.live() < workers.cap {
            if let Err(e) = spawn(core) {
                log::warn!(target: core.app.name, "cannot start a worker: {e}");
            }
        }
    }

    fn leave(&self) {
        let workers = &self.core.workers;
        workers.blocked.fetch_sub(1, Ordering::SeqCst);
    }
}
