//! One attempt of a call from B to a replica of A over `ureq`, within the call's one deadline
//! over connect, send and receive, and one error enum so that every way the call can fail
//! maps to exactly one 503 `kind`.

use std::fmt;
use std::io;
use std::time::Duration;

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

impl From<crate::replicas::NoReplica> for CallError {
    fn from(none: crate::replicas::NoReplica) -> CallError {
        match none {
            crate::replicas::NoReplica::AllEjected(open) => CallError::CircuitOpen(open),
            crate::replicas::NoReplica::Unresolved(cause) => {
                CallError::Connect(format!("no address of Service A is known ({cause})"))
            }
        }
    }
}

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

/// How one attempt failed. `Retry`: before any byte of the answer arrived (refused, reset,
/// unreachable, a slow connect, a stale pooled connection, a replica silent for its share
/// of the deadline), so the call may go to another replica; `Failed`: final.
#[derive(Debug)]
pub enum Attempt {
    Retry(CallError),
    Failed(CallError),
}

impl Attempt {
    /// The error, whichever way the attempt failed.
    pub fn into_error(self) -> CallError {
        match self {
            Attempt::Retry(e) | Attempt::Failed(e) => e,
        }
    }
}

/// Which connections and limits an attempt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Try {
    /// The first try when no other replica could take the call: pooled connections, the
    /// whole deadline for every phase.
    Alone,
    /// The first try with other replicas in rotation: pooled connections, at most
    /// `--connect-timeout-ms` to connect and half the deadline until the answer's head.
    Among,
    /// The retry: a fresh connection and what is left of the deadline.
    Retry(Duration),
}

/// The client for Service A's `/echo`: one attempt at a time, on a replica's base URL.
#[derive(Debug)]
pub struct EchoClient {
    timeout: Duration,
    connect_timeout: Duration,
    alone: Agent,
    among: Agent,
    fresh: Agent,
}

impl EchoClient {
    /// `timeout` is the deadline of a call; `idle` how many idle connections to keep per
    /// replica, at least the calls in flight allowed, so that calls reuse them.
    pub fn new(timeout: Duration, connect_timeout: Duration, idle: usize) -> EchoClient {
        let agent = |idle: usize, connect: Option<Duration>, head: Option<Duration>| {
            let config = Agent::config_builder()
                .timeout_global(Some(timeout))
                .timeout_connect(connect)
                .timeout_recv_response(head)
                .http_status_as_error(false)
                .proxy(None)
                .max_redirects(0)
                .max_idle_connections(idle.saturating_mul(4))
                .max_idle_connections_per_host(idle)
                // Well under the services' idle timeout (echo_core::server::IDLE_TIMEOUT), so a
                // pooled connection is never reused just as A closes it.
                .max_idle_age(Duration::from_secs(15))
                .build();
            Agent::with_parts(config, DefaultConnector::new(), AddressFirst::default())
        };
        EchoClient {
            timeout,
            connect_timeout,
            alone: agent(idle, None, None),
            among: agent(idle, Some(connect_timeout.min(timeout)), Some(timeout / 2)),
            fresh: agent(0, None, None),
        }
    }

    /// The path and query of A's `/echo` for `msg`, form-encoded so that any string comes
    /// back byte-exact.
    pub fn path(msg: &str) -> String {
        format!("/echo?msg={}", form_encode(msg))
    }

    /// The deadline every call gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One attempt: GET `base` + `path` and return A's JSON object.
    pub fn attempt(&self, how: Try, url: &str, request_id: &str) -> Result<Value, Attempt> {
        let request = match how {
            Try::Alone => self.alone.get(url),
            Try::Among => self.among.get(url),
            Try::Retry(left) => self
                .fresh
                .get(url)
                .config()
                .timeout_global(Some(left))
                .build(),
        };
        let mut response = request
            .header("X-Request-Id", request_id)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| self.classify_call(e, how))?;
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

    /// Sorts a failure before the answer's head into retryable or final. A timeout is
    /// retryable only on a first try among replicas, whose own shorter limits (connect, the
    /// answer's head) it is; any other timeout is the deadline, whatever the phase ureq
    /// names.
    fn classify_call(&self, e: ureq::Error, how: Try) -> Attempt {
        match (e, how) {
            (ureq::Error::Timeout(ureq::Timeout::Connect), Try::Among) => {
                Attempt::Retry(CallError::Connect(format!(
                    "connect took longer than {}ms",
                    self.connect_timeout.as_millis()
                )))
            }
            (ureq::Error::Timeout(ureq::Timeout::RecvResponse), Try::Among) => {
                Attempt::Retry(CallError::Timeout(self.timeout))
            }
            (e, _) => self.classify_error(e),
        }
    }

    fn classify_error(&self, e: ureq::Error) -> Attempt {
        use io::ErrorKind::*;
        let connect = |cause: String| Attempt::Retry(CallError::Connect(cause));
        match e {
            ureq::Error::Timeout(_) => Attempt::Failed(CallError::Timeout(self.timeout)),
            ureq::Error::Io(io) => match io.kind() {
                ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe
                | UnexpectedEof | NotConnected | HostUnreachable | NetworkUnreachable
                | AddrNotAvailable => connect(io.to_string()),
                _ => Attempt::Failed(CallError::Connect(io.to_string())),
            },
            ureq::Error::HostNotFound => connect("host not found".to_string()),
            ureq::Error::ConnectionFailed => connect("connection failed".to_string()),
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
    fn the_path_form_encodes_the_message() {
        assert_eq!(EchoClient::path("a b&c=d#"), "/echo?msg=a+b%26c%3Dd%23");
    }
}
