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
#[command(name = "service_b", version, after_help = echo_core::server::LIMITS_HELP)]
struct Cli {
    /// Address to listen on (IP:PORT; port 0 picks a free port).
    #[arg(long, env = "SERVICE_B_LISTEN", default_value_t = Config::default().listen)]
    listen: String,
    /// Base URL of Service A (http:// only).
    #[arg(long, env = "SERVICE_A_URL", default_value_t = Config::default().service_a_url,
          value_parser = service_b::parse_service_a_url)]
    service_a_url: String,
    /// Deadline for each call to Service A, covering connect, send and receive.
    #[arg(long, env = "SERVICE_B_TIMEOUT_MS", default_value_t = Config::default().timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Calls to Service A in flight at most; more get 503 `overloaded` at once.
    #[arg(long, env = "SERVICE_B_MAX_INFLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_inflight: u64,
    /// Failed calls in a row that open the circuit breaker (0 turns it off).
    #[arg(long, env = "SERVICE_B_BREAKER_THRESHOLD", default_value_t = Config::default().breaker_threshold)]
    breaker_threshold: u32,
    /// How long an open breaker fails calls at once before one trial call.
    #[arg(long, env = "SERVICE_B_BREAKER_COOLDOWN_MS", default_value_t = Config::default().breaker_cooldown_ms)]
    breaker_cooldown_ms: u64,
    /// Open connections at most; beyond, a new one gets 503 [default: (open-file limit −
    /// 64) / 2, at most 10000].
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
        service_a_url: cli.service_a_url,
        timeout_ms: cli.timeout_ms,
        max_inflight: cli.max_inflight as usize,
        breaker_threshold: cli.breaker_threshold,
        breaker_cooldown_ms: cli.breaker_cooldown_ms,
        max_connections: cli.max_connections.map(|n| n as usize),
        log_level: cli.log_level,
    };
    echo_core::cli::run("service_b", config.log_level, || service_b::spawn(config))
}
