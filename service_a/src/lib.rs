//! Service A: `GET /health` and `GET /echo?msg=M` → `{"echo":"M"}`, plus `GET /ready`
//! (an orchestrator's readiness probe: A is ready whenever it serves) and `GET /metrics`.
//!
//! Faults can be injected into `/echo` (never `/health` or `/metrics`) for demos and tests:
//! `--delay-ms` slows every call (the timeout demo), `--fail-rate` fails a reproducible
//! share of calls (`--seed`), and a caller may ask for `delay_ms` and `status` per request.
//! With `--admin-listen`, a second listener changes the first three while A runs (`admin`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use echo_core::{route, Metrics, Request, Response, ServerHandle};
use log::LevelFilter;
use serde_json::json;

mod admin;
mod faults;

pub use admin::Admin;
use faults::Draws;
pub use faults::{
    parse_change, Change, Faults, FaultsError, LiveFaults, FAIL_STATUSES, MAX_DELAY_MS,
};

/// Service A's settings. [`Config::default`] is the documented default of every flag;
/// tests build it directly, and only `main.rs` knows the command line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// Address to listen on (`IP:PORT`; port 0 picks a free port). Default `127.0.0.1:8080`.
    pub listen: String,
    /// Delay every `/echo` by this many milliseconds: the timeout demo. Default 0.
    pub delay_ms: u64,
    /// Share of `/echo` calls (0.0 to 1.0) failed with `fail_status`. Default 0.
    pub fail_rate: f64,
    /// Status of an injected failure (400 to 599). Default 500.
    pub fail_status: u16,
    /// Seed of the failure sequence, so a run can be repeated. Default: random.
    pub seed: Option<u64>,
    /// Largest per-request `delay_ms` honoured; larger asks are capped. Default 10 000.
    pub max_delay_ms: u64,
    /// Open connections at most, beyond which a new one gets 503. Default: what the
    /// open-file limit allows (see [`echo_core::server::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Workers that never block. Default: the CPUs the process may use (see
    /// [`echo_core::server::default_workers`]).
    pub workers: Option<usize>,
    /// Log level. Default `info`.
    pub log_level: LevelFilter,
    /// Log line format. Default `text`.
    pub log_format: echo_core::LogFormat,
    /// On SIGTERM or SIGHUP, how long to keep serving, with `/ready` answering 503 and every
    /// answer closing its connection, before the stop (the lame-duck drain). Default 5000.
    pub drain_ms: u64,
    /// Address of the admin listener (`GET`/`PUT /faults`), loopback in every example;
    /// `None` (the default) opens none. Needs [`start`].
    pub admin_listen: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8080".to_string(),
            delay_ms: 0,
            fail_rate: 0.0,
            fail_status: 500,
            seed: None,
            max_delay_ms: 10_000,
            max_connections: None,
            workers: None,
            log_level: LevelFilter::Info,
            log_format: echo_core::LogFormat::Text,
            drain_ms: 5000,
            admin_listen: None,
        }
    }
}

impl Config {
    /// The defaults, listening on `listen` (tests use `127.0.0.1:0`).
    pub fn on(listen: &str) -> Config {
        Config {
            listen: listen.to_string(),
            ..Config::default()
        }
    }
}

/// The service itself: the handlers and what they need.
#[derive(Debug)]
pub struct ServiceA {
    faults: Arc<LiveFaults>,
    max_delay: Duration,
    draws: Draws,
    metrics: Arc<Metrics>,
}

impl ServiceA {
    /// Builds the service with its own metrics (see [`ServiceA::metrics_handle`]).
    pub fn new(config: &Config) -> ServiceA {
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        let faults = Faults {
            delay_ms: config.delay_ms,
            fail_rate: config.fail_rate,
            fail_status: config.fail_status,
        };
        ServiceA {
            faults: Arc::new(LiveFaults::new(faults)),
            max_delay: Duration::from_millis(config.max_delay_ms),
            draws: Draws::new(seed),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The faults in force, which [`Admin`] changes while the service runs.
    pub fn faults(&self) -> Arc<LiveFaults> {
        Arc::clone(&self.faults)
    }

    /// The metrics the server wrapper records requests in and `/metrics` shows.
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Answers one request; called by the server wrapper, or directly by unit tests.
    pub fn handle(&self, req: &Request) -> Response {
        route(
            self,
            req,
            &[
                ("/health", |_, _| echo_core::http::health()),
                ("/ready", |_, req| echo_core::http::ready(req)),
                ("/echo", Self::echo),
                ("/metrics", |s, _| s.metrics.render()),
            ],
        )
    }

    fn echo(&self, req: &Request) -> Response {
        let (msg, delay, status) = match echo_params(req) {
            Ok(params) => params,
            Err(message) => return Response::error(400, &message),
        };
        let faults = self.faults.get();
        let delay = Duration::from_millis(faults.delay_ms) + delay.min(self.max_delay);
        if let Some(budget) = req.budget.filter(|budget| delay > *budget) {
            // The caller would give up first: say so now instead of holding this thread.
            let message = format!(
                "Deadline too short: this answer takes {} ms, the caller waits {} ms",
                delay.as_millis(),
                budget.as_millis()
            );
            return Response::error(504, &message)
                .with_header(echo_core::http::DEADLINE_EXCEEDED_HEADER, "true");
        }
        let response = if let Some(status) = status {
            log::info!(target: "service_a", "injected status {status} (asked for) request_id={}", req.request_id);
            Response::error(status, &format!("Injected status {status}"))
        } else if faults.fail_rate > 0.0 && self.draws.draw() < faults.fail_rate {
            let status = faults.fail_status;
            log::info!(target: "service_a", "injected failure {status} (fail-rate {}) request_id={}", faults.fail_rate, req.request_id);
            Response::error(status, "Injected failure")
        } else {
            Response::json(200, &json!({ "echo": msg }))
        };
        response.after(delay)
    }
}

/// `/echo`'s parameters: `msg` (default empty), `delay_ms` and `status` (the fault a caller
/// asks for; a status from 200 to 599).
fn echo_params(req: &Request) -> Result<(String, Duration, Option<u16>), String> {
    // Decoded once: the first value of each name wins.
    let pairs = echo_core::http::decode_query(&req.query).map_err(|e| e.to_string())?;
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let msg = param("msg").cloned().unwrap_or_default();
    let delay = match param("delay_ms") {
        Some(v) => Duration::from_millis(v.parse().map_err(|_| {
            format!("'delay_ms' must be a whole number of milliseconds, not '{v}'")
        })?),
        None => Duration::ZERO,
    };
    let status = match param("status") {
        Some(v) => match v.parse::<u16>() {
            Ok(code) if (200..=599).contains(&code) => Some(code),
            _ => {
                return Err(format!(
                    "'status' must be an HTTP status from 200 to 599, not '{v}'"
                ))
            }
        },
        None => None,
    };
    Ok((msg, delay, status))
}

/// Service A running: its public server and, with [`Config::admin_listen`], its admin one.
pub struct Servers {
    /// The public listener: `/echo`, `/health`, `/ready`, `/metrics`.
    pub main: ServerHandle,
    /// The admin listener, if one was asked for: `/faults`.
    pub admin: Option<ServerHandle>,
}

/// Starts Service A and, with [`Config::admin_listen`], its admin listener. Both addresses
/// are bound before anything is logged, so either in use is one line on stderr.
pub fn start(mut config: Config) -> io::Result<Servers> {
    let listener = echo_core::server::bind(&config.listen)?;
    let admin_listener = match &config.admin_listen {
        Some(addr) => Some(echo_core::server::bind(addr)?),
        None => None,
    };
    let max_connections = *config
        .max_connections
        .get_or_insert_with(|| echo_core::server::default_max_connections(1));
    let workers = *config
        .workers
        .get_or_insert_with(echo_core::server::default_workers);
    log::info!(target: "service_a", "{}", echo_core::process::config_line(&config));
    let service = ServiceA::new(&config);
    let metrics = service.metrics_handle();
    let faults = service.faults();
    // A's handlers never block (a delay is the timer's): no worker beyond `workers`.
    let options = echo_core::server::Options {
        max_connections,
        workers,
        max_blocked: 0,
    };
    let main = echo_core::serve("service_a", listener, options, metrics, move |req| {
        service.handle(req)
    })?;
    let admin = match admin_listener {
        Some(listener) => Some(admin::serve(listener, faults)?),
        None => None,
    };
    Ok(Servers { main, admin })
}

/// Starts Service A without an admin listener; the handle gives the bound address and
/// stops it. A config with [`Config::admin_listen`] is refused: use [`start`].
pub fn spawn(config: Config) -> io::Result<ServerHandle> {
    if config.admin_listen.is_some() {
        let why = "admin_listen needs service_a::start, which keeps the admin listener";
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    start(config).map(|servers| servers.main)
}
