//! `GET /metrics` in the Prometheus text format (version 0.0.4, the format every Prometheus
//! and `promtool check metrics` read): the request counters and latency histogram every
//! service has, recorded by the server core (`server::app`) for each answer, plus whatever a service registers itself
//! before it starts.
//!
//! prometheus-client encodes OpenMetrics, whose counter family is named without `_total`
//! (`# TYPE http_requests counter`, then `http_requests_total 3`); read as the text format,
//! promtool sees a family with no samples and an untyped `http_requests_total` without help.
//! `text_format` names such families by their samples and drops `# EOF`.

use std::collections::HashSet;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use crate::histogram::AtomicHistogram;
use crate::http::Response;

/// Labels of `http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

/// Labels of `http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

/// Latency buckets from 0.1 ms to 10 s, shared by every latency histogram.
pub fn latency_histogram() -> AtomicHistogram {
    AtomicHistogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

/// One service's metrics. Label values are bounded: a route is one of the service's routes
/// or `other`, a method one of the standard ones or `OTHER`, a status one of
/// [`OWN_STATUSES`] or its class (`4xx`), so no client can grow them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, AtomicHistogram>,
    refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The metrics every service has, in a registry the service may add its own to.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, AtomicHistogram>::new_with_constructor(
            latency_histogram as fn() -> AtomicHistogram,
        );
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time from receiving a request to having written its answer",
            duration.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed at once: --max-connections were open",
            refused.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            refused,
        }
    }

    /// Where a service registers its own metrics, before it starts serving.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records one answered request (the server core calls it for each answer).
    pub fn observe(&self, method: &str, route: Option<&'static str>, status: u16, seconds: f64) {
        let method = known_method(method);
        let route = route.unwrap_or("other");
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: status_label(status),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    /// Records a connection refused over the limit: it never reaches a handler, so it is in
    /// no request count, and an operator needs to see that the limit is being hit.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// The `/metrics` answer.
    pub fn render(&self) -> Response {
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
            Ok(()) => Response::text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                text_format(&body),
            ),
            Err(_) => Response::error(500, "Could not encode metrics"),
        }
    }
}

/// The Prometheus text format of an OpenMetrics exposition from prometheus-client: a
/// counter's `# HELP` and `# TYPE` name its samples (`…_total`), `# UNIT` and `# EOF` go (the
/// text format has neither); samples are the same in both.
fn text_format(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 8 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(prefix);
                text.push_str(name);
                if counters.contains(name) {
                    text.push_str("_total");
                }
                text.push(' ');
                text.push_str(tail);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// The statuses the services and their HTTP core answer by themselves, each its own label
/// value. Any other (A's `?status=` and `--fail-status` may ask for any from 200 to 599) is
/// counted under its class, `2xx` to `5xx`: 16 + 4 values at most, where A's parameter made
/// up to 400 per method and route.
pub const OWN_STATUSES: [u16; 16] = [
    200, 204, 400, 404, 405, 408, 413, 414, 417, 429, 431, 500, 502, 503, 504, 505,
];

/// The `status` label of `status`: itself if one of [`OWN_STATUSES`], else its class.
fn status_label(status: u16) -> &'static str {
    const OWN: [&str; 16] = [
        "200", "204", "400", "404", "405", "408", "413", "414", "417", "429", "431", "500", "502",
        "503", "504", "505",
    ];
    match OWN_STATUSES.iter().position(|s| *s == status) {
        Some(i) => OWN[i],
        None => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
    }
}

fn known_method(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.observe("GET", Some("/echo"), 200, 0.001);
        metrics.observe("GET", Some("/echo"), 200, 0.002);
        metrics.observe("BREW", None, 404, 0.001);
        let text = metrics.render().body;
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/echo",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{method="OTHER",route="other",status="404"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_count{method="GET",route="/echo"} 2"#),
            "{text}"
        );
        assert!(text.contains("# HELP http_requests_total HTTP requests answered.\n"));
        assert!(text.contains("# TYPE http_requests_total counter\n"));
        assert!(text.contains("# TYPE http_request_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn a_status_no_service_answers_by_itself_is_counted_under_its_class() {
        let metrics = Metrics::new();
        for status in 200..=599 {
            metrics.observe("GET", Some("/echo"), status, 0.001);
        }
        let text = metrics.render().body;
        let series = text
            .lines()
            .filter(|l| l.starts_with("http_requests_total{"))
            .count();
        assert_eq!(series, OWN_STATUSES.len() + 4, "{text}");
        for (label, n) in [
            ("503", 1),
            ("429", 1),
            ("2xx", 98),
            ("3xx", 100),
            ("5xx", 95),
        ] {
            let sample = format!(r#"{{method="GET",route="/echo",status="{label}"}} {n}"#);
            assert!(text.contains(&sample), "{sample} in {text}");
        }
    }
}
