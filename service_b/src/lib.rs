//! Service B: `GET /call-echo?msg=M` calls Service A's `/echo` with one deadline and answers
//! `{"msg":M,"echo_response":<A's object>}`, or a 503 whose `kind` and `details` say exactly
//! how the call failed. A may run as several replicas: each call goes to the replica expected
//! to answer soonest, a replica that keeps failing is ejected and probed back by B itself,
//! and a failure before any byte of the answer is retried once elsewhere, within a budget
//! (the layers, each depending only on those below it: this handler; `call`, the policy;
//! `balance`, the replicas; `upstream`, the client; `error`, the 503 contract). A bulkhead
//! (at most `--max-inflight` calls at once) keeps a hanging A from costing B its threads or
//! its `/health`.
//! Also `GET /health` (liveness), `GET /ready` (readiness: B serves, whatever A does; 503
//! while draining) and `GET /metrics`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_core::{route, Metrics, Request, Response, ServerHandle};
use serde_json::json;

mod balance;
mod call;
mod config;
mod dashboard;
mod error;
mod metrics;
mod upstream;
mod window;

pub use balance::{system_resolver, Resolve};
use balance::{Replicas, Settings, Target};
use call::{Call, Caller};
pub use config::{parse_service_a_url, Config};
use error::CallError;
use upstream::{Bounds, EchoClient, Forward, Pool};

/// How long an idle connection to A is kept: well under the services' idle timeout
/// (`echo_core::server::IDLE_TIMEOUT`), so a pooled connection is never reused just as A
/// closes it.
const IDLE_AGE: Duration = Duration::from_secs(15);
/// How often idle connections past [`IDLE_AGE`] are closed, by B's upkeep thread.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The service itself: the handlers and the guarded call to A.
#[derive(Debug)]
pub struct ServiceB {
    caller: Caller,
    /// The first `--service-a-url`, named in the log of a call never made.
    first_url: String,
    /// The longest path prefix of any `--service-a-url`, for the target length check.
    longest_prefix: usize,
    metrics: Arc<Metrics>,
    /// The idle connections to A, shared by every call.
    pool: Arc<Pool>,
    /// Every `--service-a-url`, which `/replicas` names each replica by; `None` when `/`
    /// and `/replicas` are off.
    dashboard: Option<Vec<String>>,
}

impl ServiceB {
    /// Builds the service with its own metrics and resolves A's names once with `resolve`;
    /// [`spawn`] starts their background upkeep.
    fn new(config: &Config, resolve: Resolve) -> ServiceB {
        let mut metrics = Metrics::new();
        let upstream = Arc::new(metrics::Upstream::default());
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
            forget_departed: ms(config.forget_departed_ms),
        };
        let events: Arc<dyn balance::Events> = upstream.clone();
        let replicas = Arc::new(Replicas::new(targets, resolve, settings, events));
        let pool = Arc::new(Pool::new(idle_bounds(config)));
        upstream.register(metrics.registry(), &replicas, &pool);
        let caller = Caller::new(
            EchoClient::new(ms(config.timeout_ms), Arc::clone(&pool)),
            replicas,
            upstream,
            ms(config.connect_timeout_ms),
            config.max_inflight,
            config.retry_budget_percent,
        );
        ServiceB {
            caller,
            first_url: config.service_a_urls.first().cloned().unwrap_or_default(),
            longest_prefix,
            metrics: Arc::new(metrics),
            pool,
            dashboard: config.dashboard.then(|| config.service_a_urls.clone()),
        }
    }

    /// Answers one request; called by the server, or directly by unit tests.
    pub fn handle(&self, req: &Request) -> Response {
        if self.dashboard.is_none() && matches!(req.path.as_str(), "/" | "/replicas") {
            return Response::error(404, "Not found");
        }
        route(
            self,
            req,
            &[
                ("/health", |_, _| echo_core::http::health()),
                ("/ready", |_, req| echo_core::http::ready(req)),
                ("/call-echo", Self::call_echo),
                ("/metrics", |s, _| s.metrics.render()),
                ("/", |_, _| dashboard::page()),
                ("/replicas", |s, _| {
                    let urls = s.dashboard.as_deref().unwrap_or_default();
                    Response::json(200, &dashboard::replicas(&s.caller, urls))
                }),
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
        // The client's own deadline, when shorter (the contract's stays the longest).
        let deadline = req.budget.map_or(self.caller.client.timeout(), |b| {
            b.min(self.caller.client.timeout())
        });
        let Call { result, replica } =
            req.blocking(|| self.caller.call(&msg, &path, deadline, forward));
        let replica_name = replica
            .as_ref()
            .map_or("none".to_string(), |r| r.addr.to_string());
        let base = replica
            .as_ref()
            .map_or(self.first_url.as_str(), |r| r.base.as_str());
        let url = format!("{base}{path}");
        self.log_call(req, (&url, deadline), &replica_name, &result, started);
        let outcome = result.as_ref().map_or_else(CallError::kind, |_| "ok");
        let failed = result
            .as_ref()
            .err()
            .map(|e| (req.request_id.as_str(), e.to_string()));
        let addr = replica.as_ref().map(|r| r.addr);
        self.caller.stats.ended(started, outcome, addr, failed);
        self.caller
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
            Err(e) => e.response().with_log_field("replica", replica_name),
        }
    }

    /// B's line about its call to A: URL, deadline, outcome (A's status, or the failure's
    /// kind and error), duration, then the request's id, trace and replica.
    fn log_call(
        &self,
        req: &Request,
        (url, deadline): (&str, Duration),
        replica: &str,
        result: &Result<serde_json::Value, CallError>,
        started: Instant,
    ) {
        let timeout_ms = deadline.as_millis() as u64;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (id, trace, span) = (&req.request_id, &req.trace.trace_id, &req.trace.span_id);
        match result {
            Ok(_) => log::info!(target: "service_b",
                url = url, timeout_ms = timeout_ms, upstream_status = 200u16, latency_ms = ms,
                request_id = id.as_str(), trace_id = trace.as_str(), span_id = span.as_str(), replica = replica;
                "call to Service A ok: GET {url} timeout={timeout_ms}ms status=200 {ms:.2}ms"),
            Err(e) => {
                let verb = if e.not_made() { "not made" } else { "failed" };
                let error = e.to_string();
                log::warn!(target: "service_b",
                    url = url, timeout_ms = timeout_ms, kind = e.kind(), latency_ms = ms, error = error.as_str(),
                    request_id = id.as_str(), trace_id = trace.as_str(), span_id = span.as_str(), replica = replica;
                    "call to Service A {verb}: GET {url} timeout={timeout_ms}ms kind={} {ms:.2}ms error=\"{error}\"", e.kind());
            }
        }
    }
}

/// The bounds of B's idle connections to A: `--max-inflight` in all and so at most per
/// replica (more are never busy at once), none older than [`IDLE_AGE`].
fn idle_bounds(config: &Config) -> Bounds {
    Bounds {
        per_replica: config.max_inflight.max(1),
        total: config.max_inflight.max(1),
        max_age: IDLE_AGE,
    }
}

/// The default `--max-connections`: one descriptor per client connection, out of what the
/// open-file limit allows once B's connections to A are counted: up to `--max-inflight` in
/// flight and as many idle (see [`idle_bounds`]).
fn default_max_connections(max_inflight: usize) -> usize {
    let to_a = 2 * max_inflight.max(1);
    echo_core::server::default_max_connections(1)
        .saturating_sub(to_a)
        .max(1)
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
        .get_or_insert_with(|| default_max_connections(config.max_inflight));
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
    let pool = Arc::clone(&service.pool);
    // What the line about a call to A (`log_call`) shows in its message: not appended again.
    echo_core::fields_shown_in_message(&["url", "timeout_ms", "upstream_status", "kind", "error"]);
    log::info!(target: "service_b", "{} replicas={}", echo_core::process::config_line(&config), replicas.describe());
    let prune = balance::Chore {
        every: PRUNE_EVERY,
        run: Box::new(move || {
            pool.prune();
        }),
    };
    balance::start_upkeep(
        &replicas,
        Duration::from_millis(config.resolve_every_ms.max(1)),
        prune,
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

    /// `/ready` reads only whether B drains, so A's state cannot change it: this checks
    /// both answers with A down, and the drain's 503.
    #[test]
    fn health_and_ready_are_ok_with_a_down() {
        let b = service();
        let r = b.handle(&Request::get("/health"));
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ok"})));
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
