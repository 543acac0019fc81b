//! The metrics checked by Prometheus's own tools (Debian's `prometheus` package), against the
//! real binaries: `promtool check metrics` on A's and B's `/metrics` after real traffic (200s,
//! 503s of kind `status`, a replica that refuses connections); `promtool check config` on
//! `deploy/prometheus/prometheus.yml`; and a real Prometheus server on loopback scraping A and
//! B every second, whose query API must return the series for upstream outcomes and breaker
//! state per replica and the latency quantiles, and data for every query of the Grafana
//! dashboard `deploy/grafana/echo-dashboard.json`.
//!
//! Without `promtool` and `prometheus` the test says so and passes, unless
//! `ECHO_REQUIRE_PROMETHEUS` is set (`.ci/run` installs the package and sets it).

#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use echo_tests::{closed_port, get, scrape, spawn_a, spawn_b, try_send};
use serde_json::Value;

/// How long Prometheus may take to become ready, and each query to return what it should.
const LIMIT: Duration = Duration::from_secs(30);

/// The range Grafana's `$__rate_interval` stands for here (Prometheus scrapes every second).
const RATE_INTERVAL: &str = "30s";

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether promtool and prometheus are installed; without them the test is skipped, unless
/// CI requires them.
fn tools_installed() -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let have = runs("promtool") && runs("prometheus");
    if !have {
        assert!(
            std::env::var_os("ECHO_REQUIRE_PROMETHEUS").is_none(),
            "promtool and prometheus are required (ECHO_REQUIRE_PROMETHEUS is set) but not installed"
        );
        println!("SKIP: promtool or prometheus is not installed (apt-get install prometheus)");
    }
    have
}

/// Runs `promtool ARGS` with `input` on stdin; panics with its output unless it exits 0 and
/// prints no problem.
fn promtool(args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {said}");
    said
}

/// `/metrics` of a service, checked by `promtool check metrics` (a lint problem is printed and
/// makes it exit non-zero).
fn check_metrics(name: &str, addr: SocketAddr) -> String {
    let text = scrape(addr).unwrap_or_else(|| panic!("{name} /metrics: not a 200"));
    let said = promtool(&["check", "metrics"], text.as_bytes());
    assert!(
        said.trim().is_empty(),
        "promtool check metrics on {name}: {said}"
    );
    text
}

/// A query string value, percent-encoded (everything but the unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback with a config of its own in a temporary directory; killed,
/// reaped and its directory removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (name, target) every second and waits until its
    /// `/-/ready` answers 200: an external program with no other readiness signal, polled
    /// within [`LIMIT`].
    fn start(jobs: &[(&str, SocketAddr)]) -> Prometheus {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("echo-prometheus-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("temporary directory");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        fs::write(&config_file, &config).expect("write prometheus.yml");
        let config_path = config_file.to_str().expect("UTF-8 path");
        promtool(&["check", "config", config_path], b"");
        let addr = closed_port();
        let log = fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={config_path}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("run prometheus");
        let prometheus = Prometheus { child, dir, addr };
        let deadline = Instant::now() + LIMIT;
        loop {
            let reply = try_send(addr, b"GET /-/ready HTTP/1.0\r\nHost: prometheus\r\n\r\n");
            if reply.is_ok_and(|r| r.status == 200) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready at {addr} after {LIMIT:?}: {}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What Prometheus logged so far.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET` of its HTTP API as JSON (HTTP/1.0, so the answer is never chunked).
    fn api(&self, target: &str) -> Value {
        let raw = format!("GET {target} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
        let reply = try_send(self.addr, raw.as_bytes())
            .unwrap_or_else(|e| panic!("Prometheus {target}: {e}\n{}", self.log()));
        let json = reply.json();
        assert_eq!(
            json["status"],
            "success",
            "Prometheus {target}: HTTP {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        json["data"].clone()
    }

    /// The instant vector `promql` evaluates to now; panics if Prometheus refuses the query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` (a scrape a second) until its vector satisfies `done`, and returns it;
    /// panics with the last answer and the scrape targets' state after [`LIMIT`].
    fn wait_for(&self, promql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let result = self.query(promql);
            if done(&result) {
                return result;
            }
            if Instant::now() > deadline {
                let targets = self.api("/api/v1/targets");
                panic!(
                    "{promql} after {LIMIT:?}: {result:?}\ntargets: {targets}\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A series' label.
fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

/// A series' value (NaN when it is not a number).
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Whether the vector has a series with these labels, whose value satisfies `ok`.
fn has(result: &[Value], labels: &[(&str, &str)], ok: impl Fn(f64) -> bool) -> bool {
    result
        .iter()
        .any(|s| labels.iter().all(|(k, v)| label(s, k) == *v) && ok(value(s)))
}

/// Calls B's `/call-echo` until it stops; counts the answers by status.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    /// A call every 20 ms: a steady rate for Prometheus's `rate()` over the scrapes.
    fn start(b: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let _ = try_send(
                    b,
                    b"GET /call-echo?msg=scraped HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
                );
                thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The job names of `deploy/prometheus/prometheus.yml`, which the dashboard's `job=` matchers
/// and this test's own config use.
const JOBS: [&str; 2] = ["service-a", "service-b"];

#[test]
fn promtool_and_a_real_prometheus_accept_the_metrics_and_the_dashboard() {
    if !tools_installed() {
        return;
    }
    let started = Instant::now();

    // The Compose stack's scrape config is valid, and names the jobs the dashboard uses.
    let deploy_config = root().join("deploy/prometheus/prometheus.yml");
    let said = promtool(
        &["check", "config", deploy_config.to_str().expect("path")],
        b"",
    );
    assert!(said.contains("SUCCESS"), "{said}");
    let deploy_text = fs::read_to_string(&deploy_config).expect("read prometheus.yml");
    for job in JOBS {
        assert!(
            deploy_text.contains(&format!("job_name: {job}\n")),
            "{job} in {deploy_text}"
        );
    }

    // A fails 30 % of its /echo calls with a 500 (B retries elsewhere, then answers 503,
    // kind `status`, or `connect` from the retry); B's second replica refuses every
    // connection.
    let a = spawn_a(&["--fail-rate", "0.3", "--seed", "18"]);
    let refusing = closed_port();
    let b = spawn_b(
        &format!("http://{}", a.addr),
        &[
            "--service-a-url",
            &format!("http://{refusing}"),
            "--breaker-threshold",
            "2",
        ],
    );
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..200 {
        let reply = get(b.addr, "/call-echo?msg=hi");
        match reply.status {
            200 => ok += 1,
            503 => {
                // A 500 is retried on the other replica, which may still be in rotation
                // and refuse: the 503 says what its last attempt met.
                let kind = reply.json()["kind"].clone();
                assert!(kind == "status" || kind == "connect", "{:?}", reply.json());
                failed += 1;
            }
            status => panic!("B answered {status}: {:?}", reply.json()),
        }
        if ok >= 5 && failed >= 2 {
            break;
        }
    }
    assert!(ok >= 5 && failed >= 2, "{ok} answers 200, {failed} 503");

    // promtool lints both expositions.
    check_metrics("service_a", a.addr);
    let b_text = check_metrics("service_b", b.addr);
    for family in [
        "# TYPE upstream_requests_total counter",
        "# TYPE circuit_breaker_state gauge",
        "# TYPE http_request_duration_seconds histogram",
    ] {
        assert!(b_text.contains(family), "{family} in {b_text}");
    }

    // A real Prometheus scrapes both, while B keeps calling A.
    let prometheus = Prometheus::start(&[(JOBS[0], a.addr), (JOBS[1], b.addr)]);
    let _traffic = Traffic::start(b.addr);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let refusing = refusing.to_string();

    // Both targets are up: Prometheus parsed what they serve.
    prometheus.wait_for("up", |r| {
        has(r, &[("job", JOBS[0]), ("instance", &a_addr)], |v| v == 1.0)
            && has(r, &[("job", JOBS[1]), ("instance", &b_addr)], |v| v == 1.0)
    });

    // Upstream outcomes per replica: A's ok and status, under A's address.
    prometheus.wait_for("sum by (replica, outcome) (upstream_requests_total)", |r| {
        has(r, &[("replica", &a_addr), ("outcome", "ok")], |v| v >= 5.0)
            && has(r, &[("replica", &a_addr), ("outcome", "status")], |v| {
                v >= 2.0
            })
    });

    // Breaker state per replica: A's closed, the refusing replica ejected at some scrape.
    prometheus.wait_for("circuit_breaker_state", |r| {
        has(r, &[("job", JOBS[1]), ("replica", &a_addr)], |v| v == 0.0)
            && has(r, &[("replica", &refusing)], |v| (0.0..=2.0).contains(&v))
    });
    prometheus.wait_for(
        &format!("max_over_time(circuit_breaker_state{{replica=\"{refusing}\"}}[1m])"),
        |r| has(r, &[("replica", &refusing)], |v| v >= 1.0),
    );

    // Request latency from the histograms: p99 of each service and of B's calls to A.
    let p99 = format!(
        "histogram_quantile(0.99, sum by (job, le) \
         (rate(http_request_duration_seconds_bucket{{route=~\"/echo|/call-echo\"}}[{RATE_INTERVAL}])))"
    );
    let positive = |v: f64| v.is_finite() && v > 0.0;
    prometheus.wait_for(&p99, |r| {
        has(r, &[("job", JOBS[0])], positive) && has(r, &[("job", JOBS[1])], positive)
    });
    prometheus.wait_for(
        &format!(
            "histogram_quantile(0.99, sum by (le) \
             (rate(upstream_request_duration_seconds_bucket[{RATE_INTERVAL}])))"
        ),
        |r| r.iter().any(|s| positive(value(s))),
    );

    // Every query of the dashboard returns data.
    let dashboard_path = root().join("deploy/grafana/echo-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(&dashboard_path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_i64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut checked = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel's title");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: the dashboard's Prometheus"
        );
        let targets = panel["targets"].as_array().expect("a panel's targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a target's expr");
            let promql = expr.replace("$__rate_interval", RATE_INTERVAL);
            assert!(!promql.contains('$'), "{title}: unknown variable in {expr}");
            for job in promql.split("job=\"").skip(1) {
                let job = job.split('"').next().unwrap_or("");
                assert!(
                    JOBS.contains(&job),
                    "{title}: job {job:?} is scraped by no job"
                );
            }
            prometheus.wait_for(&promql, |r| r.iter().any(|s| value(s).is_finite()));
            checked.push(title);
        }
    }
    for title in [
        "Request rate per service",
        "B's 503s by kind",
        "Latency p50 / p99",
        "Breaker state per replica",
        "Upstream outcomes per replica",
    ] {
        assert!(checked.contains(&title), "no panel {title:?}: {checked:?}");
    }
    println!(
        "{} dashboard queries return data; {:.1}s",
        checked.len(),
        started.elapsed().as_secs_f64()
    );
}
