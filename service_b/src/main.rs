//! `service_b`: parse the command line into a [`Config`], start, wait for SIGTERM/SIGINT,
//! stop. The defaults are [`Config::default`]'s.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use log::LevelFilter;
use service_b::Config;

/// Service B: calls Service A and reports its failures as 503. Every flag also reads its
/// environment variable.
#[derive(Parser)]
#[command(name = "service_b", version, after_help = echo_core::server::limits_help())]
struct Cli {
    /// Address to listen on (IP:PORT; port 0 picks a free port).
    #[arg(long, env = "SERVICE_B_LISTEN", default_value_t = Config::default().listen)]
    listen: String,
    /// Base URL of Service A (http:// only); repeat it, or separate URLs with commas, for
    /// several. Every address a host name resolves to is a replica.
    #[arg(long, env = "SERVICE_A_URL", value_delimiter = ',', default_value = "http://127.0.0.1:8080",
          value_parser = service_b::parse_service_a_url)]
    service_a_url: Vec<String>,
    /// Deadline for each call to Service A, covering connect, send and receive.
    #[arg(long, env = "SERVICE_B_TIMEOUT_MS", default_value_t = Config::default().timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// With other replicas in rotation, a connect slower than this moves the call on.
    #[arg(long, env = "SERVICE_B_CONNECT_TIMEOUT_MS", default_value_t = Config::default().connect_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    connect_timeout_ms: u64,
    /// How often host names of Service A are resolved again, in the background.
    #[arg(long, env = "SERVICE_B_RESOLVE_EVERY_MS", default_value_t = Config::default().resolve_every_ms,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    resolve_every_ms: u64,
    /// Calls to Service A in flight at most; more get 503 `overloaded` at once.
    #[arg(long, env = "SERVICE_B_MAX_INFLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_inflight: u64,
    /// Failed calls in a row that eject a replica of Service A (0 turns ejection off).
    #[arg(long, env = "SERVICE_B_BREAKER_THRESHOLD", default_value_t = Config::default().breaker_threshold)]
    breaker_threshold: u32,
    /// How long an ejected replica gets no calls before one trial call.
    #[arg(long, env = "SERVICE_B_BREAKER_COOLDOWN_MS", default_value_t = Config::default().breaker_cooldown_ms)]
    breaker_cooldown_ms: u64,
    /// Open connections at most; beyond, a new one gets 503 [default: the open-file limit
    /// less 64 (a quarter if smaller), halved (two descriptors a connection), at most 10000].
    #[arg(long, env = "SERVICE_B_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// Check the health of the service listening on --listen and exit 0 (healthy) or 1: the
    /// container health check, with no shell or curl needed.
    #[arg(long)]
    check: bool,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, env = "SERVICE_B_LOG_LEVEL", default_value = "info", value_parser = echo_core::cli::parse_level)]
    log_level: LevelFilter,
}

fn main() -> ExitCode {
    let cli: Cli = echo_core::cli::parse("service_b");
    if cli.check {
        return echo_core::cli::check("service_b", &cli.listen);
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
        max_connections: cli.max_connections.map(|n| n as usize),
        log_level: cli.log_level,
    };
    echo_core::cli::run(
        "service_b",
        config.log_level,
        echo_core::LogFormat::Text,
        std::time::Duration::ZERO,
        || service_b::spawn(config),
    )
}
