//! B's live page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven through chromedriver's WebDriver HTTP API, with the kit's raw
//! HTTP client (no WebDriver crate), against the real binaries: three A's, each with its
//! admin listener, and one B over them. The page's own load control sends the calls. It
//! asserts on what the page shows (its replica rows), never on `/replicas` directly:
//! three replicas serving; one slowed through its admin listener shows a rising latency and
//! a falling share; one stopped shows ejected; restarted, it is probed back and serving.
//! And with its only replica refusing, the page says plainly that B can reach none.
//! A script error on the page fails the test. The screenshot is written to the test's
//! target directory, and to docs/live-page.png with ECHO_UPDATE_SCREENSHOT=1 (the README's).
//! Without chromium the test says so and passes, unless CI=true or ECHO_REQUIRE_CHROMIUM=1,
//! when it fails.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, try_send, Reply, Running, Signal};
use serde_json::{json, Value};

/// chromedriver on a free port, with one browser session.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ECHO_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1")
}

fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let body = body.map(Value::to_string).unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    try_send(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

impl Driver {
    /// None when chromium or chromedriver is missing (and not required).
    fn start() -> Option<Driver> {
        let found = |name: &str| Command::new(name).arg("--version").output().is_ok();
        let chromium = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|c| found(c));
        if !found("chromedriver") || chromium.is_none() {
            assert!(
                !required(),
                "chromium and chromedriver are required (CI=true or ECHO_REQUIRE_CHROMIUM=1) \
                 but not installed: apt-get install -y chromium chromium-driver"
            );
            println!("SKIP: chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver)");
            return None;
        }
        // A free port for chromedriver: bound and released (it cannot take port 0).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut driver = Driver {
            child,
            addr,
            session: String::new(),
        };
        // Its readiness signal: GET /status says ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = try_send(
                addr,
                format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if status.is_ok_and(|r| r.json()["value"]["ready"] == json!(true)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 20 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": which(chromium.unwrap_or("chromium")),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--no-default-browser-check"]
        }}}});
        let reply = request(addr, "POST", "/session", Some(&capabilities));
        let session = reply.json()["value"]["sessionId"]
            .as_str()
            .map(str::to_string);
        driver.session = session.unwrap_or_else(|| {
            panic!(
                "no session: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )
        });
        Some(driver)
    }

    /// A WebDriver command of this session; its `value`.
    fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let reply = request(self.addr, method, &path, body);
        let value = reply.json()["value"].clone();
        assert_eq!(reply.status, 200, "{method} {what}: {value}");
        value
    }

    fn goto(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })));
    }

    fn run(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn screenshot(&self) -> Vec<u8> {
        let png = self.command("GET", "screenshot", None);
        base64_decode(png.as_str().unwrap_or(""))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = try_send(
                self.addr,
                format!(
                    "DELETE {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                )
                .as_bytes(),
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The full path of a program (chromedriver wants the browser's), else the name.
fn which(name: &str) -> String {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .and_then(|p| p.map(|p| p.display().to_string()))
        .unwrap_or_else(|| name.to_string())
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, s)| n | u32::from(*s) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// What the page shows of one replica (its row's data attributes).
#[derive(Debug, Clone)]
struct Row {
    address: String,
    state: String,
    latency_ms: f64,
    share: f64,
}

/// What the page shows; every read also checks that no script error happened.
#[derive(Debug)]
struct Page {
    rows: Vec<Row>,
    banner: String,
    load: String,
}

impl Page {
    fn row(&self, address: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.address == address)
    }
}

const READ_PAGE: &str = r##"
  const rows = Array.from(document.querySelectorAll("#replicas tr[data-replica]")).map((tr) => ({
    address: tr.dataset.replica, state: tr.dataset.state,
    latency_ms: tr.dataset.latencyMs === "" ? -1 : Number(tr.dataset.latencyMs),
    share: Number(tr.dataset.share) }));
  return { errors: window.__pageErrors || ["window.__pageErrors is missing"], rows: rows,
    banner: document.getElementById("banner").textContent,
    load: document.getElementById("load-state").textContent };"##;

fn read(driver: &Driver) -> Page {
    let v = driver.run(READ_PAGE);
    assert_eq!(v["errors"], json!([]), "the page threw script errors");
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    Page {
        rows: rows
            .iter()
            .map(|r| Row {
                address: r["address"].as_str().unwrap_or("").to_string(),
                state: r["state"].as_str().unwrap_or("").to_string(),
                latency_ms: r["latency_ms"].as_f64().unwrap_or(-1.0),
                share: r["share"].as_f64().unwrap_or(-1.0),
            })
            .collect(),
        banner: v["banner"].as_str().unwrap_or("").to_string(),
        load: v["load"].as_str().unwrap_or("").to_string(),
    }
}

/// Reads the page every 250 ms until `done` holds; returns that page and how long it took.
fn wait_until(
    driver: &Driver,
    what: &str,
    limit: Duration,
    done: impl Fn(&Page) -> bool,
) -> (Page, Duration) {
    let started = Instant::now();
    loop {
        let page = read(driver);
        if done(&page) {
            println!(
                "{what}: after {:.1} s: {:?}",
                started.elapsed().as_secs_f64(),
                page.rows
            );
            return (page, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}; the page shows {page:#?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

fn put_faults(admin: SocketAddr, body: &str) {
    let raw = format!(
        "PUT /faults HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = try_send(admin, raw.as_bytes()).expect("PUT /faults");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// One A with its admin listener on loopback; returns it and the admin address.
fn start_a(listen: &str) -> (Running, SocketAddr) {
    let mut a = Running::start(
        "service_a",
        &["--listen", listen, "--admin-listen", "127.0.0.1:0"],
    );
    let line = a.wait_for("admin: GET and PUT http://", Duration::from_secs(10));
    let admin = line
        .rsplit("http://")
        .next()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line:?}"));
    (a, admin)
}

fn save_screenshot(png: &[u8]) -> PathBuf {
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    std::fs::write(&target, png).expect("write the screenshot");
    if std::env::var("ECHO_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/live-page.png");
        std::fs::write(&docs, png).expect("write docs/live-page.png");
    }
    target
}

#[test]
fn the_live_page_shows_a_slow_a_stopped_and_a_returning_replica() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let mut replicas: Vec<(Running, SocketAddr)> = (0..3).map(|_| start_a("127.0.0.1:0")).collect();
    let addrs: Vec<String> = replicas.iter().map(|(a, _)| a.addr.to_string()).collect();
    let mut b_args = vec![
        "--listen",
        "127.0.0.1:0",
        "--breaker-cooldown-ms",
        "500",
        "--breaker-max-cooldown-ms",
        "2000",
        "--slow-start-ms",
        "2000",
    ];
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    for url in &urls {
        b_args.extend(["--service-a-url", url.as_str()]);
    }
    let b = Running::start("service_b", &b_args);
    assert_eq!(
        get(b.addr, "/").header("Content-Type"),
        Some("text/html; charset=utf-8")
    );

    driver.goto(&format!("http://{}/", b.addr));
    // The page's own load control sends the calls: 40 a second.
    driver.run(
        r#"document.getElementById("load-rate").value = "40";
                  document.getElementById("load-button").click();"#,
    );
    let serving = |p: &Page| p.rows.len() == 3 && p.rows.iter().all(|r| r.state == "serving");
    let (page, _) = wait_until(
        &driver,
        "three replicas serving",
        Duration::from_secs(20),
        |p| serving(p) && p.rows.iter().all(|r| r.share > 0.1),
    );
    assert!(page.load.contains("sending 40 calls/s"), "{}", page.load);
    assert_eq!(page.banner, "");

    // Slowed through its admin listener: its latency rises and its share falls. B does not
    // wait 300 ms to learn it: a try on it is cut at B's per-try limit (at least 20 ms for a
    // revisit) and retried elsewhere, so its estimate rises to that limit or beyond.
    let slow = addrs[0].clone();
    let before = page.row(&slow).cloned().expect("its row");
    put_faults(replicas[0].1, r#"{"delay_ms": 300}"#);
    let (page, took) = wait_until(
        &driver,
        "the slowed replica's latency up, share down",
        Duration::from_secs(10),
        |p| {
            p.row(&slow).is_some_and(|r| {
                r.latency_ms >= 15.0
                    && r.latency_ms > before.latency_ms * 2.0
                    && r.share < before.share * 0.75
            })
        },
    );
    let after = page.row(&slow).cloned().expect("its row");
    println!(
        "slowed {slow}: latency {:.1} -> {:.1} ms, share {:.2} -> {:.2}, in {:.1} s",
        before.latency_ms,
        after.latency_ms,
        before.share,
        after.share,
        took.as_secs_f64()
    );
    put_faults(replicas[0].1, r#"{"delay_ms": 0}"#);

    // Stopped: ejected.
    let stopped = addrs[1].clone();
    let (a, _) = replicas.remove(1);
    a.signal(Signal::Int);
    let (code, _) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    wait_until(
        &driver,
        "the stopped replica ejected",
        Duration::from_secs(10),
        |p| p.row(&stopped).is_some_and(|r| r.state == "ejected"),
    );
    let shot = save_screenshot(&driver.screenshot());
    println!("screenshot: {}", shot.display());

    // Back on the same address: probed back by B, then serving (after its slow start).
    let back = start_a(&stopped);
    wait_until(
        &driver,
        "the returning replica serving again",
        Duration::from_secs(20),
        |p| p.row(&stopped).is_some_and(|r| r.state == "serving"),
    );
    replicas.push(back);
    driver.run(r#"document.getElementById("load-button").click();"#);
    let page = read(&driver);
    assert_eq!(page.load, "Off.");
    assert_eq!(page.rows.len(), 3);
}

#[test]
fn the_live_page_says_plainly_when_b_can_reach_no_replica() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let closed = format!("http://{}", echo_tests::closed_port());
    let b = Running::start(
        "service_b",
        &["--listen", "127.0.0.1:0", "--service-a-url", &closed],
    );
    driver.goto(&format!("http://{}/", b.addr));
    driver.run(
        r#"document.getElementById("load-rate").value = "20";
           document.getElementById("load-button").click();"#,
    );
    let (page, _) = wait_until(&driver, "the banner", Duration::from_secs(15), |p| {
        p.rows.len() == 1 && p.rows[0].state == "ejected" && !p.banner.is_empty()
    });
    assert!(
        page.banner
            .starts_with("B cannot reach any replica of Service A"),
        "{}",
        page.banner
    );
    let failed = driver
        .run(r##"return document.querySelectorAll("#failures tr[data-request-id]").length;"##);
    assert!(
        failed.as_u64() >= Some(5),
        "the failed calls are listed: {failed}"
    );
}
