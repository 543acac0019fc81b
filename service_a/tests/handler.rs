//! Service A's handler called directly, without a socket: routes, decoding, faults per
//! request and per flag, budgets and draining. (Moved out of lib.rs, unchanged, when the
//! admin listener made it too long.)

#![forbid(unsafe_code)]

use echo_tests::{GetRequest, JsonBody};
use std::time::Duration;

use echo_core::{Request, Response};
use log::LevelFilter;
use serde_json::json;
use service_a::{Config, ServiceA};

fn service(config: &Config) -> ServiceA {
    ServiceA::new(config)
}

fn answer(target: &str) -> Response {
    service(&Config::on("127.0.0.1:0")).handle(&Request::get(target))
}

#[test]
fn health_and_ready_are_ok() {
    let r = answer("/health");
    assert_eq!((r.status, r.json_body()), (200, json!({"status": "ok"})));
    let r = answer("/ready");
    assert_eq!((r.status, r.json_body()), (200, json!({"status": "ready"})));
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
    let service = service(&Config::on("127.0.0.1:0"));
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
fn per_request_faults() {
    let r = answer("/echo?msg=x&status=503");
    assert_eq!(
        (r.status, r.json_body()),
        (503, json!({"error": "Injected status 503"}))
    );
    assert_eq!(
        answer("/echo?msg=x&status=200").json_body(),
        json!({"error": "Injected status 200"})
    );
    for bad in [
        "/echo?status=99",
        "/echo?status=600",
        "/echo?status=x",
        "/echo?delay_ms=-1",
        "/echo?delay_ms=soon",
    ] {
        assert_eq!(answer(bad).status, 400, "{bad}");
    }
    assert_eq!(answer("/echo?msg=x&delay_ms=0").status, 200);
    // Faults never touch /health or /metrics.
    assert_eq!(answer("/health?status=500&delay_ms=99999").status, 200);
    assert_eq!(answer("/metrics?status=500").status, 200);
}

#[test]
fn delays_add_up_and_the_asked_one_is_capped() {
    let mut config = Config::on("127.0.0.1:0");
    config.max_delay_ms = 50;
    config.delay_ms = 7;
    let r = service(&config).handle(&Request::get("/echo?delay_ms=60000"));
    assert_eq!((r.status, r.delay), (200, Duration::from_millis(57)));
    let r = service(&config).handle(&Request::get("/echo?delay_ms=3&status=502"));
    assert_eq!((r.status, r.delay), (502, Duration::from_millis(10)));
    assert_eq!(
        service(&config).handle(&Request::get("/health")).delay,
        Duration::ZERO
    );
}

#[test]
fn work_longer_than_the_callers_budget_is_refused_at_once() {
    let mut config = Config::on("127.0.0.1:0");
    config.delay_ms = 300;
    let a = service(&config);
    let mut req = Request::get("/echo?msg=x");
    req.budget = Some(Duration::from_millis(299));
    let r = a.handle(&req);
    assert_eq!((r.status, r.delay), (504, Duration::ZERO));
    assert_eq!(
        r.headers,
        vec![(
            echo_core::http::DEADLINE_EXCEEDED_HEADER,
            "true".to_string()
        )]
    );
    req.budget = Some(Duration::from_millis(300));
    let r = a.handle(&req);
    assert_eq!((r.status, r.delay), (200, Duration::from_millis(300)));
    // Without a budget, as before; /health is never refused.
    assert_eq!(a.handle(&Request::get("/echo?msg=x")).status, 200);
    let mut health = Request::get("/health");
    health.budget = Some(Duration::ZERO);
    assert_eq!(a.handle(&health).status, 200);
}

#[test]
fn ready_fails_while_draining() {
    let a = service(&Config::on("127.0.0.1:0"));
    let mut req = Request::get("/ready");
    req.draining = true;
    let r = a.handle(&req);
    assert_eq!(
        (r.status, r.json_body()),
        (503, json!({"status": "draining"}))
    );
    req.path = "/health".to_string();
    assert_eq!(a.handle(&req).status, 200);
}

#[test]
fn fail_rate_is_reproducible_with_a_seed() {
    let mut config = Config::on("127.0.0.1:0");
    config.fail_rate = 0.3;
    config.seed = Some(42);
    let run = || {
        let a = service(&config);
        (0..200)
            .map(|_| a.handle(&Request::get("/echo?msg=x")).status)
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run());
    let failed = first.iter().filter(|s| **s == 500).count();
    assert!(
        (30..=90).contains(&failed),
        "{failed} of 200 failed at rate 0.3"
    );
    assert!(first.iter().all(|s| *s == 500 || *s == 200));
    config.fail_rate = 1.0;
    config.fail_status = 502;
    assert_eq!(service(&config).handle(&Request::get("/echo")).status, 502);
    assert_eq!(
        service(&config).handle(&Request::get("/health")).status,
        200
    );
}

#[test]
fn defaults_follow_the_contract() {
    let c = Config::default();
    assert_eq!((c.listen.as_str(), c.delay_ms), ("127.0.0.1:8080", 0));
    assert_eq!((c.log_level, c.max_connections), (LevelFilter::Info, None));
}
