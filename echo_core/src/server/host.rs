//! Whether a `Host` field is a host with an optional port, by RFC 3986's grammar: the one
//! field value the server checks beyond its framing. Its tests go through the parser
//! (`wire::parse_head`), the path every request takes.

/// RFC 9112 §3.2: `Host = uri-host [ ":" port ]`, with RFC 3986's `host` (an IP literal in
/// brackets, an IPv4 address or a reg-name of unreserved, pct-encoded and sub-delims
/// characters, possibly empty) and `port = *DIGIT` (here at most 5 digits, at most 65535).
pub(super) fn is_valid_host(value: &str) -> bool {
    let (host, port) = match value.rfind(':') {
        Some(i) if !value[i..].contains(']') => (&value[..i], Some(&value[i + 1..])),
        _ => (value, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.is_empty()
            || (p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65535))
    });
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => literal.parse::<std::net::Ipv6Addr>().is_ok() || is_ipv_future(literal),
        None => is_reg_name(host),
    };
    port_ok && host_ok
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (an IPv4 address is one too).
fn is_reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if is_unreserved(b) || is_sub_delim(b) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn is_ipv_future(literal: &str) -> bool {
    let Some((version, rest)) = literal
        .strip_prefix(['v', 'V'])
        .and_then(|l| l.split_once('.'))
    else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| is_unreserved(b) || is_sub_delim(b) || b == b':')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

#[cfg(test)]
mod tests {
    use super::super::wire::parse_head;

    fn parse(raw: &str) -> Result<Option<(super::super::wire::Head, usize)>, u16> {
        parse_head(raw.as_bytes()).map_err(|rejection| rejection.status)
    }

    fn status(raw: &str) -> Option<u16> {
        parse(raw).err()
    }

    /// The Host rule, tested here only, on the parser every request goes through: HTTP/1.1
    /// needs exactly one Host, and it must be a host with an optional port.
    #[test]
    fn http11_needs_exactly_one_host_that_is_a_host() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), Some(400), "no Host");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(400)
        );
        assert!(matches!(parse("GET / HTTP/1.0\r\n\r\n"), Ok(Some(_))));
        for bad in [
            "a b", "a/b", "a:b", "a:123456", "a:99999", "x:99999", "[::1", "[zz]", "a@b", "user@x",
            "a%4", "[::1]x", "a?b", "a#b", "a\u{a0}b",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(status(&raw), Some(400), "{bad:?}");
        }
        for good in [
            "x",
            "x:8080",
            "a.example:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]:80",
            "[v1.x:y]",
            "",
            "h:",
            "a%41b",
            "x!$&'()*+,;=",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(matches!(parse(&raw), Ok(Some(_))), "{good:?}");
        }
    }
}
