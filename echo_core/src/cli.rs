//! The process entry point both `main.rs` files call: parse flags, start, wait for SIGTERM
//! or SIGINT, stop gracefully. Errors are one line on stderr and a non-zero exit.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;
use log::LevelFilter;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::server::ServerHandle;

/// How long in-flight requests may take to finish after SIGTERM or SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Parses the command line. `--help` and `--version` print and exit 0; any other error is
/// one line on stderr (clap's own message is several) and exit code 2.
pub fn parse<C: Parser>(name: &str) -> C {
    match C::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{name}: {}", first.trim_start_matches("error: "));
            std::process::exit(2)
        }
    }
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

/// Installs the logger, starts the service, waits for SIGTERM or SIGINT and shuts down
/// within [`SHUTDOWN_GRACE`]. A start failure (port in use, bad address) is one line on
/// stderr and exit code 1.
pub fn run(
    name: &'static str,
    level: LevelFilter,
    start: impl FnOnce() -> io::Result<ServerHandle>,
) -> ExitCode {
    crate::logging::init(level);
    log_panics(name);
    raise_open_file_limit(name);
    // Registered before starting, so a signal that arrives during start-up is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => return fail(name, &format!("cannot install signal handlers: {e}")),
    };
    let handle = match start() {
        Ok(handle) => handle,
        Err(e) => return fail(name, &e.to_string()),
    };
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let signal = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    handle.stop_accepting();
    log::info!(target: name, "{signal} received: no longer accepting, finishing in-flight requests (at most {}s)", SHUTDOWN_GRACE.as_secs());
    match handle.shutdown(SHUTDOWN_GRACE) {
        0 => log::info!(target: name, "stopped"),
        n => log::warn!(target: name, "stopped with {n} request(s) still in flight"),
    }
    ExitCode::SUCCESS
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
    const LIMIT: Duration = Duration::from_secs(2);
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
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT)?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.set_write_timeout(Some(LIMIT))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
}

fn fail(name: &str, message: &str) -> ExitCode {
    eprintln!("{name}: {message}");
    ExitCode::FAILURE
}
