//! Every log line of both services, written in one place, in one of two formats:
//! - `text` (the default), the original Flask project's `%(asctime)s %(levelname)s %(name)s
//!   %(message)s`: `2024-01-01 12:00:00 INFO service_b GET /call-echo 200 45.23ms
//!   request_id=…`. The time column is UTC, written with the `time` crate; [`format_line`]
//!   supplies the level and name columns and the message. A
//!   record's key-value fields follow the message as ` key=value`, except those the message
//!   already shows (the access line's, and those a service declared with
//!   [`fields_shown_in_message`]).
//! - `json`: one object a line, `{"time":…,"level":…,"service":…,"message":…, fields…}`;
//!   each string escaped as in a text line, then by serde_json (so a value read back is the
//!   text line's).
//!
//! No line is ever torn or interleaved: a line is at most `MAX_LINE` bytes (a longer one has
//! its longest part cut in the middle, the cut's length noted), and the writer thread of
//! `log_queue` writes whole lines only, in `write`s of at most `PIPE_BUF` bytes, which a pipe
//! (every container's stdout) keeps whole among any number of writers.
//! Nothing a client sends can start a new line or forge a field: `log_text::escape` (the
//! one place that does it) writes every character but printable ASCII as an escape (`\n`,
//! `\u{3000}`, `\\`, …) in the message and every field of both formats, for every line (the
//! access line of an accepted or a rejected request alike). The service name is the first
//! segment of the record's target.
//!
//! Each thread formats its line into a buffer of its own; the line goes to stdout through
//! one writer thread (`log_queue`): a thread that answers only appends it to the queue, and
//! never waits for stdout, a file's lock or a pipe's reader. Lines the queue has no room
//! for are counted, and the count is always written (see `log_queue`); the stop's last line
//! gives the total ([`dropped_total`]).

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use log::kv::{Key, Source, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};
use serde_json::{Map, Value as Json};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::log_queue::Queue;
use crate::log_text::{cut_middle, escape, MAX_LINE};

/// The process's logger, with the lines waiting for stdout and the thread that writes them.
static LOGGER: OnceLock<LineLogger> = OnceLock::new();

/// Reports any count of dropped lines not written yet, then waits (at most `limit`) until
/// every line logged so far is written: before the stop's last line, and before the process
/// exits. Returns how many lines stdout had not taken by then.
pub(crate) fn flush(name: &str, limit: Duration) -> usize {
    LOGGER.get().map_or(0, |logger| {
        logger
            .queue
            .flush(limit, |n, total| logger.report(name, n, total))
    })
}

/// Log lines dropped since the start (the queue for stdout was full): the stop's last line
/// says how many.
pub(crate) fn dropped_total() -> u64 {
    LOGGER
        .get()
        .map_or(0, |logger| logger.queue.dropped_total())
}

/// The fields of the access line that its message shows (`GET /echo 200 0.12ms`): not
/// appended again to a text line.
const ACCESS_LINE_SHOWS: [&str; 4] = ["method", "path", "status", "latency_ms"];

/// The fields the services' own messages show, as they declared them
/// ([`fields_shown_in_message`]).
static SHOWN: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

/// Declares fields that a service's own log messages already show, so that a text line does
/// not append them again as ` key=value` (a JSON line has them all). The access line's are
/// declared here; a service declares those of its own lines once, before it logs them.
pub fn fields_shown_in_message(names: &[&'static str]) {
    if let Ok(mut shown) = SHOWN.write() {
        for name in names {
            if !shown.contains(name) {
                shown.push(name);
            }
        }
    }
}

/// Whether a text line's message shows the field `key` already.
fn shown_in_message(key: &str) -> bool {
    ACCESS_LINE_SHOWS.contains(&key) || SHOWN.read().is_ok_and(|shown| shown.contains(&key))
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The original project's text line.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format '{s}' (text, json)")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the process-wide logger on stdout. Later calls (tests starting several services)
/// keep the first logger.
pub(crate) fn init(level: LevelFilter, format: LogFormat) {
    // A duplicate of the stdout descriptor: writes through it take no user-space lock.
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from);
    let logger = LOGGER.get_or_init(|| LineLogger {
        format,
        level,
        queue: Queue::start(out),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Everything after the time of a text line: `LEVEL name message`, all but printable ASCII
/// escaped, so that nothing a client sends can end the line early or forge a field.
pub(crate) fn format_line(level: log::Level, target: &str, message: &str) -> String {
    format!("{level} {} {}", escape(service(target)), escape(message))
}

fn service(target: &str) -> &str {
    target.split("::").next().unwrap_or(target)
}

/// The process's logger: formats a record in the chosen format, queues it for stdout.
struct LineLogger {
    format: LogFormat,
    level: LevelFilter,
    queue: Arc<Queue>,
}

/// What a report of dropped lines says after its count (the tests read the start).
const DROPPED: &str = "log lines dropped: more than 1 MiB of lines waited for stdout (its reader is behind; requests are never held for it)";

/// The time column of a text line and the newline: `2024-01-01 12:00:00 ` + `\n`.
const TEXT_OVERHEAD: usize = 21;

/// The time column of a text line (UTC), as the original project's `%(asctime)s` without
/// its milliseconds.
const TEXT_TIME: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

impl LineLogger {
    /// The record as one line in the chosen format.
    fn line(&self, record: &Record<'_>) -> Vec<u8> {
        match self.format {
            LogFormat::Text => self.text_line(record),
            LogFormat::Json => self.json_line(record),
        }
    }

    /// The line reporting `n` dropped lines, `total` since the start.
    fn report(&self, target: &str, n: u64, total: u64) -> Vec<u8> {
        self.line(
            &Record::builder()
                .args(format_args!("{n} {DROPPED}; {total} since the start"))
                .level(log::Level::Warn)
                .target(target)
                .build(),
        )
    }

    fn text_line(&self, record: &Record<'_>) -> Vec<u8> {
        let mut message = record.args().to_string();
        let _ = record.key_values().visit(&mut Appended(&mut message));
        let line = format_line(record.level(), record.target(), &message);
        let line = cut_middle(&line, MAX_LINE - TEXT_OVERHEAD);
        let mut out = Vec::with_capacity(line.len() + TEXT_OVERHEAD);
        let _ = time::OffsetDateTime::now_utc().format_into(&mut out, TEXT_TIME);
        out.push(b' ');
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        out
    }

    fn json_line(&self, record: &Record<'_>) -> Vec<u8> {
        let mut fields = Map::new();
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        fields.insert("time".into(), Json::String(time));
        fields.insert("level".into(), Json::String(record.level().to_string()));
        fields.insert("service".into(), escape(service(record.target())).into());
        fields.insert("message".into(), escape(&record.args().to_string()).into());
        let _ = record.key_values().visit(&mut Collected(&mut fields));
        json_within(fields, MAX_LINE - 1)
    }
}

/// The object as one line of at most `max` bytes (newline added): the longest string value
/// is cut in the middle until it fits.
fn json_within(mut fields: Map<String, Json>, max: usize) -> Vec<u8> {
    for _ in 0..8 {
        let mut line = serde_json::to_vec(&fields).unwrap_or_default();
        if line.len() <= max {
            line.push(b'\n');
            return line;
        }
        let excess = line.len() - max;
        let longest = fields
            .iter_mut()
            .filter_map(|(_, v)| match v {
                Json::String(s) => Some(s),
                _ => None,
            })
            .max_by_key(|s| s.len());
        let Some(longest) = longest else { break };
        // Escaping can make each byte cut count up to six times: cut at least the excess.
        let target = longest.len().saturating_sub(excess + 32);
        *longest = cut_middle(longest, target).into_owned();
    }
    b"{\"message\":\"(a log line that could not be shortened)\"}\n".to_vec()
}

/// Appends a record's fields to a text message as ` key=value`, but those it shows already.
struct Appended<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for Appended<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        if !shown_in_message(key.as_str()) {
            use std::fmt::Write as _;
            let _ = write!(self.0, " {key}={value}");
        }
        Ok(())
    }
}

/// Collects a record's fields into a JSON object, numbers as numbers.
struct Collected<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Collected<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(n) = value.to_i64() {
            Json::from(n)
        } else if let Some(x) = value.to_f64() {
            serde_json::Number::from_f64((x * 100.0).round() / 100.0)
                .map_or(Json::Null, Json::Number)
        } else if let Some(b) = value.to_bool() {
            Json::Bool(b)
        } else {
            Json::String(escape(&value.to_string()).into_owned())
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

impl Log for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record);
        // Queued whole; the count of lines dropped before it goes in first, if any.
        self.queue
            .push(&line, |n, total| self.report(record.target(), n, total));
    }

    fn flush(&self) {}
}

/// Logs one event with key-value fields known only at run time (the access line: the
/// handler adds its own), as the macros do with fields written in the call.
pub(crate) fn event(
    target: &str,
    level: log::Level,
    message: fmt::Arguments<'_>,
    fields: &dyn Source,
) {
    let logger = log::logger();
    let metadata = Metadata::builder().level(level).target(target).build();
    if level <= log::max_level() && logger.enabled(&metadata) {
        logger.log(
            &Record::builder()
                .metadata(metadata)
                .args(message)
                .key_values(fields)
                .build(),
        );
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
    fn long_json_lines_are_cut_in_their_longest_value() {
        let mut fields = Map::new();
        fields.insert("message".into(), Json::String("\n".repeat(10_000)));
        fields.insert("request_id".into(), Json::String("id".into()));
        let line = json_within(fields, MAX_LINE - 1);
        assert!(line.len() <= MAX_LINE, "{}", line.len());
        let back: Json = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(back["request_id"], "id");
    }
}
