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

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
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
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for getpeername, getsockname and shutdown;
        // if it is closed meanwhile they fail with EBADF, and a reused number is rejected by
        // the address check.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let sock = SockRef::from(&fd);
        let peer_matches = sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer);
        if peer_matches
            && sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.port())
                == Some(local_port)
        {
            let _ = sock.shutdown(std::net::Shutdown::Read);
            return;
        }
    }
}

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
pub struct DrainSafeAlloc;

const HUGE: usize = 1 << 30;
const DECOY_BYTES: usize = 64 * 1024;
const GUARD_BYTES: usize = 4096;
/// Decoys that may be live at once.
pub const DECOYS: usize = 64;

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
            ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
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
