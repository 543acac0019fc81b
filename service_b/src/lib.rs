//! Service B: `GET /call-echo?msg=M` calls Service A's `/echo` with one deadline and answers
//! `{"msg":M,"echo_response":<A's object>}`, or a 503 whose `kind` and `details` say exactly
//! how the call failed. A may run as several replicas: each call goes to the replica expected
//! to answer soonest, a replica that keeps failing is ejected and probed back by B itself,
//! and a failure before any byte of the answer is retried once elsewhere, within a budget
//! (the call path: `call`, `choice`, `breaker`, `replicas`, `upkeep`; the client under it:
//! `client`, `transport`). A bulkhead (at most `--max-inflight` calls at once) keeps a
//! hanging A from costing B its threads or its `/health`.
//! Also `GET /health` (liveness), `GET /ready` (readiness: B serves, whatever A does; 503
//! while draining) and `GET /metrics`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_core::{route, Metrics, Request, Response, ServerHandle};
use log::LevelFilter;
use serde_json::json;

mod breaker;
mod call;
mod choice;
mod client;
mod error;
mod metrics;
mod replica;
mod replicas;
mod target;
mod transport;
mod upkeep;

use call::{Call, Caller};
use client::{EchoClient, Forward};
use error::CallError;
use replicas::{Replicas, Settings};
use target::Target;
pub use target::{system_resolver, Resolve};

/// Service B's settings. [`Config::default`] is the documented default of every flag;
/// tests build it directly, and only `main.rs` knows the command line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// Address to listen on (`IP:PORT`; port 0 picks a free port). Default `127.0.0.1:8081`.
    pub listen: String,
    /// Base URLs of Service A (`http://` only; see [`parse_service_a_url`]). Every address
    /// of every URL is a replica. Default `["http://127.0.0.1:8080"]`.
    pub service_a_urls: Vec<String>,
    /// Deadline of each call to A, covering connect, send and receive. Default 2000.
    pub timeout_ms: u64,
    /// With other replicas in rotation, and for every retry, a connect slower than this
    /// moves the call on. Default 250.
    pub connect_timeout_ms: u64,
    /// How often host names in `service_a_urls` are resolved again, in the background (and
    /// at once when a connect is refused or no replica is usable). Default 5000.
    pub resolve_every_ms: u64,
    /// Calls to A in flight at most; more get 503 `overloaded` at once (the bulkhead), so a
    /// hanging A cannot take every thread and descriptor. Default 64.
    pub max_inflight: usize,
    /// Failed calls in a row that eject a replica (0 turns ejection off). Default 5.
    pub breaker_threshold: u32,
    /// How long a replica's first ejection lasts before B probes it; each ejection in a
    /// row lasts twice as long. Default 2000.
    pub breaker_cooldown_ms: u64,
    /// The longest an ejection lasts. Default 30000.
    pub breaker_max_cooldown_ms: u64,
    /// Replicas that may be ejected at once, in percent of them (at least one may be):
    /// beyond, failing replicas stay in rotation, so calls spread over all. Default 50.
    pub max_ejected_percent: u32,
    /// A replica that joins (or is readmitted) gets a share of the calls growing from 10 %
    /// to its full share over this long. Default 5000.
    pub slow_start_ms: u64,
    /// Retries at most this share of the calls, in percent (plus a burst of 10). Default 20.
    pub retry_budget_percent: u32,
    /// On SIGTERM or SIGHUP, how long to keep serving, with `/ready` answering 503 and every
    /// answer closing its connection, before the stop (the lame-duck drain). Default 5000.
    pub drain_ms: u64,
    /// Open connections at most, beyond which a new one gets 503. Default: what the
    /// open-file limit allows at two descriptors a connection (one to the client, one to A;
    /// see [`echo_core::server::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Workers that never block. Default: the CPUs the process may use (see
    /// [`echo_core::server::default_workers`]). A call to A blocks its worker; another one
    /// serves meanwhile, up to `max_inflight` more.
    pub workers: Option<usize>,
    /// Log level. Default `info`.
    pub log_level: LevelFilter,
    /// Log line format. Default `text`.
    pub log_format: echo_core::LogFormat,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8081".to_string(),
            service_a_urls: vec!["http://127.0.0.1:8080".to_string()],
            timeout_ms: 2000,
            connect_timeout_ms: 250,
            resolve_every_ms: 5000,
            max_inflight: 64,
            breaker_threshold: 5,
            breaker_cooldown_ms: 2000,
            breaker_max_cooldown_ms: 30_000,
            max_ejected_percent: 50,
            slow_start_ms: 5000,
            retry_budget_percent: 20,
            drain_ms: 5000,
            max_connections: None,
            workers: None,
            log_level: LevelFilter::Info,
            log_format: echo_core::LogFormat::Text,
        }
    }
}

impl Config {
    /// The defaults, listening on `listen` and calling A at `service_a_url`.
    pub fn on(listen: &str, service_a_url: &str) -> Config {
        Config {
            listen: listen.to_string(),
            service_a_urls: vec![service_a_url.to_string()],
            ..Config::default()
        }
    }
}

/// `--service-a-url` must be `http://host[:port][/prefix]`: no other scheme, no query, and
/// no user information (it would never be sent, and must never reach a log line).
pub fn parse_service_a_url(s: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = s.parse().map_err(|_| "is not a URL".to_string())?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry user information (user:password@): B never sends it".into());
    }
    if uri.scheme_str() != Some("http") {
        return Err(format!("'{s}' must start with http:// (no TLS support)"));
    }
    if uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
        return Err(format!("'{s}' must be http://HOST[:PORT] without a query"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// The service itself: the handlers and the guarded call to A.
#[derive(Debug)]
pub struct ServiceB {
    caller: Caller,
    /// The first `--service-a-url`, named in the log of a call never made.
    first_url: String,
    /// The longest path prefix of any `--service-a-url`, for the target length check.
    longest_prefix: usize,
    metrics: Arc<Metrics>,
}

impl ServiceB {
    /// Builds the service with its own metrics and resolves A's names once with `resolve`;
    /// [`spawn`] starts their background upkeep.
    fn new(config: &Config, resolve: Resolve) -> ServiceB {
        let mut metrics = Metrics::new();
        let upstream = Arc::new(metrics::Upstream::default());
        upstream.register(metrics.registry());
        // Config URLs were checked by parse_service_a_url; one that still fails is skipped.
        let targets: Vec<Target> = config
            .service_a_urls
            .iter()
            .filter_map(|url| {
                Target::parse(url)
                    .map_err(|e| log::error!(target: "service_b", "{e}"))
                    .ok()
            })
            .collect();
        let longest_prefix = targets.iter().map(Target::prefix_len).max().unwrap_or(0);
        let ms = Duration::from_millis;
        let settings = Settings {
            threshold: config.breaker_threshold,
            cooldown: ms(config.breaker_cooldown_ms),
            max_cooldown: ms(config.breaker_max_cooldown_ms),
            max_ejected_percent: config.max_ejected_percent,
            slow_start: ms(config.slow_start_ms),
        };
        let replicas = Arc::new(Replicas::new(
            targets,
            resolve,
            settings,
            Arc::clone(&upstream),
        ));
        upstream.watch(&replicas);
        let caller = Caller::new(
            EchoClient::new(ms(config.timeout_ms)),
            replicas,
            ms(config.connect_timeout_ms),
            config.max_inflight,
            config.retry_budget_percent,
        );
        ServiceB {
            caller,
            first_url: config.service_a_urls.first().cloned().unwrap_or_default(),
            longest_prefix,
            metrics: Arc::new(metrics),
        }
    }

    /// Answers one request; called by the server, or directly by unit tests.
    pub fn handle(&self, req: &Request) -> Response {
        route(
            self,
            req,
            &[
                ("/health", |_, _| echo_core::http::health()),
                ("/ready", |_, req| echo_core::http::ready(req)),
                ("/call-echo", Self::call_echo),
                ("/metrics", |s, _| s.metrics.render()),
            ],
        )
    }

    fn call_echo(&self, req: &Request) -> Response {
        let msg = match req.param("msg") {
            Ok(Some(msg)) if !msg.is_empty() => msg,
            Ok(_) => return Response::error(400, "Missing 'msg' parameter"),
            Err(e) => return Response::error(400, &e.to_string()),
        };
        let path = EchoClient::path(&msg);
        // Encoded for A's URL the message can grow (`!` becomes `%21`): one that would
        // exceed A's target limit is the client's mistake, answered here, A not called.
        if self.longest_prefix + path.len() > echo_core::server::MAX_TARGET_BYTES {
            return Response::error(414, "Message too long: Service A's URL would exceed 8 KiB");
        }
        let traceparent = req.trace.child_traceparent();
        let forward = Forward {
            request_id: &req.request_id,
            traceparent: &traceparent,
            tracestate: req.trace.state.as_deref(),
        };
        let started = Instant::now();
        let Call { result, replica } = req.blocking(|| self.caller.call(&path, forward));
        let replica_name = replica
            .as_ref()
            .map_or("none".to_string(), |r| r.addr.to_string());
        let base = replica
            .as_ref()
            .map_or(self.first_url.as_str(), |r| r.base.as_str());
        self.log_call(
            req,
            &format!("{base}{path}"),
            &replica_name,
            &result,
            started,
        );
        let outcome = result.as_ref().map_or_else(CallError::kind, |_| "ok");
        self.caller
            .replicas
            .metrics
            .outcomes
            .get_or_create(&metrics::Outcome {
                replica: replica_name.clone(),
                outcome,
            })
            .inc();
        match result {
            Ok(echo) => Response::json(200, &json!({ "msg": msg, "echo_response": echo }))
                .with_log_field("replica", replica_name),
            Err(e) => {
                let body = json!({ "error": "Service A unavailable", "details": e.to_string(), "kind": e.kind() });
                let response = Response::json(503, &body).with_log_field("replica", replica_name);
                match e.retry_after() {
                    Some(secs) => response.with_header("Retry-After", secs.to_string()),
                    None => response,
                }
            }
        }
    }

    /// B's line about its call to A: URL, deadline, outcome (A's status, or the failure's
    /// kind and error), duration, then the request's id, trace and replica.
    fn log_call(
        &self,
        req: &Request,
        url: &str,
        replica: &str,
        result: &Result<serde_json::Value, CallError>,
        started: Instant,
    ) {
        let timeout_ms = self.caller.client.timeout().as_millis() as u64;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (id, trace, span) = (&req.request_id, &req.trace.trace_id, &req.trace.span_id);
        match result {
            Ok(_) => log::info!(target: "service_b",
                url = url, timeout_ms = timeout_ms, upstream_status = 200u16, latency_ms = ms,
                request_id = id.as_str(), trace_id = trace.as_str(), span_id = span.as_str(), replica = replica;
                "call to Service A ok: GET {url} timeout={timeout_ms}ms status=200 {ms:.2}ms"),
            Err(e) => {
                let verb = match e {
                    CallError::Overloaded(_) | CallError::CircuitOpen(_) => "not made",
                    _ => "failed",
                };
                let error = e.to_string();
                log::warn!(target: "service_b",
                    url = url, timeout_ms = timeout_ms, kind = e.kind(), latency_ms = ms, error = error.as_str(),
                    request_id = id.as_str(), trace_id = trace.as_str(), span_id = span.as_str(), replica = replica;
                    "call to Service A {verb}: GET {url} timeout={timeout_ms}ms kind={} {ms:.2}ms error=\"{error}\"", e.kind());
            }
        }
    }
}

/// Starts Service B; the handle gives the bound address and stops it.
pub fn spawn(config: Config) -> io::Result<ServerHandle> {
    spawn_with_resolver(config, system_resolver())
}

/// Like [`spawn`], resolving A's host names with `resolve` (tests give names of their own).
pub fn spawn_with_resolver(mut config: Config, resolve: Resolve) -> io::Result<ServerHandle> {
    let listener = echo_core::server::bind(&config.listen)?;
    let max_connections = *config
        .max_connections
        .get_or_insert_with(|| echo_core::server::default_max_connections(2));
    let workers = *config
        .workers
        .get_or_insert_with(echo_core::server::default_workers);
    let options = echo_core::server::Options {
        max_connections,
        workers,
        max_blocked: config.max_inflight,
    };
    let service = ServiceB::new(&config, resolve);
    let replicas = Arc::clone(&service.caller.replicas);
    // What the line about a call to A (`log_call`) shows in its message: not appended again.
    echo_core::fields_shown_in_message(&["url", "timeout_ms", "upstream_status", "kind", "error"]);
    log::info!(target: "service_b", "{} replicas={}", echo_core::process::config_line(&config), replicas.describe());
    upkeep::start(
        &replicas,
        Duration::from_millis(config.resolve_every_ms.max(1)),
    );
    let metrics = Arc::clone(&service.metrics);
    echo_core::serve("service_b", listener, options, metrics, move |req| {
        service.handle(req)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_tests::{GetRequest, JsonBody};

    /// A B whose A is a closed port: every call that reaches the client fails to connect.
    fn service() -> ServiceB {
        ServiceB::new(
            &Config::on("127.0.0.1:0", "http://127.0.0.1:1"),
            system_resolver(),
        )
    }

    #[test]
    fn health_and_ready_are_ok_with_a_down() {
        let b = service();
        let r = b.handle(&Request::get("/health"));
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ok"})));
        for _ in 0..10 {
            b.handle(&Request::get("/call-echo?msg=x"));
        }
        let r = b.handle(&Request::get("/ready"));
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ready"})));
        let mut draining = Request::get("/ready");
        draining.draining = true;
        assert_eq!(b.handle(&draining).status, 503);
    }

    #[test]
    fn missing_or_empty_msg_is_400_without_calling_a() {
        for target in [
            "/call-echo",
            "/call-echo?msg=",
            "/call-echo?other=x",
            "/call-echo?msg",
        ] {
            let r = service().handle(&Request::get(target));
            assert_eq!(
                (r.status, r.json_body()),
                (400, json!({"error": "Missing 'msg' parameter"})),
                "{target}"
            );
        }
    }

    #[test]
    fn malformed_query_is_400() {
        for target in ["/call-echo?msg=%zz", "/call-echo?msg=%C3%28"] {
            let r = service().handle(&Request::get(target));
            assert_eq!(r.status, 400, "{target}");
            assert_ne!(r.json_body()["error"], json!("Missing 'msg' parameter"));
        }
    }

    #[test]
    fn a_down_is_503_connect() {
        let r = service().handle(&Request::get("/call-echo?msg=hi"));
        assert_eq!(r.status, 503);
        let body = r.json_body();
        assert_eq!(body["error"], "Service A unavailable");
        assert_eq!(body["kind"], "connect");
        assert!(
            body["details"]
                .as_str()
                .unwrap_or("")
                .starts_with("Connection error: "),
            "{body}"
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(service().handle(&Request::get("/echo")).status, 404);
        let r = service().handle(&Request::new("DELETE", "/call-echo", "id"));
        assert_eq!(r.status, 405);
    }

    #[test]
    fn service_a_url_must_be_plain_http() {
        assert_eq!(
            parse_service_a_url("http://127.0.0.1:8080/").unwrap_or_default(),
            "http://127.0.0.1:8080"
        );
        assert!(parse_service_a_url("http://a:1/prefix").is_ok());
        for bad in [
            "https://a:1",
            "ftp://a",
            "127.0.0.1:8080",
            "http://",
            "http://a:1/?x=1",
            "not a url",
            "http://user:secret@a:1",
            "http://user@a",
        ] {
            assert!(parse_service_a_url(bad).is_err(), "{bad}");
        }
        let refused = parse_service_a_url("http://user:secret@a:1").unwrap_err();
        assert!(!refused.contains("secret"), "{refused}");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8081");
        assert_eq!(c.service_a_urls, ["http://127.0.0.1:8080"]);
        assert_eq!((c.connect_timeout_ms, c.resolve_every_ms), (250, 5000));
        assert_eq!((c.timeout_ms, c.max_inflight), (2000, 64));
        assert_eq!((c.breaker_threshold, c.breaker_cooldown_ms), (5, 2000));
    }
}
