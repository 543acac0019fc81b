//! The request side of HTTP/1.x, touching no socket and no thread: a request head parsed
//! and checked against every limit ([`parse_head`]; a [`Rejection`] says whether a broken
//! request is answered or the connection just closes). Its unit tests live here; the
//! answer's bytes are `encode`'s, the `Host` grammar `host`'s.

use super::host::is_valid_host;

/// Longest request target (path and query) accepted; longer gets 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most header bytes accepted (each field counted as name + value + 4); more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields accepted; more gets 431.
pub const MAX_HEADERS: usize = 100;
/// Largest body read (and dropped: no route takes one); larger gets 413 and a close.
pub const MAX_BODY_BYTES: usize = 1024;
/// The longest head worth waiting for: a request line with the longest target, then the
/// most header bytes.
pub(super) const MAX_HEAD_BYTES: usize = MAX_TARGET_BYTES + MAX_HEADER_BYTES + 1024;

/// What the connection loop needs of a request head, checked against every rule.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) method: String,
    /// In origin form (`/path?query`), also when sent in absolute form.
    pub(super) target: String,
    pub(super) http10: bool,
    pub(super) keep_alive: bool,
    pub(super) content_length: usize,
    pub(super) expect_continue: bool,
    pub(super) request_id: Option<String>,
    pub(super) traceparent: Option<String>,
    /// Every `tracestate` field, joined by commas as one list (RFC 9110 §5.3).
    pub(super) tracestate: Option<String>,
    /// The caller's [`crate::http::TIMEOUT_HEADER`].
    pub(super) timeout_ms: Option<String>,
    /// The body's `Content-Type`, as sent.
    pub(super) content_type: Option<String>,
}

/// A request that cannot be served: answered with `status` and `{"error": message}`, then
/// the connection closes; the access line names the request by `method` and `path` as far
/// as they were read.
#[derive(Debug)]
pub(super) struct Rejection {
    pub(super) status: u16,
    pub(super) message: &'static str,
    pub(super) method: String,
    pub(super) path: String,
}

impl Rejection {
    fn new(status: u16, message: &'static str) -> Rejection {
        Rejection {
            status,
            message,
            method: "-".to_string(),
            path: "-".to_string(),
        }
    }

    /// Names the request in the access line by its method and target.
    fn of(self, method: &str, target: &str) -> Rejection {
        Rejection {
            method: method.to_string(),
            path: target.split('?').next().unwrap_or("").to_string(),
            ..self
        }
    }

    /// Names a request that did not parse by the first two words of its first line (at
    /// most 256 bytes of it), as far as they are there.
    fn of_line(self, buf: &[u8]) -> Rejection {
        let line = &buf[..buf.len().min(256)];
        let line = line
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let method = words.next().unwrap_or("-").to_string();
        let target = words.next().unwrap_or("-").to_string();
        self.of(&method, &target)
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete, `Ok(Some((head,
/// length)))` once whole and valid, `Err` for anything that breaks the rules (each answered,
/// then the connection closes).
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Rejection> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(too_long(buf).of_line(buf)),
        Err(httparse::Error::Version) => {
            return Err(Rejection::new(505, "HTTP version not supported").of_line(buf));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(431, "Too many header fields").of_line(buf));
        }
        Err(_) => return Err(Rejection::new(400, "Malformed request").of_line(buf)),
    };
    let method = req.method.unwrap_or("-");
    let target = req.path.unwrap_or("-");
    let bad = |status, message| Rejection::new(status, message).of(method, target);
    if has_bare_lf(&buf[..len]) {
        return Err(bad(400, "Line endings must be CRLF"));
    }
    if target.len() > MAX_TARGET_BYTES {
        return Err(bad(414, "Request target too long"));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(400, "Request target must be ASCII"));
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(bad(431, "Request header fields too large"));
    }
    let version = req.version.unwrap_or(1);
    let head = read_fields(req.headers, method, target, version)?;
    Ok(Some((head, len)))
}

/// The head of a request whose lines passed: the fields that decide framing, routing and
/// the connection, checked in turn; `Err` for the first that breaks the rules.
fn read_fields(
    fields: &[httparse::Header<'_>],
    method: &str,
    target: &str,
    version: u8,
) -> Result<Head, Rejection> {
    let bad = |status, message| Rejection::new(status, message).of(method, target);
    // Field values as sent, trimmed of SP and HTAB only (RFC 9110 §5.5), never of other
    // whitespace: `str::trim` also strips NBSP, NEL, U+2028 and U+3000, so that
    // `Content-Length: \xc2\xa05` passed for 5 and smuggled the request after it.
    let values = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim_ows(h.value))
            .collect()
    };
    // The fields whose values decide framing and routing: ASCII text, or the request is 400.
    let text = |name: &str| -> Result<Vec<&str>, Rejection> {
        values(name)
            .into_iter()
            .map(|v| ascii(v).ok_or_else(|| bad(400, "Invalid header field value")))
            .collect()
    };
    // A field passed on to the handler: its ASCII value, or none (then replaced, as the
    // request-id rule says), never a value with bytes the rules did not check. Sent twice,
    // it is none too: which one the sender meant is unknown (W3C Trace Context: two
    // `traceparent` fields start a new trace; a deadline or an id sent twice is not believed).
    let optional = |name: &str| match values(name).as_slice() {
        [one] => ascii(one).map(str::to_string),
        _ => None,
    };
    let hosts = text("Host")?;
    match hosts.as_slice() {
        [] if version == 0 => {}
        [host] if is_valid_host(host) => {}
        [_] => return Err(bad(400, "Invalid Host header")),
        _ => return Err(bad(400, "Exactly one Host header is required")),
    }
    if !values("Transfer-Encoding").is_empty() {
        return Err(bad(413, "Request body too large"));
    }
    let content_length = match text("Content-Length")?.as_slice() {
        [] => 0,
        [one] if !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()) => {
            match one.parse::<usize>() {
                Ok(n) if n <= MAX_BODY_BYTES => n,
                _ => return Err(bad(413, "Request body too large")),
            }
        }
        _ => return Err(bad(400, "Invalid Content-Length")),
    };
    let expect_continue = match text("Expect")?.as_slice() {
        [] => false,
        [one] if one.eq_ignore_ascii_case("100-continue") => true,
        _ => return Err(bad(417, "Expectation not supported")),
    };
    let keep_alive = keep_alive(&text("Connection")?, version);
    let request_id = optional("X-Request-Id");
    let states: Option<Vec<&str>> = values("tracestate").into_iter().map(ascii).collect();
    let tracestate = states.filter(|s| !s.is_empty()).map(|s| s.join(","));
    Ok(Head {
        method: method.to_string(),
        target: origin_form(target),
        http10: version == 0,
        keep_alive,
        content_length,
        expect_continue,
        request_id,
        traceparent: optional("traceparent"),
        tracestate,
        timeout_ms: optional(crate::http::TIMEOUT_HEADER),
        content_type: optional("Content-Type"),
    })
}

/// Whether the connection stays open after the answer, from its `Connection` fields:
/// HTTP/1.0 only with `keep-alive`, HTTP/1.1 unless `close`.
fn keep_alive(connection: &[&str], version: u8) -> bool {
    let mut tokens = connection
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim_matches([' ', '\t']));
    match version {
        0 => tokens.any(|t| t.eq_ignore_ascii_case("keep-alive")),
        _ => !tokens.any(|t| t.eq_ignore_ascii_case("close")),
    }
}

/// A field value without the optional whitespace (SP, HTAB) around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// The value as text if it is visible ASCII, SP and HTAB only.
fn ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// A head too long to wait for: 414 if the request line alone is over the limit, else 431.
fn too_long(buf: &[u8]) -> Rejection {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if end <= MAX_TARGET_BYTES + 64 => {
            Rejection::new(431, "Request header fields too large")
        }
        _ => Rejection::new(414, "Request target too long"),
    }
}

/// Whether a line of the head ends in a bare LF (no CR before it).
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// `http://host/path?q` → `/path?q`; any other target is kept as sent.
pub(super) fn origin_form(target: &str) -> String {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let Some(rest) = ["http://", "https://"]
        .iter()
        .find(|scheme| lower.starts_with(**scheme))
        .map(|scheme| &target[scheme.len()..])
    else {
        return target.to_string();
    };
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => rest[i..].to_string(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<(Head, usize)>, Rejection> {
        parse_head(raw.as_bytes())
    }

    fn status(raw: &str) -> Option<u16> {
        parse(raw).err().map(|rejection| rejection.status)
    }

    #[test]
    fn a_valid_head_is_parsed_and_its_length_known() {
        let raw = "GET /echo?msg=hi HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc\r\n\r\nNEXT";
        let (head, len) = parse(raw).ok().flatten().expect("complete head");
        assert_eq!(&raw[len..], "NEXT");
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("GET", "/echo?msg=hi")
        );
        assert_eq!(head.request_id.as_deref(), Some("abc"));
        assert!(head.keep_alive && head.content_length == 0 && !head.expect_continue);
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: t\r\n"), Ok(None)));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let alive = |raw: &str| parse(raw).ok().flatten().map(|(h, _)| h.keep_alive);
        assert_eq!(alive("GET / HTTP/1.0\r\n\r\n"), Some(false));
        assert_eq!(
            alive("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            alive("GET / HTTP/1.1\r\nHost: t\r\nConnection: x, close\r\n\r\n"),
            Some(false)
        );
    }

    #[test]
    fn framing_must_be_unambiguous() {
        for cl in ["abc", "-1", "1 , 1", "0x10", "+5", ""] {
            let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(status(&raw), Some(400), "{cl:?}");
        }
        let two = "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status(two), Some(400));
        for cl in ["1025", "18446744073709551616", "99999999999999999999999"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(status(&raw), Some(413), "{cl}");
        }
        let te =
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(status(te), Some(413));
        let ok = parse("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
        assert_eq!(ok.ok().flatten().map(|(h, _)| h.content_length), Some(1024));
    }

    #[test]
    fn protocol_rules_are_strict() {
        assert_eq!(status("GET / HTTP/2.0\r\nHost: t\r\n\r\n"), Some(505));
        assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(505));
        assert_eq!(status("GET / HTTP/1.1\nHost: t\n\n"), Some(400), "bare LF");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(status("GET /\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n"), Some(400));
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: t\r\nExpect: odd\r\n\r\n"),
            Some(417)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n")),
            Some(431)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
            "v".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(status(&big), Some(431));
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: t\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES)
        );
        assert_eq!(status(&long), Some(414));
        let endless = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(&endless), Some(414));
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(&endless), Some(431));
    }

    #[test]
    fn framing_fields_are_trimmed_of_sp_and_htab_only() {
        // NBSP, NEL, U+2028 and U+3000 before the digits: `str::trim` took them away.
        for ws in ["\u{a0}", "\u{85}", "\u{2028}", "\u{3000}", "\u{b}", "\u{c}"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {ws}5\r\n\r\nhello");
            assert_eq!(status(&raw), Some(400), "{ws:?}");
            let raw = format!("GET / HTTP/1.1\r\nHost: x{ws}\r\n\r\n");
            assert_eq!(status(&raw), Some(400), "Host with {ws:?}");
        }
        let ok = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \t5 \r\n\r\nhello");
        assert_eq!(ok.ok().flatten().map(|(h, _)| h.content_length), Some(5));
        let forged = parse("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: \u{2028}FORGED\r\n\r\n");
        let id = forged.ok().flatten().and_then(|(h, _)| h.request_id);
        assert_ne!(id.as_deref(), Some("FORGED"));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(origin_form("http://x/echo?msg=1"), "/echo?msg=1");
        assert_eq!(origin_form("HTTP://x:80?msg=1"), "/?msg=1");
        assert_eq!(origin_form("https://x"), "/");
        assert_eq!(origin_form("/plain"), "/plain");
        assert_eq!(origin_form("*"), "*");
    }
}
