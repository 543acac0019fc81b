//! What B's ureq calls run on, owned here because ureq's own TCP transport costs system calls
//! a call to A need not make: our connector opens a TCP connection to the replica's address
//! (no name lookup on a call: replicas are addresses), and our transport
//! - checks a pooled connection with one non-blocking peek (`MSG_PEEK | MSG_DONTWAIT`), and
//!   only when it is taken from the pool: handing it back just after its answer was read
//!   needs no check (ureq asks twice; the next checkout looks anyway);
//! - changes a socket timeout only when the call's deadline needs it: the timeout set on the
//!   socket is never longer than what is left of the deadline, so no read or write can
//!   outlive it, and it is set to half of what was left, so that later calls, which start
//!   with the whole deadline, find it short enough and change nothing; a read that times out
//!   early goes on with what is left;
//! - counts the bytes of each attempt's answer and whether its connection was reused
//!   ([`attempt_facts`]), so that an answer cut after its first bytes is never retried.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::SockRef;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

/// What the transport saw of the current attempt on this thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AttemptFacts {
    /// Bytes of the answer received.
    pub(crate) received: usize,
    /// The connection came from the pool (it may have died while idle).
    pub(crate) reused: bool,
}

thread_local! {
    static FACTS: Cell<AttemptFacts> = const { Cell::new(AttemptFacts { received: 0, reused: false }) };
}

/// Starts counting a new attempt on this thread.
pub(crate) fn new_attempt() {
    FACTS.with(|f| f.set(AttemptFacts::default()));
}

/// What the transport saw of this thread's current attempt.
pub(crate) fn attempt_facts() -> AttemptFacts {
    FACTS.with(Cell::get)
}

fn note(change: impl FnOnce(&mut AttemptFacts)) {
    FACTS.with(|f| {
        let mut facts = f.get();
        change(&mut facts);
        f.set(facts);
    });
}

/// Replicas are addresses: the host of every URL B calls is an IP literal, answered here
/// without a lookup (ureq's default resolver would start a thread per call).
#[derive(Debug, Default)]
pub(crate) struct AddressOnly;

impl Resolver for AddressOnly {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        let ip: IpAddr = host.parse().map_err(|_| ureq::Error::HostNotFound)?;
        let mut addrs = self.empty();
        addrs.push(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)));
        Ok(addrs)
    }
}

/// Opens a [`Conn`] to the resolved address within the connect phase's time.
#[derive(Debug, Default)]
pub(crate) struct Connect;

impl Connector<()> for Connect {
    type Out = Conn;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Conn>, ureq::Error> {
        let addr = *details.addrs.first().ok_or(ureq::Error::HostNotFound)?;
        let limit = details.timeout;
        if limit.after.is_zero() {
            return Err(ureq::Error::Timeout(limit.reason));
        }
        let stream = match limit.after.is_not_happening() {
            true => TcpStream::connect(addr),
            false => TcpStream::connect_timeout(&addr, *limit.after),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(ureq::Error::Timeout(limit.reason));
            }
            Err(e) => return Err(e.into()),
        };
        stream.set_nodelay(true)?;
        let config = details.config;
        Ok(Some(Conn {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
            just_answered: false,
        }))
    }
}

/// One TCP connection to a replica of A.
pub(crate) struct Conn {
    stream: TcpStream,
    buffers: LazyBuffers,
    /// The socket's timeouts as last set (`None`: never set, blocking).
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Bytes of an answer were just read: ureq handing the connection back to its pool
    /// needs no check.
    just_answered: bool,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// The remaining time of a phase as an instant, `None` when it has no limit.
fn deadline_of(timeout: &NextTimeout) -> Result<Option<Instant>, ureq::Error> {
    if timeout.after.is_not_happening() {
        return Ok(None);
    }
    if timeout.after.is_zero() {
        return Err(ureq::Error::Timeout(timeout.reason));
    }
    Ok(Some(Instant::now() + *timeout.after))
}

/// The socket timeout for a wait with `left` to go: unchanged (`None`) while the current
/// one is not longer than `left` nor shorter than a quarter of it (a wait cut that short
/// would cost a system call for each piece); else half of `left`, at least 1 ms.
fn timeout_for(current: Option<Duration>, left: Duration) -> Option<Duration> {
    match current {
        Some(t) if t <= left && t >= left / 4 => None,
        _ => Some((left / 2).max(Duration::from_millis(1))),
    }
}

impl Conn {
    /// Runs `io` until it succeeds or the deadline passes, keeping the socket's timeout
    /// within what is left; a wait that ends early because that timeout was shorter goes on.
    fn within<T>(
        &mut self,
        timeout: NextTimeout,
        write: bool,
        mut io: impl FnMut(&mut Self) -> io::Result<T>,
    ) -> Result<T, ureq::Error> {
        let deadline = deadline_of(&timeout)?;
        loop {
            if let Some(at) = deadline {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ureq::Error::Timeout(timeout.reason));
                }
                let current = if write {
                    self.write_timeout
                } else {
                    self.read_timeout
                };
                if let Some(set) = timeout_for(current, left) {
                    let sock = &self.stream;
                    if write {
                        sock.set_write_timeout(Some(set))?;
                        self.write_timeout = Some(set);
                    } else {
                        sock.set_read_timeout(Some(set))?;
                        self.read_timeout = Some(set);
                    }
                }
            }
            match io(self) {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if deadline.is_none() {
                        return Err(e.into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Transport for Conn {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        let mut sent = 0;
        while sent < amount {
            let n = self.within(timeout, true, |conn| {
                (&conn.stream).write(&conn.buffers.output()[sent..amount])
            })?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            sent += n;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        let n = self.within(timeout, false, |conn| {
            (&conn.stream).read(conn.buffers.input_append_buf())
        })?;
        self.buffers.input_appended(n);
        note(|facts| facts.received += n);
        self.just_answered = n > 0;
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.just_answered) {
            return true; // handed back right after its answer: the next checkout looks
        }
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let open = match SockRef::from(&self.stream)
            .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock, // nothing waiting: clean
            Ok(_) => false, // closed (0), or bytes nobody asked for
        };
        if open {
            note(|facts| facts.reused = true);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_timeout_changes_only_when_the_deadline_needs_it() {
        let ms = Duration::from_millis;
        // Never set: half of what is left.
        assert_eq!(timeout_for(None, ms(2000)), Some(ms(1000)));
        // Short enough already: unchanged, however often calls start with the whole deadline.
        assert_eq!(timeout_for(Some(ms(1000)), ms(2000)), None);
        assert_eq!(timeout_for(Some(ms(1000)), ms(1000)), None);
        assert_eq!(timeout_for(Some(ms(500)), ms(2000)), None);
        // Longer than what is left: never allowed to outlive the deadline.
        assert_eq!(
            timeout_for(Some(ms(1000)), ms(999)),
            Some(Duration::from_micros(499_500))
        );
        assert_eq!(
            timeout_for(Some(ms(1000)), Duration::from_micros(10)),
            Some(ms(1))
        );
        // So short that a long wait would be cut into many: set again.
        assert_eq!(timeout_for(Some(ms(1)), ms(2000)), Some(ms(1000)));
    }

    #[test]
    fn addresses_are_not_looked_up() {
        let resolve = |url: &str| {
            let uri: Uri = url.parse().expect("uri");
            AddressOnly
                .resolve(
                    &uri,
                    &ureq::config::Config::default(),
                    NextTimeout::default(),
                )
                .map(|a| a.to_vec())
        };
        let v4: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(resolve("http://127.0.0.1:8080/echo").ok(), Some(vec![v4]));
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(resolve("http://[::1]/echo").ok(), Some(vec![v6]));
        assert!(resolve("http://localhost:9/").is_err());
    }
}
