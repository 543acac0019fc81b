//! B's live page and `/replicas` over real sockets: served by default, both 404 with
//! `dashboard` off, and what `/replicas` says of real replicas of A.

#![forbid(unsafe_code)]

use echo_tests::{closed_port, get, get_with};
use serde_json::{json, Value};
use service_b::{spawn, Config};

fn b(url: &str, dashboard: bool) -> echo_core::ServerHandle {
    let mut config = Config::on("127.0.0.1:0", url);
    config.dashboard = dashboard;
    spawn(config).expect("start service_b")
}

#[test]
fn the_page_is_served_self_contained_and_off_means_404() {
    let url = format!("http://{}", closed_port());
    let on = b(&url, true);
    let page = get(on.addr(), "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
    let csp = page.header("Content-Security-Policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.starts_with("<!doctype html>") && html.contains("fetch(\"/replicas\""));
    assert_eq!(get(on.addr(), "/index.html").status, 404);

    let off = b(&url, false);
    for path in ["/", "/replicas"] {
        let r = get(off.addr(), path);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (404, Some("Not found")),
            "{path}"
        );
    }
    assert_eq!(get(off.addr(), "/health").status, 200);
}

fn call(b: std::net::SocketAddr, id: &str) -> u16 {
    get_with(b, "/call-echo?msg=hi", &format!("X-Request-Id: {id}\r\n")).status
}

#[test]
fn replicas_shows_a_live_replica_a_refusing_one_and_the_calls() {
    let a = service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("start service_a");
    let closed = closed_port();
    let mut config = Config::on("127.0.0.1:0", &a.url());
    config.service_a_urls.push(format!("http://{closed}"));
    config.breaker_cooldown_ms = 60_000;
    let b = spawn(config).expect("start service_b");
    // Every call ends 200: a refused connect is retried on the live replica.
    for i in 0..30 {
        assert_eq!(call(b.addr(), &format!("ok-{i}")), 200);
    }
    let doc = get(b.addr(), "/replicas");
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("Content-Type"), Some("application/json"));
    let doc = doc.json();
    let replicas = doc["replicas"].as_array().cloned().unwrap_or_default();
    assert_eq!(replicas.len(), 2, "{doc}");
    let by = |addr: String| {
        replicas
            .iter()
            .find(|r| r["address"] == json!(addr))
            .cloned()
    };
    let live = by(a.addr().to_string()).unwrap_or_default();
    let dead = by(closed.to_string()).unwrap_or_default();
    assert_eq!(live["address"], json!(a.addr().to_string()));
    assert_eq!(live["from"], json!(a.url()));
    assert!(
        matches!(live["state"].as_str(), Some("serving" | "slow_start")),
        "{live}"
    );
    assert!(live["outcomes_60s"]["ok"].as_u64() >= Some(25), "{live}");
    assert!(live["calls_per_s"].as_f64() > Some(0.0), "{live}");
    assert!(live["latency_ms"].as_f64() > Some(0.0), "{live}");
    // B moved away from the refusing replica at once (its estimate took the failure's
    // penalty, half the deadline), so it may not have failed the five times that eject.
    let refused = dead["outcomes_60s"]["connect"].as_u64().unwrap_or(0);
    assert!((1..=5).contains(&refused), "{dead}");
    assert!(dead["latency_ms"].as_f64() >= Some(999.0), "{dead}");
    assert!(
        matches!(dead["state"].as_str(), Some("serving" | "ejected")),
        "{dead}"
    );
    let service_b = &doc["service_b"];
    assert_eq!(service_b["outcomes_60s"]["ok"], json!(30));
    assert_eq!(service_b["retry_budget"]["retries_60s"], json!(refused));
    assert_eq!(service_b["bulkhead"]["max_inflight"], json!(64));
    let per_second = service_b["per_second"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ok: u64 = per_second
        .iter()
        .filter_map(|s| s["outcomes"]["ok"].as_u64())
        .sum();
    assert_eq!((per_second.len(), ok), (60, 30));
    assert!(per_second.iter().any(|s| s["p99_ms"].as_f64().is_some()));
    assert_eq!(doc["recent_failures"], json!([]));
}

#[test]
fn replicas_remembers_the_last_20_failed_calls_and_says_when_none_is_usable() {
    let closed = closed_port();
    let mut config = Config::on("127.0.0.1:0", &format!("http://{closed}"));
    config.breaker_cooldown_ms = 60_000;
    let b = spawn(config).expect("start service_b");
    for i in 0..22 {
        assert_eq!(call(b.addr(), &format!("fail-{i}")), 503);
    }
    let doc = get(b.addr(), "/replicas").json();
    let failures = doc["recent_failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ids: Vec<&str> = failures
        .iter()
        .filter_map(|f| f["request_id"].as_str())
        .collect();
    let want: Vec<String> = (2..22).map(|i| format!("fail-{i}")).collect();
    assert_eq!(ids, want);
    // Five refusals (fail-0 to fail-4) eject the only replica; then calls fail at once.
    let first: &Value = &failures[0];
    assert_eq!(first["kind"], json!("connect"), "{first}");
    assert_eq!(first["replica"], json!(closed.to_string()));
    assert!(first["details"]
        .as_str()
        .is_some_and(|d| d.starts_with("Connection error: ")));
    let last = &failures[19];
    assert_eq!(
        (last["kind"].clone(), last["replica"].clone()),
        (json!("circuit_open"), Value::Null),
        "{last}"
    );
    assert_eq!(doc["replicas"][0]["state"], json!("ejected"));
    let outcomes = &doc["service_b"]["outcomes_60s"];
    assert_eq!(
        (
            outcomes["connect"].clone(),
            outcomes["circuit_open"].clone()
        ),
        (json!(5), json!(17)),
        "{outcomes}"
    );
    let later = failures[3]["details"].as_str().unwrap_or("");
    assert!(
        later.starts_with("Circuit open after 5 failures"),
        "{later}"
    );
}
