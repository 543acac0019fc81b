//! The one timer thread: every wait of every connection has a deadline, and this thread
//! shuts the connections whose deadline passed down (a worker then sees the closed socket
//! and closes it); it also arms each delayed answer for writing when it is due, so a delay
//! holds no thread. While the server stops, it wakes idle keep-alive connections, so that
//! a worker closes each (or answers what just arrived on it).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::conn::{waiting, Conn};
use super::Core;
use super::{Interest, Token};

/// How often deadlines are checked: the precision of every timeout.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Delayed answers by when they are due, and the signal that one was added or the server
/// is gone.
#[derive(Default)]
pub(super) struct Timer {
    due: Mutex<Due>,
    changed: Condvar,
}

#[derive(Default)]
struct Due {
    answers: BinaryHeap<Reverse<(Instant, Token)>>,
    finished: bool,
}

impl Timer {
    fn lock(&self) -> MutexGuard<'_, Due> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms the connection `token` for writing at `due` (its delayed answer).
    pub(super) fn wake_at(&self, due: Instant, token: Token) {
        let mut state = self.lock();
        let sooner = state
            .answers
            .peek()
            .is_none_or(|Reverse((at, _))| due < *at);
        state.answers.push(Reverse((due, token)));
        if sooner {
            self.changed.notify_one();
        }
    }

    /// Sweeps now (the stop began), and ends the thread once `finished`.
    pub(super) fn nudge(&self, finished: bool) {
        let mut state = self.lock();
        state.finished |= finished;
        self.changed.notify_one();
    }
}

/// The timer thread's loop.
pub(super) fn run(core: Arc<Core>) {
    let timer = &core.timer;
    let mut next_sweep = Instant::now();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut state = timer.lock();
            if state.finished {
                return;
            }
            while let Some(Reverse((at, token))) = state.answers.peek().copied() {
                if at > now {
                    break;
                }
                state.answers.pop();
                due.push(token);
            }
        }
        for conn in due.iter().filter_map(|token| core.poller.lookup(*token)) {
            core.poller.arm(&conn, Interest::Write);
        }
        if now >= next_sweep {
            sweep(&core, now);
            next_sweep = now + SWEEP_EVERY;
        }
        let state = timer.lock();
        let until = state
            .answers
            .peek()
            .map_or(next_sweep, |Reverse((at, _))| (*at).min(next_sweep));
        let wait = until.saturating_duration_since(Instant::now());
        if !wait.is_zero() && !state.finished {
            drop(timer.changed.wait_timeout(state, wait));
        }
    }
}

/// Shuts down every connection whose deadline passed; while stopping, wakes every idle one
/// and gives each one that has sent nothing yet its last chance.
fn sweep(core: &Core, now: Instant) {
    let now_ms = core.clock(now);
    let stopping = core.stopped_at();
    let (mut expired, mut idle) = (Vec::new(), Vec::new());
    for conn in core.poller.table().conns() {
        let deadline = conn.deadline.load(Ordering::SeqCst);
        if deadline != 0
            && deadline <= now_ms
            && conn
                .deadline
                .compare_exchange(deadline, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            expired.push(Arc::clone(conn));
            continue;
        }
        if let Some(stop) = stopping {
            match conn.waiting.load(Ordering::SeqCst) {
                waiting::NEXT => idle.push(Arc::clone(conn)),
                waiting::FIRST => {
                    let last = core.clock(stop + super::conn::STOP_FIRST_REQUEST);
                    if deadline > last {
                        let swap = Ordering::SeqCst;
                        let _ = conn.deadline.compare_exchange(deadline, last, swap, swap);
                    }
                }
                _ => {}
            }
        }
    }
    // A connection waiting to read sees the end of its input (and may still answer: the
    // 503 of one over the limit); one waiting to write is cut off both ways.
    for conn in expired {
        let how = match conn.interest() {
            Interest::Write => Shutdown::Both,
            _ => Shutdown::Read,
        };
        let _ = conn.stream.shutdown(how);
    }
    for conn in idle {
        wake(core, &conn);
    }
}

/// Arms a connection for any event at once, so that a worker looks at it now.
fn wake(core: &Core, conn: &Conn) {
    core.poller.arm(conn, Interest::Any);
}
