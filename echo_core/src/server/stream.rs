//! Reading and writing one accepted socket, each wait within its own timeout: a request
//! head within [`HEAD_TIMEOUT`] of its first byte, an idle keep-alive within
//! [`IDLE_TIMEOUT`], a whole answer within [`WRITE_TIMEOUT`]; and the linger before a close.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::wire::{parse_head, Head, Rejection};

/// The whole request head must arrive within this, from its first byte (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no new request for this long is closed. Longer than a
/// pooling client keeps an idle connection (B's ureq: 15 s), so such a client never reuses
/// a connection just as we close it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write blocked this long (a client that stopped reading) fails and the connection ends.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Before closing a connection, unread input is drained for at most this long (or
/// [`LINGER_BYTES`]): closing with input unread sends a reset, which can destroy our last
/// answer (a 400, say) before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
pub(super) const LINGER_BYTES: usize = 64 * 1024;

/// Closes our side for writing, then drains what the client still sends for a short while,
/// so that closing does not reset the connection under our last answer.
pub(super) fn linger(stream: &TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return; // already gone
    }
    let deadline = Instant::now() + LINGER;
    let (mut drained, mut sink) = (0, [0u8; 4096]);
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Writes answers on one connection, each whole within [`WRITE_TIMEOUT`] or not at all: the
/// socket's send timeout bounds one system call, so a client reading a few bytes now and
/// then would otherwise keep a write going for as long as it likes. The common answer
/// goes out in one `write` and costs no extra system call.
pub(super) struct Writer<'a> {
    stream: &'a TcpStream,
    /// The socket's send timeout now, [`WRITE_TIMEOUT`] as set at accept.
    timeout: Duration,
}

impl<'a> Writer<'a> {
    pub(super) fn new(stream: &'a TcpStream) -> Writer<'a> {
        Writer {
            stream,
            timeout: WRITE_TIMEOUT,
        }
    }

    /// Writes all of `bytes` within [`WRITE_TIMEOUT`] from now.
    pub(super) fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        if self.timeout != WRITE_TIMEOUT {
            self.set_timeout(WRITE_TIMEOUT)?;
        }
        while !bytes.is_empty() {
            match (&*self.stream).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if !bytes.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                self.set_timeout(left)?;
            }
        }
        Ok(())
    }

    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.stream.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }
}

/// Reads from one connection with the right timeout for each wait.
pub(super) struct Reader<'a> {
    stream: &'a TcpStream,
    timeout: Option<Duration>,
    /// A head has been read on this connection: from then on a wait between requests is
    /// the idle timeout; before, a connection that sends nothing gets `first_wait`.
    served: bool,
    first_wait: Duration,
    /// Where each read lands before what arrived is appended to the request buffer; zeroed
    /// once per connection, not once per read.
    chunk: [u8; 8192],
}

impl<'a> Reader<'a> {
    pub(super) fn new(stream: &'a TcpStream, first_wait: Duration) -> Reader<'a> {
        Reader {
            stream,
            timeout: None,
            served: false,
            first_wait,
            chunk: [0u8; 8192],
        }
    }

    /// Reads what arrives (at most 8 KiB at a time) onto `buf`, waiting at most `timeout`.
    /// Returns false at end of stream or when the wait passed.
    fn fill(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> bool {
        if self.timeout != Some(timeout) {
            if self.stream.set_read_timeout(Some(timeout)).is_err() {
                return false;
            }
            self.timeout = Some(timeout);
        }
        match (&*self.stream).read(&mut self.chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&self.chunk[..n]);
                true
            }
        }
    }

    /// The next request head, removed from `buf` (what follows it stays: a body, or
    /// pipelined requests). `Ok(None)` when the connection ends quietly between requests.
    pub(super) fn head(&mut self, buf: &mut Vec<u8>) -> Result<Option<Head>, Rejection> {
        let mut deadline = match (buf.is_empty(), self.served) {
            (true, true) => None,
            (true, false) => Some(Instant::now() + self.first_wait),
            (false, _) => Some(Instant::now() + HEAD_TIMEOUT),
        };
        loop {
            if !buf.is_empty() {
                if let Some((head, len)) = parse_head(buf)? {
                    buf.drain(..len);
                    self.served = true;
                    return Ok(Some(head));
                }
            }
            let timeout = match deadline {
                None => IDLE_TIMEOUT,
                Some(at) => at.saturating_duration_since(Instant::now()),
            };
            if timeout.is_zero() || !self.fill(buf, timeout) {
                // Closed or timed out: quietly between requests (or before the first
                // byte), else mid-head.
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Rejection::Close)
                };
            }
            deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
        }
    }

    /// Takes `len` body bytes off `buf`, reading more within [`HEAD_TIMEOUT`] if needed.
    pub(super) fn body(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<Vec<u8>, Rejection> {
        let deadline = Instant::now() + HEAD_TIMEOUT;
        while buf.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(buf, left) {
                return Err(Rejection::Close);
            }
        }
        Ok(buf.drain(..len).collect())
    }
}
