//! `service_b`: the command line becomes a [`Config`] (every default is
//! [`Config::default`]'s), then start, wait for a signal, drain, stop.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::LevelFilter;
use service_b::Config;

/// A count or millisecond flag's parser: a whole number from `lo` to `hi`.
macro_rules! bounded {
    ($lo:expr, $hi:expr) => {
        clap::value_parser!(u64).range($lo..=$hi)
    };
}

/// Service B: calls Service A and reports its failures as 503. Each flag but --check also
/// reads the environment variable shown with it.
#[derive(Parser)]
#[command(name = "service_b", version, after_help = echo_core::server::limits_help())]
struct Cli {
    /// Address to listen on (IP:PORT; port 0 picks a free port).
    #[arg(long, env = "SERVICE_B_LISTEN", default_value_t = Config::default().listen)]
    listen: String,
    /// Base URL of Service A (http:// only, no user:password@); repeat it, or separate URLs
    /// with commas, for several. Every address a host name resolves to is a replica.
    #[arg(long, env = "SERVICE_A_URL", value_delimiter = ',',
          default_values_t = Config::default().service_a_urls,
          value_parser = service_b::parse_service_a_url)]
    service_a_url: Vec<String>,
    /// Deadline for each call to Service A, covering connect, send and receive (1 to 600000).
    #[arg(long, env = "SERVICE_B_TIMEOUT_MS", default_value_t = Config::default().timeout_ms,
          value_parser = bounded!(1, 600_000))]
    timeout_ms: u64,
    /// With other replicas in rotation, and for a retry, a connect slower than this moves
    /// the call on (1 to 600000).
    #[arg(long, env = "SERVICE_B_CONNECT_TIMEOUT_MS", default_value_t = Config::default().connect_timeout_ms,
          value_parser = bounded!(1, 600_000))]
    connect_timeout_ms: u64,
    /// How often Service A's host names are resolved again, in the background (100 to
    /// 3600000); also at once when a connect is refused or no replica is usable.
    #[arg(long, env = "SERVICE_B_RESOLVE_EVERY_MS", default_value_t = Config::default().resolve_every_ms,
          value_parser = bounded!(100, 3_600_000))]
    resolve_every_ms: u64,
    /// Calls to Service A in flight at most (1 to 10000); more get 503 `overloaded` at once.
    /// Also the most idle connections B keeps to Service A.
    #[arg(long, env = "SERVICE_B_MAX_INFLIGHT", default_value_t = Config::default().max_inflight as u64,
          value_parser = bounded!(1, 10_000))]
    max_inflight: u64,
    /// Failed calls in a row that eject a replica of Service A (0 to 1000; 0: never).
    #[arg(long, env = "SERVICE_B_BREAKER_THRESHOLD", default_value_t = Config::default().breaker_threshold,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    breaker_threshold: u32,
    /// How long a first ejection lasts before B probes the replica's /ready; each ejection
    /// in a row lasts twice as long (1 to 3600000).
    #[arg(long, env = "SERVICE_B_BREAKER_COOLDOWN_MS", default_value_t = Config::default().breaker_cooldown_ms,
          value_parser = bounded!(1, 3_600_000))]
    breaker_cooldown_ms: u64,
    /// The longest an ejection lasts (1 to 3600000).
    #[arg(long, env = "SERVICE_B_BREAKER_MAX_COOLDOWN_MS", default_value_t = Config::default().breaker_max_cooldown_ms,
          value_parser = bounded!(1, 3_600_000))]
    breaker_max_cooldown_ms: u64,
    /// Replicas that may be ejected at once, in percent (0 to 100; one may always be).
    #[arg(long, env = "SERVICE_B_MAX_EJECTED_PERCENT", default_value_t = Config::default().max_ejected_percent,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    max_ejected_percent: u32,
    /// A replica that joins or is readmitted gets a share of calls growing from 10 % to
    /// full over this long (0 to 600000).
    #[arg(long, env = "SERVICE_B_SLOW_START_MS", default_value_t = Config::default().slow_start_ms,
          value_parser = bounded!(0, 600_000))]
    slow_start_ms: u64,
    /// How long B keeps what it knows of a replica that left its name's addresses: its
    /// breaker, for a return, and its labels in /metrics (1 to 86400000).
    #[arg(long, env = "SERVICE_B_FORGET_DEPARTED_MS", default_value_t = Config::default().forget_departed_ms,
          value_parser = bounded!(1, 86_400_000))]
    forget_departed_ms: u64,
    /// Retries at most this share of the calls, in percent, plus a burst of 10 (0 to 100).
    #[arg(long, env = "SERVICE_B_RETRY_BUDGET_PERCENT", default_value_t = Config::default().retry_budget_percent,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    retry_budget_percent: u32,
    /// Serve the live page (/) and B's view of the replicas (/replicas): true or false. They
    /// reveal A's internal addresses: turn them off where others can reach B.
    #[arg(long, env = "SERVICE_B_DASHBOARD", default_value_t = Config::default().dashboard,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    dashboard: bool,
    /// On SIGTERM or SIGHUP, keep serving this long with /ready answering 503 and every
    /// answer closing its connection, then stop (0 to 600000; SIGINT stops at once).
    #[arg(long, env = "SERVICE_B_DRAIN_MS", default_value_t = Config::default().drain_ms,
          value_parser = bounded!(0, 600_000))]
    drain_ms: u64,
    /// Open connections at most (1 to 1000000); beyond, a new one gets 503 [default: the
    /// open-file limit less 64 (a quarter if smaller), at most 10000, less twice
    /// --max-inflight (B's connections to A, in flight and idle)].
    #[arg(long, env = "SERVICE_B_MAX_CONNECTIONS", value_parser = bounded!(1, 1_000_000))]
    max_connections: Option<u64>,
    /// Workers that never block (1 to 1024); a call to A blocks its worker and another
    /// takes over, up to --max-inflight more [default: the CPUs this process may use].
    #[arg(long, env = "SERVICE_B_WORKERS", value_parser = bounded!(1, 1024))]
    workers: Option<u64>,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, env = "SERVICE_B_LOG_LEVEL", default_value_t = Config::default().log_level,
          value_parser = echo_core::process::parse_level)]
    log_level: LevelFilter,
    /// Log line format: text (the original project's line) or json (one object a line).
    #[arg(long, env = "SERVICE_B_LOG_FORMAT", default_value_t = Config::default().log_format)]
    log_format: echo_core::LogFormat,
    /// Check the health of the service listening on --listen and exit 0 (healthy) or 1: the
    /// container health check, with no shell or curl needed.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli: Cli = echo_core::process::parse("service_b");
    if cli.check {
        return echo_core::process::check("service_b", &cli.listen);
    }
    let config = Config {
        listen: cli.listen,
        service_a_urls: cli.service_a_url,
        timeout_ms: cli.timeout_ms,
        connect_timeout_ms: cli.connect_timeout_ms,
        resolve_every_ms: cli.resolve_every_ms,
        max_inflight: cli.max_inflight as usize,
        breaker_threshold: cli.breaker_threshold,
        breaker_cooldown_ms: cli.breaker_cooldown_ms,
        breaker_max_cooldown_ms: cli.breaker_max_cooldown_ms,
        max_ejected_percent: cli.max_ejected_percent,
        slow_start_ms: cli.slow_start_ms,
        forget_departed_ms: cli.forget_departed_ms,
        retry_budget_percent: cli.retry_budget_percent,
        drain_ms: cli.drain_ms,
        dashboard: cli.dashboard,
        max_connections: cli.max_connections.map(|n| n as usize),
        workers: cli.workers.map(|n| n as usize),
        log_level: cli.log_level,
        log_format: cli.log_format,
    };
    let drain = Duration::from_millis(config.drain_ms);
    echo_core::process::run(
        "service_b",
        config.log_level,
        config.log_format,
        drain,
        || service_b::spawn(config),
    )
}
