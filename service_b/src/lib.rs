//! Service B: `GET /call-echo?msg=M` calls Service A's `/echo` with one deadline and answers
//! `{"msg":M,"echo_response":<A's object>}`, or a 503 whose `kind` and `details` say exactly
//! how the call failed. A may run as several replicas ([`replicas`]): each call goes to the
//! least loaded one, a replica that keeps failing is ejected by its own breaker
//! ([`breaker`]), and a call that failed before any byte of the answer is retried once
//! elsewhere. A bulkhead (at most `--max-inflight` calls at once) keeps a hanging A from
//! costing B its threads or its `/health`.
//! Also `GET /health` (liveness), `GET /ready` (readiness: some replica may take a call) and
//! `GET /metrics`.

#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_core::metrics::latency_histogram;
use echo_core::{route, Metrics, Request, Response, ServerHandle};
use log::LevelFilter;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{json, Value};

pub mod breaker;
pub mod client;
pub mod replicas;

pub use breaker::{Breaker, Open, Permit};
pub use client::{Attempt, CallError, EchoClient, Try};
pub use replicas::{NoReplica, Replica, ReplicaLabel, Replicas, Resolve, Target};

/// Service B's settings. [`Config::default`] is the documented default of every flag;
/// tests build it directly, and only `main.rs` knows the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on (`IP:PORT`; port 0 picks a free port). Default `127.0.0.1:8081`.
    pub listen: String,
    /// Base URLs of Service A (`http://` only; see [`parse_service_a_url`]). Every address
    /// of every URL is a replica. Default `["http://127.0.0.1:8080"]`.
    pub service_a_urls: Vec<String>,
    /// Deadline of each call to A, covering connect, send and receive. Default 2000.
    pub timeout_ms: u64,
    /// With other replicas in rotation, a connect slower than this moves the call on to
    /// another replica. Default 250.
    pub connect_timeout_ms: u64,
    /// How often host names in `service_a_urls` are resolved again, in the background.
    /// Default 5000.
    pub resolve_every_ms: u64,
    /// Calls to A in flight at most; more get 503 `overloaded` at once (the bulkhead), so a
    /// hanging A cannot take every thread and descriptor. Default 64.
    pub max_inflight: usize,
    /// Failed calls in a row that eject a replica (open its breaker; 0 turns it off).
    /// Default 5.
    pub breaker_threshold: u32,
    /// How long an ejected replica gets no calls before one trial call. Default 2000.
    pub breaker_cooldown_ms: u64,
    /// Open connections at most, beyond which a new one gets 503. Default: what the
    /// open-file limit allows at two descriptors a connection (one to the client, one to A;
    /// see [`echo_core::server::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Log level. Default `info`.
    pub log_level: LevelFilter,
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
            max_connections: None,
            log_level: LevelFilter::Info,
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

/// `--service-a-url` must be `http://host[:port][/prefix]`: no other scheme, no query.
pub fn parse_service_a_url(s: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("'{s}' must start with http:// (no TLS support)"));
    }
    if uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
        return Err(format!("'{s}' must be http://HOST[:PORT] without a query"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Labels of `upstream_requests_total`: the replica that gave the final answer (`none` for a
/// call never made) and the outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    replica: String,
    outcome: &'static str,
}

/// B's own metrics about its calls to A.
#[derive(Debug)]
struct Upstream {
    outcomes: Family<Outcome, Counter>,
    retries: Counter,
    duration: Histogram,
    in_flight: Gauge,
}

/// At most `limit` calls to A at once; a slot is held for the whole call.
#[derive(Debug)]
struct Bulkhead {
    limit: usize,
    used: AtomicUsize,
    gauge: Gauge,
}

/// One slot of the bulkhead, given back on drop.
struct Slot<'a>(&'a Bulkhead);

impl Bulkhead {
    fn try_enter(&self) -> Option<Slot<'_>> {
        let before = self.used.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(self);
        if before >= self.limit {
            return None; // dropping `slot` gives the count back
        }
        self.gauge.set((before + 1) as i64);
        Some(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let now = self.0.used.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.gauge.set(now.min(self.0.limit) as i64);
    }
}

/// How a call to A ended, and on which replica (`None` when it was never made).
struct Call {
    result: Result<Value, CallError>,
    replica: Option<Arc<Replica>>,
}

/// The service itself: the handlers, the replicas of A and what guards the calls.
#[derive(Debug)]
pub struct ServiceB {
    client: EchoClient,
    replicas: Arc<Replicas>,
    /// The first `--service-a-url`, named in the log of a call never made.
    first_url: String,
    /// The longest path prefix of any `--service-a-url`, for the target length check.
    longest_prefix: usize,
    bulkhead: Bulkhead,
    upstream: Upstream,
    metrics: Arc<Metrics>,
}

impl ServiceB {
    /// Builds the service with its own metrics (see [`ServiceB::metrics_handle`]) and
    /// resolves A's names once with the system's resolver; [`spawn`] starts their
    /// background re-resolution.
    pub fn new(config: &Config) -> ServiceB {
        ServiceB::with_resolver(config, replicas::system_resolver())
    }

    /// Like [`ServiceB::new`], resolving A's host names with `resolve`.
    pub fn with_resolver(config: &Config, resolve: Resolve) -> ServiceB {
        let mut metrics = Metrics::new();
        let timeout = Duration::from_millis(config.timeout_ms);
        let upstream = Upstream {
            outcomes: Family::default(),
            retries: Counter::default(),
            duration: latency_histogram(),
            in_flight: Gauge::default(),
        };
        let breaker_states = Family::<ReplicaLabel, Gauge>::default();
        let registry = metrics.registry();
        registry.register(
            "upstream_requests",
            "Calls to Service A by the replica that answered last and outcome: ok, or the 503 kind",
            upstream.outcomes.clone(),
        );
        registry.register(
            "upstream_retries",
            "Calls to Service A retried once, on another replica when there is one",
            upstream.retries.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Duration of the calls to Service A that were made (not refused by the bulkhead or breakers)",
            upstream.duration.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Calls to Service A in flight",
            upstream.in_flight.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "The breaker of each replica of Service A: 0 closed, 1 open (ejected), 2 half-open",
            breaker_states.clone(),
        );
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
        let replicas = Replicas::new(
            targets,
            resolve,
            config.breaker_threshold,
            Duration::from_millis(config.breaker_cooldown_ms),
            breaker_states,
        );
        let max_inflight = config.max_inflight.max(1);
        ServiceB {
            client: EchoClient::new(
                timeout,
                Duration::from_millis(config.connect_timeout_ms),
                max_inflight,
            ),
            replicas: Arc::new(replicas),
            first_url: config.service_a_urls.first().cloned().unwrap_or_default(),
            longest_prefix,
            bulkhead: Bulkhead {
                limit: max_inflight,
                used: AtomicUsize::new(0),
                gauge: upstream.in_flight.clone(),
            },
            upstream,
            metrics: Arc::new(metrics),
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
                ("/ready", Self::ready),
                ("/call-echo", Self::call_echo),
                ("/metrics", |s, _| s.metrics.render()),
            ],
        )
    }

    /// Ready while some replica of A may take a call (so an orchestrator sends traffic,
    /// and trials, to a B that can serve it).
    fn ready(&self, _: &Request) -> Response {
        let set = self.replicas.snapshot();
        if self.replicas.available(&set) > 0 {
            return Response::json(200, &json!({ "status": "ready" }));
        }
        let reason = CallError::from(self.replicas.none_available(&set)).to_string();
        Response::json(503, &json!({ "status": "not ready", "reason": reason }))
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
        let timeout_ms = self.client.timeout().as_millis();
        let started = Instant::now();
        let Call { result, replica } = self.call_a(&path, &req.request_id);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let id = &req.request_id;
        let (url, name) = match &replica {
            Some(r) => (format!("{}{path}", r.base), r.addr.to_string()),
            None => (format!("{}{path}", self.first_url), "none".to_string()),
        };
        let outcome = result.as_ref().map_or_else(CallError::kind, |_| "ok");
        self.upstream
            .outcomes
            .get_or_create(&Outcome {
                replica: name.clone(),
                outcome,
            })
            .inc();
        match result {
            Ok(echo) => {
                log::info!(target: "service_b", "call to Service A ok: GET {url} replica={name} timeout={timeout_ms}ms status=200 {ms:.2}ms request_id={id}");
                Response::json(200, &json!({ "msg": msg, "echo_response": echo }))
                    .with_log_field("replica", name)
            }
            Err(e) => {
                let verb = match e {
                    CallError::Overloaded(_) | CallError::CircuitOpen(_) => "not made",
                    _ => "failed",
                };
                log::warn!(target: "service_b", "call to Service A {verb}: GET {url} replica={name} timeout={timeout_ms}ms kind={} {ms:.2}ms error=\"{e}\" request_id={id}", e.kind());
                let body = json!({ "error": "Service A unavailable", "details": e.to_string(), "kind": e.kind() });
                let response = Response::json(503, &body).with_log_field("replica", name);
                match e.retry_after() {
                    Some(secs) => response.with_header("Retry-After", secs.to_string()),
                    None => response,
                }
            }
        }
    }

    /// The guarded call: a bulkhead slot, the least-loaded replica whose breaker lets the
    /// call through, and one retry (on another replica when one may take it, else on a
    /// fresh connection to the same) for a failure before any byte of the answer, within
    /// the same deadline.
    fn call_a(&self, path: &str, request_id: &str) -> Call {
        let never_made = |e| Call {
            result: Err(e),
            replica: None,
        };
        let Some(_slot) = self.bulkhead.try_enter() else {
            return never_made(CallError::Overloaded(self.bulkhead.limit));
        };
        let started = Instant::now();
        let set = self.replicas.snapshot();
        let how = match self.replicas.available(&set) {
            0 | 1 => Try::Alone,
            _ => Try::Among,
        };
        let (first, permit) = match self.replicas.pick(&set, None) {
            Ok(picked) => picked,
            Err(none) => return never_made(none.into()),
        };
        let cause = match self.attempt(first, how, path, request_id) {
            Err(Attempt::Retry(cause)) => cause,
            done => return self.done(started, first, permit, done),
        };
        let left = self.client.timeout().saturating_sub(started.elapsed());
        if left.is_zero() {
            let timeout = CallError::Timeout(self.client.timeout());
            return self.done(started, first, permit, Err(Attempt::Failed(timeout)));
        }
        self.upstream.retries.inc();
        // Another replica if one may take the call; else the same on a fresh connection,
        // under the same permit, so that its breaker counts this call once.
        let (replica, permit) = match self.replicas.pick(&set, Some(first)) {
            Ok((second, second_permit)) => {
                permit.record(Some(cause.to_string()));
                (second, second_permit)
            }
            Err(_) => (first, permit),
        };
        log::debug!(target: "service_b", "retrying on replica {} after {} failed: {cause} request_id={request_id}", replica.addr, first.addr);
        let outcome = self.attempt(replica, Try::Retry(left), path, request_id);
        self.done(started, replica, permit, outcome)
    }

    /// One attempt on `replica`, counted in its load.
    fn attempt(
        &self,
        replica: &Replica,
        how: Try,
        path: &str,
        request_id: &str,
    ) -> Result<Value, Attempt> {
        let _load = replica.enter();
        let url = format!("{}{path}", replica.base);
        self.client.attempt(how, &url, request_id)
    }

    /// Reports the call's outcome to the replica's breaker and ends the call. A 4xx from A
    /// means B asked wrongly, not that A is failing: not a breaker failure.
    fn done(
        &self,
        started: Instant,
        replica: &Arc<Replica>,
        permit: Permit<'_>,
        outcome: Result<Value, Attempt>,
    ) -> Call {
        permit.record(match &outcome {
            Ok(_) | Err(Attempt::Failed(CallError::Status(400..=499))) => None,
            Err(Attempt::Retry(e) | Attempt::Failed(e)) => Some(e.to_string()),
        });
        self.upstream
            .duration
            .observe(started.elapsed().as_secs_f64());
        Call {
            result: outcome.map_err(Attempt::into_error),
            replica: Some(Arc::clone(replica)),
        }
    }
}

/// Starts Service B; the handle gives the bound address and stops it.
pub fn spawn(config: Config) -> io::Result<ServerHandle> {
    spawn_with_resolver(config, replicas::system_resolver())
}

/// Like [`spawn`], resolving A's host names with `resolve` (tests give names of their own).
pub fn spawn_with_resolver(config: Config, resolve: Resolve) -> io::Result<ServerHandle> {
    let listener = echo_core::server::bind(&config.listen)?;
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| echo_core::server::default_max_connections(2));
    let service = ServiceB::with_resolver(&config, resolve);
    log::info!(target: "service_b", "config: listen={} service_a_url={} replicas={} timeout_ms={} connect_timeout_ms={} resolve_every_ms={} max_inflight={} breaker_threshold={} breaker_cooldown_ms={} max_connections={max_connections} log_level={}",
        config.listen, config.service_a_urls.join(","), service.replicas.describe(), config.timeout_ms, config.connect_timeout_ms, config.resolve_every_ms, config.max_inflight,
        config.breaker_threshold, config.breaker_cooldown_ms, config.log_level);
    service
        .replicas
        .resolve_in_background(Duration::from_millis(config.resolve_every_ms.max(1)));
    let metrics = service.metrics_handle();
    echo_core::serve(
        "service_b",
        listener,
        max_connections,
        metrics,
        move |req| service.handle(req),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A B whose A is a closed port: every call that reaches the client fails to connect.
    fn service() -> ServiceB {
        ServiceB::new(&Config::on("127.0.0.1:0", "http://127.0.0.1:1"))
    }

    #[test]
    fn health_is_ok_with_a_down() {
        let r = service().handle(&Request::get("/health"));
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ok"})));
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
            parse_service_a_url("http://127.0.0.1:8080/").unwrap(),
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
        ] {
            assert!(parse_service_a_url(bad).is_err(), "{bad}");
        }
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
