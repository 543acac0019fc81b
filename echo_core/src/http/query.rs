//! Strict query decoding: `application/x-www-form-urlencoded` rules, and a malformed escape
//! or a value that is not UTF-8 is the client's mistake, never silently kept.

use std::fmt;

/// Why a query string could not be decoded; always the client's mistake (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryError::MalformedEscape => "Malformed percent-escape in query string",
            QueryError::NotUtf8 => "Query string is not valid UTF-8",
        })
    }
}

impl std::error::Error for QueryError {}

/// Decodes `application/x-www-form-urlencoded` pairs strictly (`+` is a space, `%XX` a byte),
/// unlike lenient decoders that pass a bad escape through or replace bad UTF-8.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_component(k)?, decode_component(v)?))
        })
        .collect()
}

fn decode_component(s: &str) -> Result<String, QueryError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(QueryError::MalformedEscape),
                }
            }
            other => other,
        });
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_follows_form_rules() {
        let pairs = decode_query("a=hello+world&b=%26%3D%2B%25&c&d=&=e&&f=%F0%9F%98%80").unwrap();
        let want = [
            ("a", "hello world"),
            ("b", "&=+%"),
            ("c", ""),
            ("d", ""),
            ("", "e"),
            ("f", "😀"),
        ];
        let got: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(got, want);
        assert_eq!(decode_query("a=%4a%4A").unwrap()[0].1, "JJ");
    }

    #[test]
    fn decoding_rejects_bad_escapes_and_bad_utf8() {
        for bad in ["msg=%", "msg=%4", "msg=%zz", "msg=%g0", "x=%%41", "%=1"] {
            assert_eq!(decode_query(bad), Err(QueryError::MalformedEscape), "{bad}");
        }
        for bad in ["msg=%FF", "msg=%C3", "msg=%ED%A0%80"] {
            assert_eq!(decode_query(bad), Err(QueryError::NotUtf8), "{bad}");
        }
    }
}
