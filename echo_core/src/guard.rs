//! Limits, and defences against tiny_http 0.12 hazards, kept in one place.
//!
//! tiny_http buffers a body of up to 1024 bytes before we see the request and streams any
//! larger one. A body left unread is drained when the request is dropped
//! (`EqualReader::drop`): that blocks the worker until the client sends it all or closes,
//! and first allocates a zeroed buffer of the whole declared length, so
//! `Content-Length: 99999999999` aborts the process on the failed allocation (upstream
//! issue tiny-http#252, fix unmerged). Our routes take no body, so:
//! - a request with a body tiny_http did not buffer gets 413 and `Connection: close`, and its
//!   socket is shut down for reading first, so the drain ends at once ([`respond`]);
//! - [`DrainSafeAlloc`] serves zeroed allocations of 1 GiB or more from an untouched
//!   `MAP_NORESERVE` mapping, so that drain's buffer costs address space, not memory.
//!
//! Also here: [`unstarve`], for connections tiny_http's thread pool leaves waiting.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use socket2::SockRef;

use crate::http::Response;

/// Longest request target (path and query) accepted; longer gets 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most header bytes accepted (each header counted as name + value + 4); more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest body accepted and ignored, the size tiny_http buffers itself; larger gets 413.
pub const MAX_BODY_BYTES: usize = 1024;

/// The limits as `--help` shows them.
pub const LIMITS_HELP: &str =
    "Limits: request target (path and query) 8 KiB → 414; header bytes 16 KiB → 431; \
request body 1 KiB (bodies are not used) → 413 and the connection is closed.";

/// The limits of the contract, checked before any handler runs.
pub fn check_request(rq: &tiny_http::Request) -> Option<Response> {
    let has_header = |name: &str| {
        rq.headers()
            .iter()
            .any(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
    };
    let declared = rq.body_length().unwrap_or(0);
    let unbuffered = has_header("Transfer-Encoding")
        || declared > MAX_BODY_BYTES
        || (declared > 0 && has_header("Expect"));
    if unbuffered {
        return Some(Response::error(413, "Request body too large"));
    }
    if rq.url().len() > MAX_TARGET_BYTES {
        return Some(Response::error(414, "Request target too long"));
    }
    let header_bytes: usize = rq
        .headers()
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(Response::error(431, "Request header fields too large"));
    }
    None
}

/// Sends the response. With `close` (an unread body), the connection's socket is first shut
/// down for reading, so the drain tiny_http runs when the request is dropped returns at
/// once instead of waiting for a body that may never come.
pub fn respond(
    rq: tiny_http::Request,
    response: tiny_http::Response<std::io::Cursor<Vec<u8>>>,
    close: bool,
    local_port: u16,
) -> std::io::Result<()> {
    if close {
        if let Some(peer) = rq.remote_addr() {
            shutdown_read(local_port, *peer);
        }
    }
    rq.respond(response)
}

/// tiny_http does not expose a request's socket, so find it among our descriptors by its
/// two addresses. Only ever runs for a refused body.
fn shutdown_read(local_port: u16, peer: SocketAddr) {
    if let Some(conn) = connections(local_port).into_iter().find(|c| c.peer == peer) {
        conn.shutdown_read();
    }
}

/// One accepted connection of ours, found among the process's descriptors.
struct Connection {
    fd: BorrowedFd<'static>,
    peer: SocketAddr,
}

impl Connection {
    fn sock(&self) -> SockRef<'_> {
        SockRef::from(&self.fd)
    }

    /// Shuts the connection down for reading, after checking that the descriptor still is
    /// this connection (its number may have been reused since the scan).
    fn shutdown_read(&self) {
        let sock = self.sock();
        if sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(self.peer) {
            let _ = sock.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Bytes received and not yet read.
    fn unread(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let ok = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::FIONREAD, &mut n) } == 0;
        if ok {
            n.max(0) as usize
        } else {
            0
        }
    }

    /// The kernel's view of the connection: total bytes received, total bytes sent and
    /// acknowledged, and milliseconds since data was last received and last sent.
    fn info(&self) -> Option<(u64, u64, u32, u32)> {
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes of it.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let ok = libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            ) == 0;
            ok.then_some((
                info.tcpi_bytes_received,
                info.tcpi_bytes_acked,
                info.tcpi_last_data_recv,
                info.tcpi_last_data_sent,
            ))
        }
    }
}

/// The connected sockets of this process whose local port is `local_port`: the connections
/// a server on that port accepted (B's own calls to A have other local ports).
fn connections(local_port: u16) -> Vec<Connection> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|raw| {
            // SAFETY: the descriptor is only borrowed for getsockname, getpeername,
            // getsockopt, ioctl and shutdown; if it is closed meanwhile they fail with EBADF,
            // and a reused number is at worst another connection of ours shut down for
            // reading, which HTTP lets a server do to an idle connection.
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            let sock = SockRef::from(&fd);
            let local = sock.local_addr().ok()?.as_socket()?;
            let peer = sock.peer_addr().ok()?.as_socket()?;
            (local.port() == local_port).then_some(Connection { fd, peer })
        })
        .collect()
}

/// tiny_http 0.12 hands each connection to a pool thread (`util::TaskPool`), and counts an
/// idle thread as free until that thread wakes up; a burst of new connections can therefore
/// be queued behind one thread, and a queued connection waits until another connection
/// closes: with keep-alive clients, seconds or for good (B's first calls after A starts time
/// out). Called every [`UNSTARVE_EVERY`], this finds connections that are waiting (bytes
/// unread, and not one byte more received since the previous call, so nobody is reading
/// them) and shuts down for reading as many idle keep-alive connections: no bytes unread
/// and answered since their last request, so their thread sits in a read; longest idle
/// first. That frees those threads for the waiting connections. HTTP lets a server close an
/// idle connection at any time, and B retries a call that meets one. `waiting_since` carries
/// the received-byte counts between calls. Returns how many connections were closed.
pub fn unstarve(local_port: u16, waiting_since: &mut HashMap<SocketAddr, u64>) -> usize {
    let mut waiting = 0;
    let mut unread_now = HashMap::new();
    let mut idle = Vec::new();
    for conn in connections(local_port) {
        let Some((received, sent, last_recv_ms, last_sent_ms)) = conn.info() else {
            continue;
        };
        if conn.unread() > 0 {
            waiting += usize::from(waiting_since.get(&conn.peer) == Some(&received));
            unread_now.insert(conn.peer, received);
        } else if sent > 0 && last_sent_ms <= last_recv_ms {
            // Answered since it last sent us anything (times are in ticks of a few ms, so an
            // equal time counts as answered; a connection never answered does not count).
            idle.push((last_recv_ms, conn));
        }
    }
    *waiting_since = unread_now;
    idle.sort_by_key(|(ms, _)| std::cmp::Reverse(*ms));
    let freed = idle.len().min(waiting);
    for (_, conn) in idle.iter().take(freed) {
        conn.shutdown_read();
    }
    freed
}

/// Shuts down for reading every connection accepted on `local_port`, at shutdown: answers
/// still being written go out, and then tiny_http reads the end of the stream and closes
/// the connection, so a keep-alive client sees it closed rather than a request that hangs
/// unanswered until the process exits.
pub fn close_connections(local_port: u16) {
    for conn in connections(local_port) {
        conn.shutdown_read();
    }
}

/// How often the server loop calls [`unstarve`].
pub const UNSTARVE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The global allocator of both services: the system allocator, except that allocations of
/// 1 GiB or more come from anonymous `MAP_NORESERVE` mappings. Only tiny_http's drain of a
/// huge declared body asks for such sizes; its pages are never touched beyond the few bytes
/// that arrive, so the process stays small.
///
/// Where even that mapping is impossible (a declared length beyond the address space, up to
/// `isize::MAX`), a zeroed request gets a *decoy* instead of aborting the process: 64 KiB of
/// real memory followed by a `PROT_NONE` guard page. The drain's only writers are a copy out
/// of tiny_http's 1 KiB read buffer, which fits, and `read(2)`, which stops with EFAULT at
/// the guard. Up to [`DECOYS`] may be live at once; the drain ends at once (its socket was
/// shut down), so more would need that many simultaneous requests in the same microseconds.
/// A decoy breaks `GlobalAlloc`'s contract (it is smaller than the layout): that is sound
/// only because nothing but that drain asks for such sizes, and the drain only reads into
/// the buffer through `read(2)`; the alternative is the abort.
pub struct DrainSafeAlloc;

const HUGE: usize = 1 << 30;
const DECOY_BYTES: usize = 64 * 1024;
const GUARD_BYTES: usize = 4096;
/// Decoys that may be live at once.
pub const DECOYS: usize = 1024;

static DECOY_SLOTS: [AtomicPtr<u8>; DECOYS] = [const { AtomicPtr::new(ptr::null_mut()) }; DECOYS];

unsafe impl GlobalAlloc for DrainSafeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE {
            return System.alloc(layout);
        }
        map(layout.size(), libc::PROT_READ | libc::PROT_WRITE)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE {
            return System.alloc_zeroed(layout);
        }
        let p = map(layout.size(), libc::PROT_READ | libc::PROT_WRITE);
        if p.is_null() {
            decoy()
        } else {
            p
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if layout.size() < HUGE {
            return System.dealloc(p, layout);
        }
        for slot in &DECOY_SLOTS {
            if slot.load(Ordering::Acquire) == p {
                libc::munmap(p.cast(), DECOY_BYTES + GUARD_BYTES);
                slot.store(ptr::null_mut(), Ordering::Release);
                return;
            }
        }
        libc::munmap(p.cast(), layout.size());
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < HUGE && new_size < HUGE {
            return System.realloc(p, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let q = self.alloc(new_layout);
        if !q.is_null() {
            let valid = if is_decoy(p) {
                DECOY_BYTES
            } else {
                layout.size()
            };
            ptr::copy_nonoverlapping(p, q, valid.min(new_size));
            self.dealloc(p, layout);
        }
        q
    }
}

/// An anonymous, page-aligned `MAP_NORESERVE` mapping, or null.
unsafe fn map(len: usize, prot: libc::c_int) -> *mut u8 {
    let p = libc::mmap(
        ptr::null_mut(),
        len,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

fn is_decoy(p: *mut u8) -> bool {
    DECOY_SLOTS
        .iter()
        .any(|slot| slot.load(Ordering::Acquire) == p)
}

unsafe fn decoy() -> *mut u8 {
    let p = map(DECOY_BYTES + GUARD_BYTES, libc::PROT_NONE);
    if p.is_null() || libc::mprotect(p.cast(), DECOY_BYTES, libc::PROT_READ | libc::PROT_WRITE) != 0
    {
        return ptr::null_mut();
    }
    for slot in &DECOY_SLOTS {
        if slot
            .compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return p;
        }
    }
    libc::munmap(p.cast(), DECOY_BYTES + GUARD_BYTES);
    ptr::null_mut()
}
