//! One attempt of a call from B to a replica of A over `ureq`, within its limits and the
//! call's one deadline over connect, send and receive; and one error enum, so that every way
//! the call can fail maps to exactly one 503 `kind`.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use echo_core::http::{form_encode, DEADLINE_EXCEEDED_HEADER, TIMEOUT_HEADER};
use serde_json::Value;
use ureq::Agent;

use crate::transport::{self, AddressOnly, Connect};

/// Largest body accepted from A; an echo of the longest possible message fits easily.
const MAX_A_BODY: u64 = 1024 * 1024;

/// Why a call to A failed. `kind` is the machine-readable 503 `kind`, `Display` the
/// `details` (its prefix is fixed, the rest is the cause).
#[derive(Debug)]
pub(crate) enum CallError {
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
    pub(crate) fn kind(&self) -> &'static str {
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
    pub(crate) fn retry_after(&self) -> Option<u64> {
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

/// What a failed attempt says, beyond its error.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: CallError,
    /// Nothing of the answer had arrived, or A refused at once for lack of time: another
    /// attempt may still succeed (a retry).
    pub(crate) early: bool,
    /// What it says about the replica.
    pub(crate) health: Health,
    /// The connect was refused or the address unreachable: the names may have moved.
    pub(crate) refused: bool,
    /// How long the attempt took.
    pub(crate) took: Duration,
}

/// What a failed attempt says about the replica it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// It is failing: counts for its breaker, and its estimate takes a penalty.
    Failing,
    /// It answered at once that it could not finish within the time it was given, so it is
    /// at least this slow: its estimate learns that, its breaker does not count it.
    Slower(Duration),
    /// B asked wrongly (a 4xx): nothing is learnt about the replica.
    Fine,
}

impl Failed {
    fn failing(error: CallError, early: bool) -> Failed {
        Failed {
            error,
            early,
            health: Health::Failing,
            refused: false,
            took: Duration::ZERO,
        }
    }
}

/// The limits of one attempt, each within what is left of the call's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// What is left of the deadline.
    pub(crate) left: Duration,
    /// At most this to connect (`None`: the deadline).
    pub(crate) connect: Option<Duration>,
    /// At most this until the head of the answer (`None`: the deadline); A is told it.
    pub(crate) head: Option<Duration>,
    /// On a new connection, never a pooled one (a retry on the same replica).
    pub(crate) fresh: bool,
}

impl Limits {
    /// How long A is told it may take: the head's limit, within what is left.
    fn budget(&self) -> Duration {
        self.head.map_or(self.left, |h| h.min(self.left))
    }
}

/// The headers of the incoming request that go on to A.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forward<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) traceparent: &'a str,
    pub(crate) tracestate: Option<&'a str>,
}

/// Each connection thread's own agents (a pooled one and one that never pools): a call on
/// one thread never waits for another's pool lock, and pooled connections stay with the
/// thread that made them. Keyed by client, so services sharing a process (tests) keep apart.
struct Agents {
    client: u64,
    pooled: Agent,
    fresh: Agent,
}

thread_local! {
    static AGENTS: RefCell<Vec<Agents>> = const { RefCell::new(Vec::new()) };
}

/// The client for Service A's `/echo`: one attempt at a time, on a replica's base URL.
#[derive(Debug)]
pub(crate) struct EchoClient {
    id: u64,
    timeout: Duration,
}

impl EchoClient {
    /// `timeout` is the deadline of a call.
    pub(crate) fn new(timeout: Duration) -> EchoClient {
        static IDS: AtomicU64 = AtomicU64::new(0);
        EchoClient {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            timeout,
        }
    }

    /// The agent's settings; `pooled` keeps idle connections, else none.
    fn config(&self, pooled: bool) -> ureq::config::Config {
        // A connection thread makes one call at a time: one idle connection per replica
        // covers it, a few more cover changes of replica.
        let (idle, per_host) = if pooled { (8, 1) } else { (0, 0) };
        Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .max_idle_connections(idle)
            .max_idle_connections_per_host(per_host)
            // Well under the services' idle timeout (echo_core::server::IDLE_TIMEOUT), so a
            // pooled connection is never reused just as A closes it.
            .max_idle_age(Duration::from_secs(15))
            .build()
    }

    /// The path and query of A's `/echo` for `msg`, form-encoded so that any string comes
    /// back byte-exact.
    pub(crate) fn path(msg: &str) -> String {
        format!("/echo?msg={}", form_encode(msg))
    }

    /// The deadline every call gets.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` with this thread's agents for this client, made on first use.
    fn with_agents<R>(&self, f: impl FnOnce(&Agents) -> R) -> R {
        AGENTS.with(|agents| {
            let mut agents = agents.borrow_mut();
            let i = match agents.iter().position(|a| a.client == self.id) {
                Some(i) => i,
                None => {
                    agents.push(Agents {
                        client: self.id,
                        pooled: Agent::with_parts(self.config(true), Connect, AddressOnly),
                        fresh: Agent::with_parts(self.config(false), Connect, AddressOnly),
                    });
                    agents.len() - 1
                }
            };
            f(&agents[i])
        })
    }

    /// One attempt: GET `url` within `limits` and return A's JSON object.
    pub(crate) fn attempt(
        &self,
        url: &str,
        limits: Limits,
        forward: Forward<'_>,
    ) -> Result<Value, Failed> {
        transport::new_attempt();
        let budget = limits.budget();
        let result = self.with_agents(|agents| {
            let agent = if limits.fresh {
                &agents.fresh
            } else {
                &agents.pooled
            };
            let mut request = agent
                .get(url)
                .header("X-Request-Id", forward.request_id)
                .header("traceparent", forward.traceparent)
                .header(TIMEOUT_HEADER, budget.as_millis().to_string())
                .header("Accept", "application/json");
            if let Some(state) = forward.tracestate {
                request = request.header("tracestate", state);
            }
            let mut response = request
                .config()
                .timeout_global(Some(limits.left))
                .timeout_connect(limits.connect)
                .timeout_recv_response(limits.head)
                .build()
                .call()
                .map_err(|e| self.classify(e, limits))?;
            let status = response.status().as_u16();
            if status == 504 && response.headers().contains_key(DEADLINE_EXCEEDED_HEADER) {
                return Err(Failed {
                    error: CallError::Timeout(self.timeout),
                    early: limits.head.is_some_and(|h| h < limits.left),
                    health: Health::Slower(budget),
                    refused: false,
                    took: Duration::ZERO,
                });
            }
            if !(200..300).contains(&status) {
                let health = if status < 500 {
                    Health::Fine
                } else {
                    Health::Failing
                };
                return Err(Failed {
                    error: CallError::Status(status),
                    early: false,
                    health,
                    refused: false,
                    took: Duration::ZERO,
                });
            }
            response
                .body_mut()
                .with_config()
                .limit(MAX_A_BODY)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::Timeout(_) => CallError::Timeout(self.timeout),
                    other => CallError::BadResponse(format!("reading the body failed: {other}")),
                })
                .map_err(|e| Failed::failing(e, false))
        })?;
        parse_echo(&result).map_err(|e| Failed::failing(e, false))
    }

    /// Sorts a failure before a complete answer head into retryable or final, by what had
    /// arrived: once any byte of the answer is in, it is final (and `bad_response` unless
    /// the deadline passed). A timeout is retryable only when it is one of the attempt's own
    /// shorter limits (connect, the answer's head); else it is the deadline.
    fn classify(&self, e: ureq::Error, limits: Limits) -> Failed {
        use io::ErrorKind::*;
        let received = transport::attempt_facts().received;
        let short = |limit: Option<Duration>| limit.is_some_and(|l| l < limits.left);
        match e {
            ureq::Error::Timeout(ureq::Timeout::Connect) if short(limits.connect) => {
                let ms = limits.connect.map_or(0, |c| c.as_millis());
                Failed::failing(
                    CallError::Connect(format!("connect took longer than {ms}ms")),
                    true,
                )
            }
            ureq::Error::Timeout(ureq::Timeout::RecvResponse)
                if received == 0 && short(limits.head) =>
            {
                Failed::failing(CallError::Timeout(self.timeout), true)
            }
            ureq::Error::Timeout(_) => Failed::failing(CallError::Timeout(self.timeout), false),
            ureq::Error::Protocol(p) => {
                Failed::failing(CallError::BadResponse(format!("not HTTP: {p}")), false)
            }
            _ if received > 0 => Failed::failing(
                CallError::BadResponse(format!(
                    "the answer was cut short after {received} bytes: {e}"
                )),
                false,
            ),
            ureq::Error::Io(io) => {
                let refused = matches!(
                    io.kind(),
                    ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
                );
                let early = refused
                    || matches!(
                        io.kind(),
                        ConnectionReset
                            | ConnectionAborted
                            | BrokenPipe
                            | UnexpectedEof
                            | NotConnected
                    );
                Failed {
                    refused,
                    ..Failed::failing(CallError::Connect(io.to_string()), early)
                }
            }
            ureq::Error::HostNotFound => {
                Failed::failing(CallError::Connect("host not found".to_string()), true)
            }
            ureq::Error::ConnectionFailed => {
                Failed::failing(CallError::Connect("connection failed".to_string()), true)
            }
            other => Failed::failing(CallError::BadResponse(other.to_string()), false),
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
    fn the_path_form_encodes_the_message() {
        assert_eq!(EchoClient::path("a b&c=d#"), "/echo?msg=a+b%26c%3Dd%23");
    }
}
