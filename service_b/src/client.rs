//! One attempt of a call from B to a replica of A over `ureq`, within its limits and the
//! call's one deadline over connect, send and receive; each failure classified as one
//! [`CallError`].

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use echo_core::client::form_encode;
use echo_core::http::{DEADLINE_EXCEEDED_HEADER, TIMEOUT_HEADER};
use serde_json::Value;
use ureq::Agent;

use crate::error::CallError;
use crate::transport::{self, AddressOnly, Connect};

/// Largest body accepted from A; an echo of the longest possible message fits easily.
const MAX_A_BODY: u64 = 1024 * 1024;

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

/// A's answer to one attempt.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Its JSON object.
    pub(crate) value: Value,
    /// It closed its connection (`Connection: close`): A is draining, or sheds connections.
    pub(crate) closing: bool,
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
    ) -> Result<Answer, Failed> {
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
            let closing = response
                .headers()
                .get("connection")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
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
                .map(|body| (body, closing))
                .map_err(|e| Failed::failing(e, false))
        })?;
        let (body, closing) = result;
        let value = parse_echo(&body).map_err(|e| Failed::failing(e, false))?;
        Ok(Answer { value, closing })
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
