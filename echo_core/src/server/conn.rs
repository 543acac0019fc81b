//! One connection between two events. The worker that gets a ready connection reads what is
//! there into the connection's own buffer, answers every whole request in it, in order, on
//! its own thread, writes the answers and re-arms the connection for what it waits for next:
//! more bytes, room to write the rest of an answer, or (lingering after its last answer)
//! the client's close. A wait never holds a thread: an incomplete head stays in the buffer,
//! an answer the socket cannot take waits in the buffer, and the deadline of each wait is
//! the timer's (`timer`), which shuts an expired connection down.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::app::Answered;
use super::wire::parse_head;
use super::Core;
use super::{Interest, Token};
use crate::http::Blocking;

/// The whole request head must arrive within this, from its first byte (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no new request for this long is closed. Longer than a
/// pooling client keeps an idle connection (B's: 15 s), so such a client never reuses a
/// connection just as we close it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Each whole answer must be written within this (a client that stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection over `--max-connections` has this long to send its request (a health check
/// sends at once; a silent one must not hold a place for long).
const OVER_LIMIT_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// After its last answer, a connection's unread input is drained for at most this long (or
/// [`LINGER_BYTES`]) before the close: closing with input unread sends a reset, which can
/// destroy that answer (a 400, say) before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
pub(super) const LINGER_BYTES: usize = 64 * 1024;
/// At the stop, a connection that has sent nothing yet has this long to begin its first
/// request (it was accepted, so it is answered: a client that connects and sends at once
/// must not find its connection closed under it).
pub(super) const STOP_FIRST_REQUEST: Duration = Duration::from_secs(1);
/// Answers buffered before they are written: beyond this, pipelined requests wait.
const OUTPUT_HIGH: usize = 64 * 1024;
/// Reads per event at most, so that one busy client cannot keep a worker to itself.
const READS_PER_EVENT: usize = 8;
/// A buffer this large is released when it empties; smaller ones are kept for the next
/// request, so an idle connection keeps at most this much.
const KEEP_BYTES: usize = 4096;

/// What an armed connection waits for, for the timer and the stop (see [`Conn::waiting`]).
pub(super) mod waiting {
    /// A worker (or the timer, for a delayed answer) has it.
    pub const BUSY: u8 = 0;
    /// Its first request: nothing has arrived yet.
    pub const FIRST: u8 = 1;
    /// Its next request, after an answer: an idle keep-alive connection.
    pub const NEXT: u8 = 2;
    /// The rest of a request, or room for the rest of an answer, or the client's close.
    pub const MORE: u8 = 3;
}

/// One accepted connection: its socket, its name in the epoll set, its deadline and the
/// state only the worker that has it touches.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) token: Token,
    accepted: Instant,
    /// Over `--max-connections`: one answer, then closed.
    pub(super) over_limit: bool,
    /// When the timer shuts it down, in milliseconds of the server's clock; 0 for never.
    pub(super) deadline: AtomicU64,
    /// One of [`waiting`]'s values.
    pub(super) waiting: AtomicU8,
    /// What it was last armed for (0 read, 1 write), to re-arm it the same way.
    interest: AtomicU8,
    state: Mutex<State>,
}

/// The buffers of one connection, and where it is in its life.
#[derive(Default)]
struct State {
    input: Vec<u8>,
    /// When the request at the start of `input` began to arrive.
    head_since: Option<Instant>,
    continue_sent: bool,
    output: Vec<u8>,
    written: usize,
    /// When the answer being written (`output`) was first tried.
    write_since: Option<Instant>,
    /// The access lines of the answers in `output`.
    answered: Vec<Answered>,
    /// A request has been answered on this connection.
    served: bool,
    /// The answer in `output` is the connection's last.
    last: bool,
    /// A delayed answer waits in `output` until then.
    due: Option<Instant>,
    /// The last answer is out; its input is drained until the client closes: the bytes
    /// drained so far, and when that must end.
    lingering: Option<(usize, Instant)>,
}

/// What the connection waits for after an event.
enum Next {
    /// Re-arm for `Interest`, with the timer's deadline.
    Arm(Interest, u8, Instant),
    /// A delayed answer: the timer arms it when due.
    Timer(Instant),
    /// Done: close it.
    Close,
}

/// The end of a try to write.
enum Flushed {
    All,
    Partial,
    Failed,
}

impl Conn {
    /// A connection accepted now; `clock` gives the timer's reading of its first deadline.
    pub(super) fn new(
        stream: TcpStream,
        token: Token,
        over_limit: bool,
        clock: impl Fn(Instant) -> u64,
    ) -> Conn {
        let accepted = Instant::now();
        let first_wait = if over_limit {
            OVER_LIMIT_HEAD_TIMEOUT
        } else {
            HEAD_TIMEOUT
        };
        Conn {
            stream,
            token,
            accepted,
            over_limit,
            deadline: AtomicU64::new(clock(accepted + first_wait)),
            waiting: AtomicU8::new(waiting::FIRST),
            interest: AtomicU8::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// How long it may wait for its first request.
    fn first_wait(&self) -> Duration {
        if self.over_limit {
            OVER_LIMIT_HEAD_TIMEOUT
        } else {
            HEAD_TIMEOUT
        }
    }

    /// What it was last armed for.
    pub(super) fn interest(&self) -> Interest {
        match self.interest.load(Ordering::Relaxed) {
            0 => Interest::Read,
            _ => Interest::Write,
        }
    }

    /// Handles an event: the worker that got it owns the connection until it re-arms or
    /// closes it. A second event at once (the stop wakes idle connections) finds the state
    /// taken and is dropped: its owner decides.
    pub(super) fn ready(&self, core: &Core, scratch: &mut [u8], worker: &Arc<dyn Blocking>) {
        let next = {
            let mut state = match self.state.try_lock() {
                Ok(state) => state,
                Err(TryLockError::WouldBlock) => return,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
            };
            self.waiting.store(waiting::BUSY, Ordering::SeqCst);
            self.deadline.store(0, Ordering::SeqCst);
            state.step(self, core, scratch, worker)
        };
        match next {
            Next::Arm(interest, waiting, deadline) => {
                self.deadline.store(core.clock(deadline), Ordering::SeqCst);
                self.waiting.store(waiting, Ordering::SeqCst);
                let write = u8::from(interest == Interest::Write);
                self.interest.store(write, Ordering::Relaxed);
                core.poller.arm(self, interest);
            }
            Next::Timer(due) => core.timer.wake_at(due, self.token),
            Next::Close => core.close(self),
        }
    }

    /// Requests read and not answered, or bytes of one: what a stop that ends this
    /// connection now loses. A connection some worker has counts as losing nothing here:
    /// its request is counted in flight.
    pub(super) fn unread(&self) -> bool {
        self.state
            .try_lock()
            .is_ok_and(|state| !state.input.is_empty() && state.lingering.is_none())
    }
}

impl State {
    /// Everything one event allows: finish writing, answer what is whole, read more.
    fn step(
        &mut self,
        conn: &Conn,
        core: &Core,
        scratch: &mut [u8],
        worker: &Arc<dyn Blocking>,
    ) -> Next {
        if let Some((drained, until)) = self.lingering {
            return self.linger(conn, drained, until, scratch);
        }
        if let Some(due) = self.due {
            if Instant::now() < due {
                return Next::Timer(due); // woken early: the timer arms it when due
            }
            self.due = None;
        }
        // A read shorter than the buffer took all there was: reading again now would only
        // say so (EAGAIN); the re-armed connection says when more comes.
        let (mut reads, mut drained) = (0, false);
        loop {
            if self.output.is_empty() && self.last {
                return self.start_linger(conn);
            }
            if !self.output.is_empty() {
                match self.flush(conn, core) {
                    Flushed::All if self.last => return self.start_linger(conn),
                    Flushed::All => {}
                    Flushed::Partial => {
                        let since = *self.write_since.get_or_insert_with(Instant::now);
                        return Next::Arm(Interest::Write, waiting::MORE, since + WRITE_TIMEOUT);
                    }
                    Flushed::Failed => return Next::Close,
                }
            }
            if self.answer_whole(conn, core, worker) {
                if let Some(due) = self.due {
                    return Next::Timer(due);
                }
                continue;
            }
            if drained || reads == READS_PER_EVENT {
                break;
            }
            reads += 1;
            match (&conn.stream).read(scratch) {
                Ok(0) => return self.end_of_input(conn, core),
                Ok(n) => {
                    drained = n < scratch.len();
                    if self.input.is_empty() {
                        self.head_since = Some(Instant::now());
                    }
                    self.input.extend_from_slice(&scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        self.wait_for_input(conn, core)
    }

    /// The client closed, or the timer ended the wait for its request: a connection over
    /// the limit that asked for nothing still gets the limit's 503 before the close.
    fn end_of_input(&mut self, conn: &Conn, core: &Core) -> Next {
        if conn.over_limit && !self.served && self.output.is_empty() {
            let line = core.app.refuse(&mut self.output);
            self.answered.push(line);
            self.served = true;
            let _ = self.flush(conn, core);
        }
        Next::Close
    }

    /// Answers the whole requests at the start of `input`, in order, into `output`, until
    /// none is whole, an answer is the last or delayed, or enough waits to be written.
    /// Returns whether anything was answered.
    fn answer_whole(&mut self, conn: &Conn, core: &Core, worker: &Arc<dyn Blocking>) -> bool {
        let app = &core.app;
        let mut answered = false;
        while !self.last && self.due.is_none() && self.output.len() < OUTPUT_HIGH {
            let (head, head_len) = match parse_head(&self.input) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(rejection) => {
                    let line = app.reject(rejection, conn.over_limit, &mut self.output);
                    self.answered.push(line);
                    answered = true;
                    self.last = true;
                    self.input.clear();
                    break;
                }
            };
            let end = head_len + head.content_length;
            if self.input.len() < end {
                if head.expect_continue && !self.continue_sent && !conn.over_limit {
                    self.output
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.continue_sent = true;
                    answered = true;
                }
                break;
            }
            let (line, keep_alive) = app.answer(
                head,
                &self.input[head_len..end],
                conn.over_limit,
                worker,
                &mut self.output,
            );
            self.input.drain(..end);
            self.head_since = (!self.input.is_empty()).then(Instant::now);
            self.continue_sent = false;
            self.served = true;
            self.last = !keep_alive;
            let delay = line.delay();
            if !delay.is_zero() {
                self.due = Some(Instant::now() + delay);
            }
            self.answered.push(line);
            answered = true;
        }
        answered
    }

    /// Writes what `output` holds, as far as the socket takes it now. Once it is all out
    /// (or the write failed), the access lines of its answers are written.
    fn flush(&mut self, conn: &Conn, core: &Core) -> Flushed {
        let flushed = loop {
            if self.written == self.output.len() {
                break Flushed::All;
            }
            match (&conn.stream).write(&self.output[self.written..]) {
                Ok(0) => break Flushed::Failed,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Partial,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!(target: core.app.name, "writing an answer failed: {e}");
                    break Flushed::Failed;
                }
            }
        };
        self.output.clear();
        self.written = 0;
        self.write_since = None;
        if self.output.capacity() > KEEP_BYTES {
            self.output = Vec::new();
        }
        for line in self.answered.drain(..) {
            core.app.log_access(line);
        }
        flushed
    }

    /// Re-arms for more input: the rest of a head within its deadline, or the next request
    /// of an idle connection. At the stop, an idle connection closes now and one that has
    /// sent nothing yet gets [`STOP_FIRST_REQUEST`].
    fn wait_for_input(&mut self, conn: &Conn, core: &Core) -> Next {
        if self.input.is_empty() && self.input.capacity() > KEEP_BYTES {
            self.input = Vec::new();
        }
        let now = Instant::now();
        if let Some(since) = self.head_since.filter(|_| !self.input.is_empty()) {
            let limit = if self.served {
                HEAD_TIMEOUT
            } else {
                conn.first_wait()
            };
            return Next::Arm(Interest::Read, waiting::MORE, since + limit);
        }
        if self.served {
            if core.app.stopping() {
                return Next::Close;
            }
            return Next::Arm(Interest::Read, waiting::NEXT, now + IDLE_TIMEOUT);
        }
        let mut deadline = conn.accepted + conn.first_wait();
        if let Some(stop) = core.stopped_at() {
            deadline = deadline.min(stop + STOP_FIRST_REQUEST);
        }
        Next::Arm(Interest::Read, waiting::FIRST, deadline)
    }

    /// After the last answer: no more writes, and the client's input is drained until it
    /// closes, within [`LINGER`] and [`LINGER_BYTES`].
    fn start_linger(&mut self, conn: &Conn) -> Next {
        self.input = Vec::new();
        self.output = Vec::new();
        if conn.stream.shutdown(Shutdown::Write).is_err() {
            return Next::Close;
        }
        let until = Instant::now() + LINGER;
        self.lingering = Some((0, until));
        Next::Arm(Interest::Read, waiting::MORE, until)
    }

    fn linger(
        &mut self,
        conn: &Conn,
        mut drained: usize,
        until: Instant,
        scratch: &mut [u8],
    ) -> Next {
        while drained < LINGER_BYTES {
            match (&conn.stream).read(scratch) {
                Ok(0) => return Next::Close,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.lingering = Some((drained, until));
                    return Next::Arm(Interest::Read, waiting::MORE, until);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Close
    }
}
