//! What a connection in the epoll set waits for, and its name there: the vocabulary the
//! connections and the poller share, apart from both so that neither imports the other's.

use rustix::event::epoll::EventFlags;

/// What a connection waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Interest {
    /// The next bytes of a request (or the end of a lingering connection).
    Read,
    /// Room in the socket's send buffer for the rest of an answer (nothing else is read).
    Write,
    /// Anything: a connection armed so is handled at once (the stop wakes idle ones).
    Any,
}

impl Interest {
    /// The one-shot registration that waits for it.
    pub(super) fn flags(self) -> EventFlags {
        match self {
            Interest::Read => EventFlags::IN | EventFlags::ONESHOT,
            Interest::Write => EventFlags::OUT | EventFlags::ONESHOT,
            Interest::Any => EventFlags::IN | EventFlags::OUT | EventFlags::ONESHOT,
        }
    }
}

/// A connection's name in the epoll set: its slot (low 32 bits) and the slot's generation.
pub(super) type Token = u64;
