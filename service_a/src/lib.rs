//! Service A: `GET /health` and `GET /echo?msg=M` → `{"echo":"M"}`. `--delay-ms` slows every
//! `/echo` (never `/health`), which is how the timeout of Service B is demonstrated.

use std::io;
use std::thread;
use std::time::Duration;

use clap::Parser;
use echo_core::{route, Request, Response, ServerHandle};
use log::LevelFilter;
use serde_json::json;

/// Service A's command line; every flag also reads its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "service_a",
    version,
    after_help = echo_core::guard::LIMITS_HELP,
    about = "Service A: echoes ?msg= back as JSON"
)]
pub struct Config {
    /// Address to listen on (IP:PORT; port 0 picks a free port).
    #[arg(long, env = "SERVICE_A_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Delay every /echo by this many milliseconds (the timeout demo).
    #[arg(long, env = "SERVICE_A_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Worker threads answering requests; each delayed /echo holds one for --delay-ms.
    #[arg(long, env = "SERVICE_A_WORKERS", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, env = "SERVICE_A_LOG_LEVEL", default_value = "info", value_parser = echo_core::cli::parse_level)]
    pub log_level: LevelFilter,
}

impl Config {
    /// The defaults, listening on `listen` (tests use `127.0.0.1:0`).
    pub fn on(listen: &str) -> Config {
        Config::parse_from(["service_a", "--listen", listen])
    }
}

/// The service itself: the handlers and what they need.
#[derive(Debug, Clone)]
pub struct ServiceA {
    delay: Duration,
}

impl ServiceA {
    pub fn new(config: &Config) -> ServiceA {
        ServiceA {
            delay: Duration::from_millis(config.delay_ms),
        }
    }

    /// Answers one request; called by the server wrapper, or directly by unit tests.
    pub fn handle(&self, req: &Request) -> Response {
        route(
            self,
            req,
            &[("/health", Self::health), ("/echo", Self::echo)],
        )
    }

    fn health(&self, _: &Request) -> Response {
        Response::json(200, &json!({ "status": "ok" }))
    }

    fn echo(&self, req: &Request) -> Response {
        let msg = match req.param("msg") {
            Ok(msg) => msg.unwrap_or_default(),
            Err(e) => return Response::error(400, &e.to_string()),
        };
        if !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        Response::json(200, &json!({ "echo": msg }))
    }
}

/// Starts Service A; the handle gives the bound address and stops it.
pub fn spawn(config: Config) -> io::Result<ServerHandle> {
    log::info!(target: "service_a", "config: listen={} workers={} delay_ms={} log_level={}",
        config.listen, config.workers, config.delay_ms, config.log_level);
    let service = ServiceA::new(&config);
    echo_core::serve(
        "service_a",
        &config.listen,
        config.workers.into(),
        move |req| service.handle(req),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(target: &str) -> Response {
        ServiceA::new(&Config::on("127.0.0.1:0")).handle(&Request::get(target))
    }

    #[test]
    fn health_is_ok() {
        let r = answer("/health");
        assert_eq!((r.status, r.json_body()), (200, json!({"status": "ok"})));
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
        let service = ServiceA::new(&Config::on("127.0.0.1:0"));
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
    fn defaults_follow_the_contract() {
        let c = Config::parse_from(["service_a"]);
        assert_eq!((c.listen.as_str(), c.delay_ms), ("127.0.0.1:8080", 0));
        assert_eq!(c.log_level, LevelFilter::Info);
    }
}
