//! Service B: `GET /health` and `GET /call-echo?msg=M`, which calls Service A's `/echo` with
//! one deadline and answers `{"msg":M,"echo_response":<A's object>}`, or a 503 whose `kind`
//! and `details` say exactly how the call to A failed.

use std::io;
use std::time::{Duration, Instant};

use clap::Parser;
use echo_core::{route, Request, Response, ServerHandle};
use log::LevelFilter;
use serde_json::json;

pub mod client;

pub use client::{CallError, EchoClient};

/// Service B's command line; every flag also reads its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "service_b",
    version,
    after_help = echo_core::guard::LIMITS_HELP,
    about = "Service B: calls Service A and reports its failures as 503"
)]
pub struct Config {
    /// Address to listen on (IP:PORT; port 0 picks a free port).
    #[arg(long, env = "SERVICE_B_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Base URL of Service A (http:// only).
    #[arg(long, env = "SERVICE_A_URL", default_value = "http://127.0.0.1:8080", value_parser = parse_service_a_url)]
    pub service_a_url: String,
    /// Deadline for each call to Service A, covering connect, send and receive.
    #[arg(long, env = "SERVICE_B_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// Worker threads answering requests; each /call-echo holds one for up to --timeout-ms.
    #[arg(long, env = "SERVICE_B_WORKERS", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, env = "SERVICE_B_LOG_LEVEL", default_value = "info", value_parser = echo_core::cli::parse_level)]
    pub log_level: LevelFilter,
}

impl Config {
    /// The defaults, listening on `listen` and calling A at `service_a_url`.
    pub fn on(listen: &str, service_a_url: &str) -> Config {
        Config::parse_from([
            "service_b",
            "--listen",
            listen,
            "--service-a-url",
            service_a_url,
        ])
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

/// The service itself: the handlers and the client for A.
#[derive(Debug)]
pub struct ServiceB {
    client: EchoClient,
}

impl ServiceB {
    pub fn new(config: &Config) -> ServiceB {
        let timeout = Duration::from_millis(config.timeout_ms);
        ServiceB {
            client: EchoClient::new(&config.service_a_url, timeout, config.workers.into()),
        }
    }

    /// Answers one request; called by the server wrapper, or directly by unit tests.
    pub fn handle(&self, req: &Request) -> Response {
        route(
            self,
            req,
            &[("/health", Self::health), ("/call-echo", Self::call_echo)],
        )
    }

    fn health(&self, _: &Request) -> Response {
        Response::json(200, &json!({ "status": "ok" }))
    }

    fn call_echo(&self, req: &Request) -> Response {
        let msg = match req.param("msg") {
            Ok(Some(msg)) if !msg.is_empty() => msg,
            Ok(_) => return Response::error(400, "Missing 'msg' parameter"),
            Err(e) => return Response::error(400, &e.to_string()),
        };
        let url = self.client.url(&msg);
        let timeout_ms = self.client.timeout().as_millis();
        let started = Instant::now();
        let result = self.client.echo(&msg, &req.request_id);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let id = &req.request_id;
        match result {
            Ok(echo) => {
                log::info!(target: "service_b", "call to Service A ok: GET {url} timeout={timeout_ms}ms status=200 {ms:.2}ms request_id={id}");
                Response::json(200, &json!({ "msg": msg, "echo_response": echo }))
            }
            Err(e) => {
                log::warn!(target: "service_b", "call to Service A failed: GET {url} timeout={timeout_ms}ms kind={} {ms:.2}ms error=\"{e}\" request_id={id}", e.kind());
                Response::json(
                    503,
                    &json!({ "error": "Service A unavailable", "details": e.to_string(), "kind": e.kind() }),
                )
            }
        }
    }
}

/// Starts Service B; the handle gives the bound address and stops it.
pub fn spawn(config: Config) -> io::Result<ServerHandle> {
    log::info!(target: "service_b", "config: listen={} service_a_url={} timeout_ms={} workers={} log_level={}",
        config.listen, config.service_a_url, config.timeout_ms, config.workers, config.log_level);
    let service = ServiceB::new(&config);
    echo_core::serve(
        "service_b",
        &config.listen,
        config.workers.into(),
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
        let c = Config::parse_from(["service_b"]);
        assert_eq!(c.listen, "127.0.0.1:8081");
        assert_eq!(c.service_a_url, "http://127.0.0.1:8080");
        assert_eq!(c.timeout_ms, 2000);
    }
}
