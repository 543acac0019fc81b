//! The client side of HTTP, for what a service sends rather than answers: the form encoding
//! B uses for A's URL, and the one-shot status probe of the container health check and of
//! B's probes of an ejected replica.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Encodes a value for a query string (the inverse of the rules of `http::decode_query`):
/// every byte but `A-Za-z0-9*-._` is escaped and a space becomes `+`, so any string arrives
/// byte-exact.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The status of `GET path` at `addr` on a connection of its own, within `limit` for each
/// step: the container health check, and B's probe of an ejected replica's `/ready`.
pub fn status_of(addr: SocketAddr, path: &str, limit: Duration) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    head.starts_with(b"HTTP/1.")
        .then(|| std::str::from_utf8(&head[9..12]).ok())
        .flatten()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::decode_query;

    #[test]
    fn encoding_round_trips() {
        for s in ["", "hello world", "&=+%#?/\n\t\"'", "é😀\u{0}", "a+b c"] {
            let query = format!("msg={}", form_encode(s));
            assert_eq!(decode_query(&query).unwrap()[0].1, s);
        }
        assert_eq!(form_encode("a b&c"), "a+b%26c");
    }
}
