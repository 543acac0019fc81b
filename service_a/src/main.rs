//! `service_a`: the command line becomes a [`Config`] (every default is
//! [`Config::default`]'s), then start, wait for a signal, stop.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use log::LevelFilter;
use service_a::{Config, FAIL_STATUSES};

/// Service A: echoes ?msg= back as JSON. Each flag but --check also reads the environment
/// variable shown with it.
#[derive(Parser)]
#[command(name = "service_a", version, after_help = echo_core::server::limits_help())]
struct Cli {
    /// Address to listen on (IP:PORT; port 0 picks a free port).
    #[arg(long, env = "SERVICE_A_LISTEN", default_value_t = Config::default().listen)]
    listen: String,
    /// Delay every /echo by this many milliseconds, the timeout demo (at most 600000).
    #[arg(long, env = "SERVICE_A_DELAY_MS", default_value_t = Config::default().delay_ms,
          value_parser = clap::value_parser!(u64).range(0..=service_a::MAX_DELAY_MS))]
    delay_ms: u64,
    /// Fail this share of /echo calls (0.0 to 1.0) with --fail-status.
    #[arg(long, env = "SERVICE_A_FAIL_RATE", default_value_t = Config::default().fail_rate,
          value_parser = rate)]
    fail_rate: f64,
    /// The status of an injected failure (400 to 599).
    #[arg(long, env = "SERVICE_A_FAIL_STATUS", default_value_t = Config::default().fail_status,
          value_parser = clap::value_parser!(u16)
              .range(i64::from(*FAIL_STATUSES.start())..=i64::from(*FAIL_STATUSES.end())))]
    fail_status: u16,
    /// Seed of the failure sequence, so a run can be repeated [default: random].
    #[arg(long, env = "SERVICE_A_SEED")]
    seed: Option<u64>,
    /// Largest per-request `delay_ms` honoured; larger asks are capped to it (at most 600000).
    #[arg(long, env = "SERVICE_A_MAX_DELAY_MS", default_value_t = Config::default().max_delay_ms,
          value_parser = clap::value_parser!(u64).range(0..=service_a::MAX_DELAY_MS))]
    max_delay_ms: u64,
    /// Open connections at most (1 to 1000000); beyond, a new one gets 503 [default: the
    /// open-file limit less 64 (a quarter if smaller), at most 10000].
    #[arg(long, env = "SERVICE_A_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// Workers that never block (1 to 1024) [default: the CPUs this process may use].
    #[arg(long, env = "SERVICE_A_WORKERS",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: Option<u64>,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, env = "SERVICE_A_LOG_LEVEL", default_value_t = Config::default().log_level,
          value_parser = echo_core::process::parse_level)]
    log_level: LevelFilter,
    /// Log line format: text (the original project's line) or json (one object a line).
    #[arg(long, env = "SERVICE_A_LOG_FORMAT", default_value_t = Config::default().log_format)]
    log_format: echo_core::LogFormat,
    /// On SIGTERM or SIGHUP, keep serving this long with /ready answering 503 and every
    /// answer closing its connection, then stop (0 to 600000; SIGINT stops at once).
    #[arg(long, env = "SERVICE_A_DRAIN_MS", default_value_t = Config::default().drain_ms,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    drain_ms: u64,
    /// Also listen here (IP:PORT, loopback: never the public port) for GET and PUT /faults,
    /// which show and change the delay, fail rate and fail status while A runs [default: off].
    #[arg(long, env = "SERVICE_A_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Check the health of the service listening on --listen and exit 0 (healthy) or 1: the
    /// container health check, with no shell or curl needed.
    #[arg(long)]
    check: bool,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a rate between 0.0 and 1.0")),
    }
}

fn main() -> ExitCode {
    let cli: Cli = echo_core::process::parse("service_a");
    if cli.check {
        return echo_core::process::check("service_a", &cli.listen);
    }
    let config = Config {
        listen: cli.listen,
        delay_ms: cli.delay_ms,
        fail_rate: cli.fail_rate,
        fail_status: cli.fail_status,
        seed: cli.seed,
        max_delay_ms: cli.max_delay_ms,
        max_connections: cli.max_connections.map(|n| n as usize),
        workers: cli.workers.map(|n| n as usize),
        log_level: cli.log_level,
        log_format: cli.log_format,
        drain_ms: cli.drain_ms,
        admin_listen: cli.admin_listen,
    };
    let drain = std::time::Duration::from_millis(config.drain_ms);
    // The admin listener lives as long as the process; `run` stops the public one.
    let mut admin = None;
    let code = echo_core::process::run(
        "service_a",
        config.log_level,
        config.log_format,
        drain,
        || {
            let servers = service_a::start(config)?;
            admin = servers.admin;
            Ok(servers.main)
        },
    );
    drop(admin);
    code
}
