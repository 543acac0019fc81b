//! B's live page and `/replicas` over real sockets: served by default, both 404 with
//! `dashboard` off, and what `/replicas` says of real replicas of A.

#![forbid(unsafe_code)]

use echo_tests::{closed_port, get};
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
