//! The life of a service process, which both `main.rs` files hand over to: parse the
//! command line, install the logger, start, wait for a signal, drain and stop gracefully, and
//! the container health check. Errors are one line on stderr and a non-zero exit.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::Parser;
use log::LevelFilter;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::client::status_of;
use crate::logging::LogFormat;
use crate::server::ServerHandle;

/// How long in-flight requests may take to finish after SIGTERM or SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often a second signal is looked for during the drain and the grace period.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Parses the command line. `--help` and `--version` print and exit 0; any other error is
/// one line on stderr (clap's own message is several) and exit code 2.
pub fn parse<C: Parser>(name: &str) -> C {
    match C::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            let text = redact_userinfo(&e.to_string());
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{name}: {}", first.trim_start_matches("error: "));
            std::process::exit(2)
        }
    }
}

/// `http://user:password@host` → `http://…@host` anywhere in `text`: a refused URL is
/// named in the error, its credentials never.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', '\'', ' ']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push('…');
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// The config line every service logs at start, `config: key=value …`, from its `Config` as
/// serialized (fields in declaration order; an unset optional one shows as `default`), so a
/// new field is in the line without anyone writing it there.
pub fn config_line(config: &impl serde::Serialize) -> String {
    let fields = match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => return "config: (cannot be shown)".to_string(),
    };
    let mut line = String::from("config:");
    for (key, value) in fields {
        let value = match value {
            serde_json::Value::Null => "default".to_string(),
            serde_json::Value::String(s) => s,
            serde_json::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

/// Parses a log level for `--log-level` (off, error, warn, info, debug, trace).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level '{s}' (off, error, warn, info, debug, trace)"))
}

/// The exit code when the grace period ended with requests still unanswered (they were
/// lost); 0 is a clean stop, 1 a failed start, 2 a bad command line.
pub const EXIT_DROPPED: u8 = 3;

/// Installs the logger, starts the service and waits for a signal:
/// - SIGTERM or SIGHUP (an orchestrator, a process manager, a closed terminal): drain for
///   `drain` first — `/ready` answers 503 at once and every answer closes its connection,
///   while the service keeps accepting and serving, so that callers move away without a
///   failed call — then stop;
/// - SIGINT (Ctrl-C), or a second signal during the drain: stop now.
///
/// Stopping: no longer accept, let in-flight requests finish within [`SHUTDOWN_GRACE`],
/// exit 0, or [`EXIT_DROPPED`] when some were still in flight. A start failure (port in
/// use, bad address) is one line on stderr and exit code 1.
pub fn run(
    name: &'static str,
    level: LevelFilter,
    format: LogFormat,
    drain: Duration,
    start: impl FnOnce() -> io::Result<ServerHandle>,
) -> ExitCode {
    crate::logging::init(level, format);
    let code = serve_until_stopped(name, drain, start);
    // The last lines say how it stopped; any stdout did not take is counted where it can be.
    let unwritten = crate::logging::flush(name, Duration::from_secs(2));
    if unwritten > 0 {
        let dropped = crate::logging::dropped_total();
        eprintln!("{name}: {unwritten} log lines never written (stdout was not read); {dropped} dropped before them");
    }
    code
}

/// [`run`] once the logger is installed.
fn serve_until_stopped(
    name: &'static str,
    drain: Duration,
    start: impl FnOnce() -> io::Result<ServerHandle>,
) -> ExitCode {
    log_panics(name);
    raise_open_file_limit(name);
    // Registered before starting, so a signal that arrives during start-up is not lost.
    let signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => return fail(name, &format!("cannot install signal handlers: {e}")),
    };
    let handle = match start() {
        Ok(handle) => handle,
        Err(e) => return fail(name, &e.to_string()),
    };
    // The main thread waits for the signals itself (no thread of their own): the first one
    // blocks; during the drain and the grace period, a second one is looked for every 50 ms.
    let mut signals = signals;
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let mut again = move || signals.pending().next();
    if signal != SIGINT && !drain.is_zero() {
        handle.drain();
        log::info!(target: name, "{} received: draining for {}ms (/ready answers 503, every answer closes its connection), then stopping", signal_name(signal), drain.as_millis());
        let until = Instant::now() + drain;
        while Instant::now() < until {
            if let Some(second) = again() {
                log::info!(target: name, "{} received: ending the drain early", signal_name(second));
                break;
            }
            std::thread::sleep(SIGNAL_POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
    handle.stop_accepting();
    log::info!(target: name, "{} received: no longer accepting, finishing accepted requests (at most {}s; a second signal stops at once)", signal_name(signal), SHUTDOWN_GRACE.as_secs());
    let stopped = handle.shutdown_unless(SHUTDOWN_GRACE, || match again() {
        Some(second) => {
            log::info!(target: name, "{} received: ending the grace period now", signal_name(second));
            true
        }
        None => false,
    });
    // The last line also says how many log lines the queue for stdout had to drop: once the
    // lines before it are out (at most 1 s), so that it has room.
    crate::logging::flush(name, Duration::from_secs(1));
    let log_lines_dropped = crate::logging::dropped_total();
    if stopped.lost() == 0 {
        log::info!(target: name, log_lines_dropped; "stopped: every accepted request was answered");
        return ExitCode::SUCCESS;
    }
    log::warn!(target: name, log_lines_dropped; "stopped with {} request(s) dropped: {} read and not answered, {} cut off mid-request", stopped.lost(), stopped.unanswered, stopped.cut_off);
    ExitCode::from(EXIT_DROPPED)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "SIGTERM",
    }
}

/// A panic (a handler's is answered 500 and caught; any other ends its thread) becomes one
/// ERROR line of the service's log, in its format, instead of Rust's report on stderr.
fn log_panics(name: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        log::error!(target: name, "panic in thread {}: {info}", thread.name().unwrap_or("unnamed"));
    }));
}

/// Each open connection costs a descriptor (two in B); the soft limit is often 1024 while
/// the hard limit is far higher, so take what we are allowed before `--max-connections`'
/// default is derived from it.
fn raise_open_file_limit(name: &str) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::debug!(target: name, "open-file limit: {limit}"),
        Err(e) => log::debug!(target: name, "cannot raise the open-file limit: {e}"),
    }
}

/// The container health check (`--check`): GETs `/health` of the service listening on
/// `listen` (an unspecified address such as `0.0.0.0` means loopback) and exits 0 on a 200,
/// else 1 with one line on stderr. It needs no shell and no curl in the image.
pub fn check(name: &str, listen: &str) -> ExitCode {
    match health_status(listen) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => fail(name, &format!("health check: /health answered {status}")),
        Err(e) => fail(name, &format!("health check: {e}")),
    }
}

fn health_status(listen: &str) -> io::Result<u16> {
    let mut addr: SocketAddr = listen
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    status_of(addr, "/health", Duration::from_secs(2))
}

fn fail(name: &str, message: &str) -> ExitCode {
    eprintln!("{name}: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_urls_are_never_shown() {
        let text = "invalid value 'http://admin:s3cret@10.0.0.1:80/x' for '--url': no";
        assert_eq!(
            super::redact_userinfo(text),
            "invalid value 'http://…@10.0.0.1:80/x' for '--url': no"
        );
        assert_eq!(super::redact_userinfo("http://a:1/@x"), "http://a:1/@x");
    }
}
