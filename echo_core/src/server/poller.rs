//! The one epoll set the workers share, and the table of open connections its events name.
//!
//! Every connection is registered one-shot: an event disarms it, so exactly one worker owns
//! a ready connection until it re-arms it (or closes it). An event carries a token, the
//! connection's slot and that slot's generation; a slot is reused with the next generation,
//! so an event that was already queued for a closed connection (a stale event) finds a
//! generation that no longer matches and is dropped instead of reaching the new one.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::epoll::{self, Event, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags, Timespec};

use super::conn::Conn;
use super::{Interest, Token};

/// The epoll flags of an interest: each one-shot.
fn flags(interest: Interest) -> EventFlags {
    match interest {
        Interest::Read => EventFlags::IN | EventFlags::ONESHOT,
        Interest::Write => EventFlags::OUT | EventFlags::ONESHOT,
        Interest::Any => EventFlags::IN | EventFlags::OUT | EventFlags::ONESHOT,
    }
}

/// Events taken by one wait at most.
pub(super) const BATCH: usize = 32;

/// The token of the eventfd that wakes every worker at the stop; no slot has it.
const WAKE: Token = u64::MAX;

/// The epoll set, its stop signal and the connections it serves.
pub(super) struct Poller {
    epoll: OwnedFd,
    /// Level-triggered and never read: once written, every `wait` returns at once.
    stop: OwnedFd,
    table: Mutex<Table>,
}

/// The open connections by slot.
#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    open: usize,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Arc<Conn>>,
}

impl Poller {
    pub(super) fn new() -> io::Result<Poller> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &stop, EventData::new_u64(WAKE), EventFlags::IN)?;
        Ok(Poller {
            epoll,
            stop,
            table: Mutex::new(Table::default()),
        })
    }

    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `make`'s connection a slot and registers it for reading. The connection is in
    /// the table before its first event can arrive.
    pub(super) fn register(&self, make: impl FnOnce(Token) -> Conn) -> io::Result<Arc<Conn>> {
        let conn = {
            let mut table = self.table();
            let slot = match table.free.pop() {
                Some(slot) => slot,
                None => {
                    table.slots.push(Slot::default());
                    u32::try_from(table.slots.len() - 1).map_err(|_| io::ErrorKind::OutOfMemory)?
                }
            };
            let entry = &mut table.slots[slot as usize];
            let token = u64::from(entry.generation) << 32 | u64::from(slot);
            let conn = Arc::new(make(token));
            entry.conn = Some(Arc::clone(&conn));
            table.open += 1;
            conn
        };
        let added = epoll::add(
            &self.epoll,
            conn.stream.as_fd(),
            EventData::new_u64(conn.token),
            flags(Interest::Read),
        );
        if let Err(e) = added {
            self.forget(&conn);
            return Err(e.into());
        }
        Ok(conn)
    }

    /// Re-arms a connection for its next event. A failure (the socket is gone) is seen by
    /// whoever handles it next as a closed socket; nothing is lost by ignoring it here.
    pub(super) fn arm(&self, conn: &Conn, interest: Interest) {
        let _ = epoll::modify(
            &self.epoll,
            conn.stream.as_fd(),
            EventData::new_u64(conn.token),
            flags(interest),
        );
    }

    /// Takes a connection out of the epoll set and the table; its slot's next user gets
    /// the next generation. Returns how many connections are still open.
    pub(super) fn forget(&self, conn: &Conn) -> usize {
        let _ = epoll::delete(&self.epoll, conn.stream.as_fd());
        let mut table = self.table();
        let slot = (conn.token & u64::from(u32::MAX)) as u32;
        if let Some(entry) = table.slots.get_mut(slot as usize) {
            if entry.conn.as_ref().is_some_and(|c| c.token == conn.token) {
                entry.conn = None;
                entry.generation = entry.generation.wrapping_add(1);
                table.free.push(slot);
                table.open -= 1;
            }
        }
        table.open
    }

    /// The connection a token names, unless the token is stale.
    pub(super) fn lookup(&self, token: Token) -> Option<Arc<Conn>> {
        let slot = (token & u64::from(u32::MAX)) as usize;
        let table = self.table();
        let entry = table.slots.get(slot)?;
        entry
            .conn
            .as_ref()
            .filter(|c| c.token == token)
            .map(Arc::clone)
    }

    /// Waits for ready connections (at most `max`, at most [`BATCH`]) or until `timeout`,
    /// and puts their tokens in `ready`. Returns false once the stop was signalled.
    pub(super) fn wait(
        &self,
        ready: &mut Vec<Token>,
        max: usize,
        timeout: Option<Duration>,
    ) -> bool {
        ready.clear();
        let mut events = [MaybeUninit::<Event>::uninit(); BATCH];
        let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
        let max = max.clamp(1, BATCH);
        match epoll::wait(&self.epoll, &mut events[..max], timeout.as_ref()) {
            Ok((got, _)) => ready.extend(got.iter().map(|e| e.data.u64())),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                log::error!(target: "echo_core", "epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let stopped = ready.contains(&WAKE);
        ready.retain(|token| *token != WAKE);
        !stopped
    }

    /// Wakes every worker, now and at every later wait: the server is gone.
    pub(super) fn stop_all(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }
}

impl Table {
    /// How many connections are open.
    pub(super) fn open(&self) -> usize {
        self.open
    }

    /// Every open connection.
    pub(super) fn conns(&self) -> impl Iterator<Item = &Arc<Conn>> {
        self.slots.iter().filter_map(|s| s.conn.as_ref())
    }
}
