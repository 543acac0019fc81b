//! The log format of the contract, written once: the seed's
//! `%(asctime)s %(levelname)s %(name)s %(message)s`, e.g.
//! `2024-01-01 12:00:00 INFO service_b GET /call-echo 200 45.23ms request_id=…`.
//!
//! simplelog writes the time (UTC) and the line; its own `[LEVEL]` and `target:` columns are
//! switched off and [`format_line`] supplies the seed's level and name columns instead.
//! simplelog formats into a per-thread buffer under its lock, and the finished line goes to
//! stdout in one `write` outside any lock: holding a lock across that system call made every
//! connection thread queue behind it (two futex calls a request, a tenth of A's throughput). The
//! name is the first segment of the record's target, so each service logs with
//! `target: "service_a"` and both can share one process in tests.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;

use log::{LevelFilter, Log, Metadata, Record};
use simplelog::{format_description, ConfigBuilder, WriteLogger};

/// Installs the process-wide logger on stdout. Later calls (tests starting several services)
/// keep the first logger.
pub(crate) fn init(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_time_format_custom(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .set_max_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let inner = WriteLogger::new(level, config, ThreadBuffer);
    // A duplicate of the stdout descriptor: writes through it take no user-space lock.
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from);
    if log::set_boxed_logger(Box::new(LineLogger { inner, out })).is_ok() {
        log::set_max_level(level);
    }
}

/// Everything after the time: `LEVEL name message`, with control characters escaped so that
/// nothing a client sends can end the line early or forge another one.
pub(crate) fn format_line(level: log::Level, target: &str, message: &str) -> String {
    let name = target.split("::").next().unwrap_or(target);
    format!("{level} {} {}", escape(name), escape(message))
}

/// Escapes control characters (and the Unicode line and paragraph separators) as `\n`,
/// `\u{1b}`, …; borrows when there is nothing to escape, which is the common case.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

thread_local! {
    /// The line simplelog is formatting on this thread.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// simplelog's writer: appends to this thread's [`LINE`], so its lock covers formatting only.
struct ThreadBuffer;

impl Write for ThreadBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LINE.with(|line| line.borrow_mut().extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct LineLogger {
    inner: Box<WriteLogger<ThreadBuffer>>,
    out: Option<File>,
}

impl Log for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), record.target(), &record.args().to_string());
        self.inner.log(
            &Record::builder()
                .args(format_args!("{line}"))
                .level(record.level())
                .target(record.target())
                .build(),
        );
        let bytes = LINE.with(|buf| std::mem::take(&mut *buf.borrow_mut()));
        // One write of a whole line; a pipe keeps lines up to 4 KiB whole among writers.
        let _ = match &self.out {
            Some(out) => (&*out).write_all(&bytes),
            None => std::io::stdout().write_all(&bytes),
        };
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn line_has_level_name_and_message() {
        assert_eq!(
            format_line(
                Level::Info,
                "service_a",
                "GET /echo 200 0.12ms request_id=x"
            ),
            "INFO service_a GET /echo 200 0.12ms request_id=x"
        );
        assert_eq!(
            format_line(Level::Warn, "service_b::client", "m"),
            "WARN service_b m"
        );
    }

    #[test]
    fn control_characters_cannot_start_a_line() {
        let forged = "hi\n2024-01-01 00:00:00 INFO service_a forged\r\u{1b}[31m\u{85}\u{2028}\t";
        let line = format_line(Level::Info, "service_a", forged);
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "{line}"
        );
        assert!(line.contains(r"hi\n2024"));
        assert!(line.contains(r"\u{1b}[31m"));
        assert_eq!(escape("plain é 😀 \\n"), Cow::Borrowed("plain é 😀 \\n"));
    }
}
