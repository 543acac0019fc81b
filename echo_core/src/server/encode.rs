//! The bytes of an answer: the status line, the headers every answer carries, the
//! handler's own, and the framing (`Content-Length`, `Connection: close`).

use std::io::Write;

use crate::http::Response;

/// The bytes of an answer: status line, the headers every answer carries (`Content-Type`,
/// `X-Content-Type-Options`, `X-Request-Id`), the handler's own, `Content-Length` (none and
/// no body for HEAD, 204 and 304) and `Connection: close` when the connection ends after it.
pub(super) fn encode(response: &Response, id: &str, head: bool, close: bool) -> Vec<u8> {
    let status = response.status;
    let bodiless = head || status == 204 || status == 304;
    let mut out = Vec::with_capacity(192 + response.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nX-Request-Id: {id}\r\n",
        reason(status),
        response.content_type
    );
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !bodiless {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

/// The reason phrase of the statuses the services send (empty for others, as HTTP allows).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_framed() {
        let text = |r: &Response, head, close| {
            String::from_utf8(encode(r, "id", head, close)).unwrap_or_default()
        };
        let ok = Response::error(404, "Not found").with_header("Allow", "GET");
        let out = text(&ok, false, false);
        assert!(
            out.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Request-Id: id\r\nAllow: GET\r\nContent-Length: 21\r\n\r\n{\"error\":\"Not found\"}"), "{out}");
        assert!(!out.contains("Connection"));
        let head = text(&ok, true, true);
        assert!(
            head.ends_with("Connection: close\r\n\r\n") && !head.contains("Content-Length"),
            "{head}"
        );
        let empty = text(&Response::error(204, "x"), false, false);
        assert!(
            empty.ends_with("nosniff\r\nX-Request-Id: id\r\n\r\n"),
            "{empty}"
        );
    }
}
