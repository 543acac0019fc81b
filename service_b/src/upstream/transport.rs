//! What B's ureq calls run on, owned here because ureq's own TCP transport costs system calls
//! a call to A need not make, and because B pools its connections itself (see `pool`):
//! ureq keeps none. Each attempt gets its own [`Connect`], which takes an idle connection
//! of the shared pool (or opens one to the replica's address: no name lookup on a call,
//! replicas are addresses) and counts the bytes of the attempt's answer into a counter the
//! attempt reads afterwards, so that an answer cut after its first bytes is never retried.
//! Our transport
//! - goes back to the pool only when ureq hands it back after a whole answer (ureq's
//!   `reuse`, the one caller of [`Transport::is_open`] with ureq's own pool empty);
//! - changes a socket timeout only when the call's deadline needs it: the timeout set on the
//!   socket is never longer than what is left of the deadline, so no read or write can
//!   outlive it, and it is set to half of what was left, so that later calls, which start
//!   with the whole deadline, find it short enough and change nothing; a read that times out
//!   early goes on with what is left.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

use super::pool::{clean, Link, Pool};

/// An attempt's input buffer, and (less one byte) the largest answer head accepted: A's
/// head is about 150 bytes and its whole answer to a usual message under 2 KiB; a longer
/// body is read through it in pieces. (ureq's default is 128 KiB, each way.)
pub(crate) const INPUT_BUFFER: usize = 4 * 1024;
/// An attempt's output buffer, which holds the whole request head: enough for a usual
/// message; an attempt whose head needs more gets buffers of its own, not kept.
pub(crate) const OUTPUT_BUFFER: usize = 2 * 1024;

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

/// The connector of one attempt: an idle connection of the shared pool to the replica (unless
/// the attempt must be `fresh`), else a new one within the connect phase's time. A fresh
/// attempt's connection is not kept afterwards either (it follows a failure on that
/// replica: its next call starts clean).
#[derive(Debug)]
pub(crate) struct Connect {
    pub(crate) pool: Arc<Pool>,
    /// On a new connection, never a pooled one (a retry on the same replica).
    pub(crate) fresh: bool,
    /// Bytes of the answer received, read by the attempt when it fails.
    pub(crate) received: Arc<AtomicUsize>,
}

impl Connector<()> for Connect {
    type Out = Conn;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Conn>, ureq::Error> {
        let addr = *details.addrs.first().ok_or(ureq::Error::HostNotFound)?;
        let config = details.config;
        // Buffers of the usual sizes stay with the connection from one attempt to the next.
        let usual = (config.input_buffer_size(), config.output_buffer_size())
            == (INPUT_BUFFER, OUTPUT_BUFFER);
        let conn = |mut link: Link| Conn {
            buffers: link.buffers.take().filter(|_| usual).unwrap_or_else(|| {
                LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size())
            }),
            link: Some(link),
            addr,
            pool: Arc::clone(&self.pool),
            received: Arc::clone(&self.received),
            usual,
            just_answered: false,
            reusable: false,
            keep: !self.fresh,
        };
        if !self.fresh {
            if let Some(link) = self.pool.take(addr) {
                return Ok(Some(conn(link)));
            }
        }
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
        Ok(Some(conn(Link {
            stream,
            read_timeout: None,
            write_timeout: None,
            buffers: None,
        })))
    }
}

/// One TCP connection to a replica of A, for one attempt; back to the pool after a whole
/// answer, closed otherwise.
pub(crate) struct Conn {
    /// `None` only once given back.
    link: Option<Link>,
    addr: SocketAddr,
    pool: Arc<Pool>,
    received: Arc<AtomicUsize>,
    buffers: LazyBuffers,
    /// The buffers are of the usual sizes: they go back with the connection.
    usual: bool,
    /// Bytes of an answer were just read: ureq handing the connection back needs no check.
    just_answered: bool,
    /// ureq handed it back after a whole answer, and it is clean.
    reusable: bool,
    /// It may go back to the pool (not a fresh attempt's).
    keep: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(mut link) = self.link.take().filter(|_| self.reusable && self.keep) {
            if self.usual {
                link.buffers = Some(std::mem::replace(
                    &mut self.buffers,
                    LazyBuffers::new(1, 1), // allocates nothing
                ));
            }
            self.pool.put(self.addr, link);
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("peer", &self.addr).finish()
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
    /// The connection, until it is given back.
    fn link(&mut self) -> io::Result<&mut Link> {
        self.link
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

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
                let link = self.link()?;
                let current = match write {
                    true => &mut link.write_timeout,
                    false => &mut link.read_timeout,
                };
                if let Some(set) = timeout_for(*current, left) {
                    match write {
                        true => link.stream.set_write_timeout(Some(set))?,
                        false => link.stream.set_read_timeout(Some(set))?,
                    }
                    let current = match write {
                        true => &mut link.write_timeout,
                        false => &mut link.read_timeout,
                    };
                    *current = Some(set);
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
                let Conn { link, buffers, .. } = conn;
                let link = link.as_mut().ok_or(io::ErrorKind::NotConnected)?;
                link.stream.write(&buffers.output()[sent..amount])
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
            let Conn { link, buffers, .. } = conn;
            let link = link.as_mut().ok_or(io::ErrorKind::NotConnected)?;
            link.stream.read(buffers.input_append_buf())
        })?;
        self.buffers.input_appended(n);
        self.received.fetch_add(n, Ordering::Relaxed);
        self.just_answered = n > 0;
        Ok(n > 0)
    }

    /// Called by ureq only when it hands the connection back after a whole answer (its own
    /// pool is kept empty): the connection goes back to the shared pool if it is clean.
    fn is_open(&mut self) -> bool {
        let clean = std::mem::take(&mut self.just_answered)
            || self.link.as_ref().is_some_and(|link| clean(&link.stream));
        self.reusable = clean;
        clean
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
