//! Service A: `GET /health` and `GET /echo?msg=M` → `{"echo":"M"}`, plus `GET /ready`
//! (an orchestrator's readiness probe: A is ready whenever it serves) and `GET /metrics`.
//!
//! Faults can be injected into `/echo` (never `/health` or `/metrics`) for demos and tests:
//! `--delay-ms` slows every call (the timeout demo), `--fail-rate` fails a reproducible
//! share of calls (`--seed`), and a caller may ask for `delay_ms` and `status` per request.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echo_core::{route, Metrics, Request, Response, ServerHandle};
use log::LevelFilter;
use serde_json::json;

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

/// A reproducible sequence of draws in [0, 1): the n-th `/echo` call gets the n-th draw of
/// the seed's sequence, with no lock. fastrand's generator (wyrand) steps its state by a
/// constant, so the n-th draw is the first draw of a generator seeded n steps on.
#[derive(Debug)]
struct Draws {
    seed: u64,
    next: AtomicU64,
}

impl Draws {
    /// wyrand's step: its state grows by this for each number drawn.
    const STEP: u64 = 0xa076_1d64_78bd_642f;

    fn draw(&self) -> f64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        fastrand::Rng::with_seed(self.seed.wrapping_add(n.wrapping_mul(Self::STEP))).f64()
    }
}

/// The service itself: the handlers and what they need.
#[derive(Debug)]
pub struct ServiceA {
    delay: Duration,
    max_delay: Duration,
    fail_rate: f64,
    fail_status: u16,
    draws: Draws,
    metrics: Arc<Metrics>,
}

impl ServiceA {
    /// Builds the service with its own metrics (see [`ServiceA::metrics_handle`]).
    pub fn new(config: &Config) -> ServiceA {
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        ServiceA {
            delay: Duration::from_millis(config.delay_ms),
            max_delay: Duration::from_millis(config.max_delay_ms),
            fail_rate: config.fail_rate,
            fail_status: config.fail_status,
            draws: Draws {
                seed,
                next: AtomicU64::new(0),
            },
            metrics: Arc::new(Metrics::new()),
        }
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
        let delay = self.delay + delay.min(self.max_delay);
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
        } else if self.fail_rate > 0.0 && self.draws.draw() < self.fail_rate {
            let status = self.fail_status;
            log::info!(target: "service_a", "injected failure {status} (fail-rate {}) request_id={}", self.fail_rate, req.request_id);
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
    let msg = req
        .param("msg")
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let delay = match req.param("delay_ms").map_err(|e| e.to_string())? {
        Some(v) => Duration::from_millis(v.parse().map_err(|_| {
            format!("'delay_ms' must be a whole number of milliseconds, not '{v}'")
        })?),
        None => Duration::ZERO,
    };
    let status = match req.param("status").map_err(|e| e.to_string())? {
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

/// Starts Service A; the handle gives the bound address and stops it.
pub fn spawn(mut config: Config) -> io::Result<ServerHandle> {
    let listener = echo_core::server::bind(&config.listen)?;
    let max_connections = *config
        .max_connections
        .get_or_insert_with(|| echo_core::server::default_max_connections(1));
    let workers = *config
        .workers
        .get_or_insert_with(echo_core::server::default_workers);
    log::info!(target: "service_a", "{}", echo_core::process::config_line(&config));
    let service = ServiceA::new(&config);
    let metrics = service.metrics_handle();
    // A's handlers never block (a delay is the timer's): no worker beyond `workers`.
    let options = echo_core::server::Options {
        max_connections,
        workers,
        max_blocked: 0,
    };
    echo_core::serve("service_a", listener, options, metrics, move |req| {
        service.handle(req)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_tests::{GetRequest, JsonBody};

    fn service(config: &Config) -> ServiceA {
        ServiceA::new(config)
    }

    fn answer(target: &str) -> Response {
        service(&Config::on("127.0.0.1:0")).handle(&Request::get(target))
    }

    #[test]
    fn health_and_ready_are_ok() {
        let r = answer("/health");
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ok"})));
        let r = answer("/ready");
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ready"})));
    }

    #[test]
    fn echo_returns_the_decoded_message() {
        let cases = [
            ("/echo?msg=hello", "hello"),
            ("/echo?msg=hello%20world", "hello world"),
            ("/echo?msg=a+b%26c%3Dd", "a b&c=d"),
            ("/echo?msg=%F0%9F%98%80", "😀"),
            ("/echo?msg=first&msg=second", "first"),
            ("/echo?msg=", ""),
            ("/echo", ""),
            ("/echo?other=1", ""),
        ];
        for (target, want) in cases {
            let r = answer(target);
            assert_eq!(
                (r.status, r.json_body()),
                (200, json!({"echo": want})),
                "{target}"
            );
            assert_eq!(r.content_type, "application/json");
        }
    }

    #[test]
    fn bad_queries_are_400() {
        for target in ["/echo?msg=%zz", "/echo?msg=%", "/echo?msg=%FF"] {
            let r = answer(target);
            assert_eq!(r.status, 400, "{target}");
            assert!(r.json_body()["error"].is_string());
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(answer("/nope").status, 404);
        assert_eq!(answer("/echo/").status, 404);
        let service = service(&Config::on("127.0.0.1:0"));
        let r = service.handle(&Request::new("POST", "/echo", "id"));
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("Allow", "GET, HEAD".to_string())]);
        assert_eq!(
            service
                .handle(&Request::new("HEAD", "/health", "id"))
                .status,
            200
        );
    }

    #[test]
    fn per_request_faults() {
        let r = answer("/echo?msg=x&status=503");
        assert_eq!(
            (r.status, r.json_body()),
            (503, json!({"error": "Injected status 503"}))
        );
        assert_eq!(
            answer("/echo?msg=x&status=200").json_body(),
            json!({"error": "Injected status 200"})
        );
        for bad in [
            "/echo?status=99",
            "/echo?status=600",
            "/echo?status=x",
            "/echo?delay_ms=-1",
            "/echo?delay_ms=soon",
        ] {
            assert_eq!(answer(bad).status, 400, "{bad}");
        }
        assert_eq!(answer("/echo?msg=x&delay_ms=0").status, 200);
        // Faults never touch /health or /metrics.
        assert_eq!(answer("/health?status=500&delay_ms=99999").status, 200);
        assert_eq!(answer("/metrics?status=500").status, 200);
    }

    #[test]
    fn delays_add_up_and_the_asked_one_is_capped() {
        let mut config = Config::on("127.0.0.1:0");
        config.max_delay_ms = 50;
        config.delay_ms = 7;
        let r = service(&config).handle(&Request::get("/echo?delay_ms=60000"));
        assert_eq!((r.status, r.delay), (200, Duration::from_millis(57)));
        let r = service(&config).handle(&Request::get("/echo?delay_ms=3&status=502"));
        assert_eq!((r.status, r.delay), (502, Duration::from_millis(10)));
        assert_eq!(
            service(&config).handle(&Request::get("/health")).delay,
            Duration::ZERO
        );
    }

    #[test]
    fn work_longer_than_the_callers_budget_is_refused_at_once() {
        let mut config = Config::on("127.0.0.1:0");
        config.delay_ms = 300;
        let a = service(&config);
        let mut req = Request::get("/echo?msg=x");
        req.budget = Some(Duration::from_millis(299));
        let r = a.handle(&req);
        assert_eq!((r.status, r.delay), (504, Duration::ZERO));
        assert_eq!(
            r.headers,
            vec![(
                echo_core::http::DEADLINE_EXCEEDED_HEADER,
                "true".to_string()
            )]
        );
        req.budget = Some(Duration::from_millis(300));
        let r = a.handle(&req);
        assert_eq!((r.status, r.delay), (200, Duration::from_millis(300)));
        // Without a budget, as before; /health is never refused.
        assert_eq!(a.handle(&Request::get("/echo?msg=x")).status, 200);
        let mut health = Request::get("/health");
        health.budget = Some(Duration::ZERO);
        assert_eq!(a.handle(&health).status, 200);
    }

    #[test]
    fn ready_fails_while_draining() {
        let a = service(&Config::on("127.0.0.1:0"));
        let mut req = Request::get("/ready");
        req.draining = true;
        let r = a.handle(&req);
        assert_eq!(
            (r.status, r.json_body()),
            (503, json!({"status": "draining"}))
        );
        req.path = "/health".to_string();
        assert_eq!(a.handle(&req).status, 200);
    }

    #[test]
    fn fail_rate_is_reproducible_with_a_seed() {
        let mut config = Config::on("127.0.0.1:0");
        config.fail_rate = 0.3;
        config.seed = Some(42);
        let run = || {
            let a = service(&config);
            (0..200)
                .map(|_| a.handle(&Request::get("/echo?msg=x")).status)
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let failed = first.iter().filter(|s| **s == 500).count();
        assert!(
            (30..=90).contains(&failed),
            "{failed} of 200 failed at rate 0.3"
        );
        assert!(first.iter().all(|s| *s == 500 || *s == 200));
        config.fail_rate = 1.0;
        config.fail_status = 502;
        assert_eq!(service(&config).handle(&Request::get("/echo")).status, 502);
        assert_eq!(
            service(&config).handle(&Request::get("/health")).status,
            200
        );
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::default();
        assert_eq!((c.listen.as_str(), c.delay_ms), ("127.0.0.1:8080", 0));
        assert_eq!((c.log_level, c.max_connections), (LevelFilter::Info, None));
    }
}
