//! How long each wait of a connection may last, and what an armed connection waits for: the
//! limits the timer enforces and the workers set.

use std::time::Duration;

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
pub(super) const LINGER: Duration = Duration::from_secs(2);
pub(super) const LINGER_BYTES: usize = 64 * 1024;
/// At the stop, a connection that has sent nothing yet has this long to begin its first
/// request (it was accepted, so it is answered: a client that connects and sends at once
/// must not find its connection closed under it).
pub(super) const STOP_FIRST_REQUEST: Duration = Duration::from_secs(2);
/// How long a new connection may wait for its first request.
pub(super) fn first_wait(over_limit: bool) -> Duration {
    if over_limit {
        OVER_LIMIT_HEAD_TIMEOUT
    } else {
        HEAD_TIMEOUT
    }
}

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
