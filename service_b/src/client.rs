//! The call from B to A: one `ureq::Agent`, one deadline over connect, send and receive, and
//! one error enum so that every way the call can fail maps to exactly one 503 `kind`.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use echo_core::http::form_encode;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

/// Largest body accepted from A; an echo of the longest possible message fits easily.
const MAX_A_BODY: u64 = 1024 * 1024;

/// Why a call to A failed. `kind` is the machine-readable 503 `kind`, `Display` the
/// `details` (its prefix is the contract, the rest is the cause).
#[derive(Debug)]
pub enum CallError {
    /// Refused, reset, unreachable: no answer could be had from A.
    Connect(String),
    /// The deadline passed before A's whole answer arrived.
    Timeout(Duration),
    /// A answered with a non-2xx status.
    Status(u16),
    /// A answered 2xx, but not with the expected JSON object.
    BadResponse(String),
    /// B already has as many calls to A in flight as it allows (the bulkhead); A not called.
    Overloaded(usize),
    /// The circuit breaker is open; A not called. Says how it opened and when it may close.
    CircuitOpen(crate::breaker::Open),
}

impl CallError {
    /// The `kind` field of the 503 body and of B's log line.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Connect(_) => "connect",
            CallError::Timeout(_) => "timeout",
            CallError::Status(_) => "status",
            CallError::BadResponse(_) => "bad_response",
            CallError::Overloaded(_) => "overloaded",
            CallError::CircuitOpen(_) => "circuit_open",
        }
    }

    /// The `Retry-After` (whole seconds, at least 1) for failures that say when to come back.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            CallError::Overloaded(_) => Some(1),
            CallError::CircuitOpen(open) => {
                Some(open.left.as_millis().div_ceil(1000).max(1) as u64)
            }
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(cause) => write!(f, "Connection error: {cause}"),
            CallError::Timeout(after) => {
                write!(f, "Timeout calling Service A after {}s", seconds(*after))
            }
            CallError::Status(code) => write!(f, "Service A returned HTTP {code}"),
            CallError::BadResponse(cause) => write!(f, "Invalid response from Service A: {cause}"),
            CallError::Overloaded(limit) => {
                write!(
                    f,
                    "Too many calls to Service A in flight (limit {limit}); try again later"
                )
            }
            CallError::CircuitOpen(open) => write!(f, "{open}"),
        }
    }
}

impl std::error::Error for CallError {}

/// `2000 ms` → `2.0`, `250 ms` → `0.25`: as many decimals as the value needs, at least one.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    let text = format!("{}.{:03}", ms / 1000, ms % 1000);
    let trimmed = text.trim_end_matches('0');
    if trimmed.ends_with('.') {
        format!("{trimmed}0")
    } else {
        trimmed.to_string()
    }
}

/// ureq 3.5's resolver looks the host up on every call, before it checks its pool of idle
/// connections, and with a timeout set (ours always is) it does so on a new thread, even for
/// an IP address: one thread spawned per call to A. An address needs no lookup, so it is
/// answered here; a host name still goes to ureq's resolver.
#[derive(Debug, Default)]
struct AddressFirst(DefaultResolver);

impl Resolver for AddressFirst {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                let mut addrs = self.empty();
                addrs.push(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)));
                Ok(addrs)
            }
            Err(_) => self.0.resolve(uri, config, timeout),
        }
    }
}

/// How one attempt failed: `Stale` is an I/O failure before any byte of the answer, which on
/// a pooled connection means A closed it meanwhile (restarted); worth one more try.
enum Attempt {
    Stale(String),
    Failed(CallError),
}

/// The client for Service A's `/echo`.
#[derive(Debug)]
pub struct EchoClient {
    base: String,
    timeout: Duration,
    pooled: Agent,
    fresh: Agent,
}

impl EchoClient {
    /// `base` is A's URL (`http://host:port`, maybe with a path prefix); `idle` is how many idle
    /// connections to keep, at least B's worker count so that calls reuse them.
    pub fn new(base: &str, timeout: Duration, idle: usize) -> EchoClient {
        let agent = |idle: usize| -> Agent {
            let config = Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .proxy(None)
                .max_redirects(0)
                .max_idle_connections(idle)
                .max_idle_connections_per_host(idle)
                // Well under the services' idle timeout (echo_core::server::IDLE_TIMEOUT), so a
                // pooled connection is never reused just as A closes it.
                .max_idle_age(Duration::from_secs(15))
                .build();
            Agent::with_parts(config, DefaultConnector::new(), AddressFirst::default())
        };
        EchoClient {
            base: base.trim_end_matches('/').to_string(),
            timeout,
            pooled: agent(idle),
            fresh: agent(0),
        }
    }

    /// A's URL for `msg`, form-encoded so that any string comes back byte-exact.
    pub fn url(&self, msg: &str) -> String {
        format!("{}/echo?msg={}", self.base, form_encode(msg))
    }

    /// The length of the request target (path and query) A receives for `msg`.
    pub fn target_len(&self, msg: &str) -> usize {
        let url = self.url(msg);
        let after_scheme = url.trim_start_matches("http://");
        after_scheme.len() - after_scheme.find('/').unwrap_or(after_scheme.len())
    }

    /// The deadline every call gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls A's `/echo` within one deadline and returns A's JSON object. A call that fails
    /// on a reused connection before any byte of the answer is retried once on a fresh
    /// connection, inside the same deadline.
    pub fn echo(&self, msg: &str, request_id: &str) -> Result<Value, CallError> {
        let started = Instant::now();
        let url = self.url(msg);
        match self.attempt(&self.pooled, &url, request_id, self.timeout) {
            Ok(value) => Ok(value),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Stale(first)) => {
                let left = self.timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(CallError::Timeout(self.timeout));
                }
                log::debug!(target: "service_b", "retrying on a fresh connection after: {first}");
                match self.attempt(&self.fresh, &url, request_id, left) {
                    Ok(value) => Ok(value),
                    Err(Attempt::Failed(CallError::Timeout(_))) => {
                        Err(CallError::Timeout(self.timeout))
                    }
                    Err(Attempt::Failed(e)) => Err(e),
                    Err(Attempt::Stale(cause)) => Err(CallError::Connect(cause)),
                }
            }
        }
    }

    fn attempt(
        &self,
        agent: &Agent,
        url: &str,
        request_id: &str,
        budget: Duration,
    ) -> Result<Value, Attempt> {
        let mut response = agent
            .get(url)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("X-Request-Id", request_id)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| self.classify_call(e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(Attempt::Failed(CallError::Status(status)));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_A_BODY)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => CallError::Timeout(self.timeout),
                other => CallError::BadResponse(format!("reading the body failed: {other}")),
            })
            .map_err(Attempt::Failed)?;
        parse_echo(&body).map_err(Attempt::Failed)
    }

    fn classify_call(&self, e: ureq::Error) -> Attempt {
        use io::ErrorKind::*;
        match e {
            ureq::Error::Timeout(_) => Attempt::Failed(CallError::Timeout(self.timeout)),
            ureq::Error::Io(io) => match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    Attempt::Stale(io.to_string())
                }
                _ => Attempt::Failed(CallError::Connect(io.to_string())),
            },
            ureq::Error::HostNotFound => {
                Attempt::Failed(CallError::Connect("host not found".to_string()))
            }
            ureq::Error::ConnectionFailed => {
                Attempt::Failed(CallError::Connect("connection failed".to_string()))
            }
            ureq::Error::Protocol(p) => {
                Attempt::Failed(CallError::BadResponse(format!("not HTTP: {p}")))
            }
            other => Attempt::Failed(CallError::BadResponse(other.to_string())),
        }
    }
}

/// A's body must be a JSON object with a string `echo`; it is passed on as received.
fn parse_echo(body: &[u8]) -> Result<Value, CallError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CallError::BadResponse(format!("body is not JSON ({e})")))?;
    match value.get("echo") {
        Some(Value::String(_)) if value.is_object() => Ok(value),
        _ => Err(CallError::BadResponse(
            "expected a JSON object with a string \"echo\"".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_carry_the_contract_prefixes() {
        let cases = [
            (
                CallError::Connect("refused".into()),
                "connect",
                "Connection error: refused",
            ),
            (
                CallError::Timeout(Duration::from_millis(2000)),
                "timeout",
                "Timeout calling Service A after 2.0s",
            ),
            (
                CallError::Status(500),
                "status",
                "Service A returned HTTP 500",
            ),
            (
                CallError::BadResponse("x".into()),
                "bad_response",
                "Invalid response from Service A: x",
            ),
        ];
        for (e, kind, details) in cases {
            assert_eq!((e.kind(), e.to_string().as_str()), (kind, details));
        }
    }

    fn open(ms: u64) -> crate::breaker::Open {
        crate::breaker::Open {
            left: Duration::from_millis(ms),
            failures: 5,
            last: "Connection error: refused".to_string(),
        }
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        assert_eq!(CallError::Overloaded(1).retry_after(), Some(1));
        assert_eq!(CallError::CircuitOpen(open(1500)).retry_after(), Some(2));
        assert_eq!(CallError::CircuitOpen(open(10)).retry_after(), Some(1));
        assert_eq!(CallError::Status(500).retry_after(), None);
    }

    #[test]
    fn seconds_keep_needed_decimals() {
        let s = |ms| seconds(Duration::from_millis(ms));
        assert_eq!(
            [s(2000), s(250), s(1234), s(100), s(0)],
            ["2.0", "0.25", "1.234", "0.1", "0.0"]
        );
    }

    #[test]
    fn only_an_object_with_a_string_echo_is_accepted() {
        assert_eq!(
            parse_echo(br#"{"echo":"hi","x":1}"#).unwrap(),
            json!({"echo":"hi","x":1})
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"echo":1}"#,
            br#""echo""#,
            b"",
        ] {
            assert_eq!(parse_echo(bad).unwrap_err().kind(), "bad_response");
        }
    }

    #[test]
    fn addresses_are_not_looked_up() {
        let resolve = |url: &str| {
            let uri: Uri = url.parse().expect("uri");
            let config = ureq::config::Config::default();
            let timeout = NextTimeout {
                after: ureq::unversioned::transport::time::Duration::from_secs(1),
                ..NextTimeout::default()
            };
            AddressFirst::default()
                .resolve(&uri, &config, timeout)
                .map(|a| a.to_vec())
        };
        let v4: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(resolve("http://127.0.0.1:8080/echo").ok(), Some(vec![v4]));
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(resolve("http://[::1]/echo").ok(), Some(vec![v6]));
        let named = resolve("http://localhost:9/").unwrap_or_default();
        assert!(
            named.iter().any(|a| a.ip().is_loopback() && a.port() == 9),
            "{named:?}"
        );
    }

    #[test]
    fn url_form_encodes_the_message() {
        let c = EchoClient::new("http://127.0.0.1:1/", Duration::from_secs(1), 1);
        assert_eq!(
            c.url("a b&c=d#"),
            "http://127.0.0.1:1/echo?msg=a+b%26c%3Dd%23"
        );
    }
}
