//! What a log line may hold, whatever a client sent: printable ASCII only ([`escape`], the
//! one place that escapes anything logged) and at most [`MAX_LINE`] bytes ([`cut_middle`]).

use std::borrow::Cow;

/// The longest line written, its newline included: `PIPE_BUF` on Linux, the most one `write`
/// to a pipe delivers without interleaving it with another writer's.
pub(crate) const MAX_LINE: usize = 4096;

/// Escapes every character but printable ASCII: control characters as `\n`, `\r`, `\t` or
/// `\u{1b}`, any other (U+3000 and every Unicode space, U+2028, é, 😀) as `\u{3000}`, and
/// the backslash as `\\`, so that an escape in a line is always ours. A line is thus
/// printable ASCII: nothing a client sends can end it early, and no whitespace it sends
/// can split a field in two for a reader splitting on whitespace. Borrows when there is
/// nothing to escape, which is the common case.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    let plain = |c: char| (' '..='~').contains(&c) && c != '\\';
    if s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if plain(c) => out.push(c),
            '\\' => out.push_str("\\\\"),
            c => out.extend(c.escape_default()),
        }
    }
    Cow::Owned(out)
}

/// `s` at most `max` bytes long: if longer, its middle is replaced by `...[N bytes cut]...`, so
/// both ends (a request id at the end of a line, say) stay.
pub(crate) fn cut_middle(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let room = |cut: usize| max.saturating_sub(format!("...[{cut} bytes cut]...").len());
    let keep = room(s.len());
    let head = floor_char(s, keep * 3 / 4);
    let tail = ceil_char(s, s.len() - (keep - head));
    let note = format!("...[{} bytes cut]...", tail - head);
    Cow::Owned(format!("{}{note}{}", &s[..head], &s[tail..]))
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        let forged = "hi\n2024-01-01 00:00:00 INFO service_a forged\r\u{1b}[31m\u{85}\u{2028}\t";
        let line = escape(forged);
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "{line}"
        );
        assert!(line.contains(r"hi\n2024"));
        assert!(line.contains(r"\u{1b}[31m"));
        assert_eq!(
            escape("plain: 'x' \"y\" ~"),
            Cow::Borrowed("plain: 'x' \"y\" ~")
        );
        assert_eq!(escape(r"a\n é 😀"), r"a\\n \u{e9} \u{1f600}");
    }

    /// The rejected request line of the attack: a Unicode space before each forged field.
    #[test]
    fn no_whitespace_a_client_sends_splits_a_field() {
        let path = "/x\u{3000}request_id=forged\u{3000}status=200\u{a0}\u{85}\u{2009}";
        let line = escape(&format!("INFO service_a GET {path} 400 0.01ms")).into_owned();
        assert_eq!(
            line,
            r"INFO service_a GET /x\u{3000}request_id=forged\u{3000}status=200\u{a0}\u{85}\u{2009} 400 0.01ms"
        );
        assert_eq!(line.split_whitespace().count(), 6, "{line}");
        assert!(line.bytes().all(|b| (b' '..=b'~').contains(&b)), "{line}");
    }

    #[test]
    fn long_lines_are_cut_in_the_middle_with_the_cut_noted() {
        let long = format!("GET /{} 200 1.00ms request_id=end", "\u{e9}".repeat(5000));
        let cut = cut_middle(&long, 4000);
        assert!(cut.len() <= 4000, "{}", cut.len());
        assert!(cut.starts_with("GET /\u{e9}") && cut.ends_with("request_id=end"));
        assert!(cut.contains(" bytes cut]..."), "{cut}");
        assert_eq!(cut_middle("short", 10), Cow::Borrowed("short"));
    }
}
