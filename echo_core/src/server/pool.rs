//! The connection threads. A new connection goes to an idle thread if one waits, else to a
//! new thread with a small stack; so a connection never waits behind another. That is the
//! only hand-over, before the connection's first byte is read: from then on one thread owns
//! it and does all its work. A thread whose connection ended waits up to [`THREAD_KEEP`] for
//! the next one, then ends, so the pool grows on demand and shrinks when idle.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// A connection thread with nothing to do waits this long for a new connection, then ends.
pub(super) const THREAD_KEEP: Duration = Duration::from_secs(5);
/// Stack of a connection thread: the handlers need little; the default 2 MiB is address
/// space a thousand idle connections need not reserve.
pub(super) const STACK_BYTES: usize = 256 * 1024;

/// Idle threads and the jobs (new connections) handed to them.
pub(super) struct Pool<T> {
    thread_name: String,
    state: Mutex<Waiting<T>>,
    wake: Condvar,
    stopping: AtomicBool,
}

/// Invariant: threads waiting = `idle` + `jobs.len()`, so a job always has a thread about
/// to take it.
struct Waiting<T> {
    idle: usize,
    jobs: VecDeque<T>,
}

impl<T: Send + 'static> Pool<T> {
    /// An empty pool whose threads are called `thread_name`.
    pub(super) fn new(thread_name: String) -> Pool<T> {
        Pool {
            thread_name,
            state: Mutex::new(Waiting {
                idle: 0,
                jobs: VecDeque::new(),
            }),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work(job)` on an idle thread (which then goes on with its own `work`), or on a
    /// new thread that runs `work` for each later job it takes. An error means no thread
    /// could be started and the job is dropped.
    pub(super) fn run(
        self: &Arc<Self>,
        job: T,
        work: impl Fn(T) + Send + 'static,
    ) -> io::Result<()> {
        {
            let mut waiting = self.lock();
            if waiting.idle > 0 {
                waiting.idle -= 1;
                waiting.jobs.push_back(job);
                self.wake.notify_one();
                return Ok(());
            }
        }
        let pool = Arc::clone(self);
        thread::Builder::new()
            .name(self.thread_name.clone())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let mut job = job;
                loop {
                    work(job);
                    match pool.next_job() {
                        Some(next) => job = next,
                        None => return,
                    }
                }
            })
            .map(drop)
    }

    /// Ends idle threads now, and every other one when its current job ends.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _waiting = self.lock();
        self.wake.notify_all();
    }

    /// Waits as an idle thread for the next job handed over by [`Pool::run`].
    fn next_job(&self) -> Option<T> {
        let mut waiting = self.lock();
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        waiting.idle += 1;
        loop {
            if let Some(job) = waiting.jobs.pop_front() {
                return Some(job);
            }
            if self.stopping.load(Ordering::SeqCst) {
                waiting.idle -= 1;
                return None;
            }
            let (guard, wait) = match self.wake.wait_timeout(waiting, THREAD_KEEP) {
                Ok(woken) => woken,
                Err(poisoned) => poisoned.into_inner(),
            };
            waiting = guard;
            if wait.timed_out() && waiting.jobs.is_empty() {
                waiting.idle -= 1;
                return None;
            }
        }
    }
}
