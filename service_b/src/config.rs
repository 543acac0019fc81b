//! Service B's settings ([`Config`], whose `Default` is the documented default of every
//! flag) and the check of a `--service-a-url`. Only `main.rs` knows the command line.

use log::LevelFilter;

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
    /// hanging A cannot take every thread and descriptor. It also bounds B's idle
    /// connections to A: as many at most, in all (and so per replica), none kept over
    /// 15 s. Default 64.
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
    /// How long B keeps what it knows of a replica that left its name's addresses: its
    /// breaker (one that returns within it is still ejected if it was) and its labels in
    /// `/metrics`, removed after it. Default 600000 (10 minutes).
    pub forget_departed_ms: u64,
    /// Retries at most this share of the calls, in percent (plus a burst of 10). Default 20.
    pub retry_budget_percent: u32,
    /// On SIGTERM or SIGHUP, how long to keep serving, with `/ready` answering 503 and every
    /// answer closing its connection, before the stop (the lame-duck drain). Default 5000.
    pub drain_ms: u64,
    /// Serve the live page (`/`) and B's view of the replicas (`/replicas`); they reveal A's
    /// internal addresses, so turn them off where others reach B. Default true.
    pub dashboard: bool,
    /// Open connections at most, beyond which a new one gets 503. Default: what the
    /// open-file limit allows at one descriptor a client connection, once B's own
    /// connections to A are counted: `--max-inflight` in flight and as many idle (see
    /// [`echo_core::server::default_max_connections`]).
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
            forget_departed_ms: 600_000,
            retry_budget_percent: 20,
            drain_ms: 5000,
            dashboard: true,
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
