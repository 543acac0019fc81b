//! B's own metrics about its calls to A, beside the request metrics every service has:
//! outcomes per replica, retries and the budget's refusals, probes, ejections and
//! re-resolutions as counters; and, read from the replica set at each scrape (so a replica
//! that left is simply not there), each replica's breaker state, cooldown, latency estimate
//! and calls in flight. The caller (`ServiceB`) owns them: the set tells its events
//! through [`Events`], and the per-replica gauges read the set it is given at registration.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use echo_core::metrics::{latency_histogram, AtomicHistogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::balance::{now_ns, Events, Replica, Replicas};
use crate::upstream::Pool;

/// Labels of `upstream_requests_total`: the replica that gave the final answer (`none` for a
/// call never made) and the outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) replica: String,
    pub(crate) outcome: &'static str,
}

/// Every `outcome` of `upstream_requests_total`: `ok` or a 503 `kind`.
const OUTCOMES: [&str; 7] = [
    "ok",
    "connect",
    "timeout",
    "status",
    "bad_response",
    "overloaded",
    "circuit_open",
];

/// Labels of the per-replica counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReplicaLabel {
    pub(crate) replica: String,
}

/// Labels of `upstream_probes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProbeLabels {
    pub(crate) replica: String,
    /// `health`: B's own GET of an ejected replica's `/ready`; `drain`: of a draining one;
    /// `latency`: a user's call sent, under a tight limit, to a replica the choice had been
    /// passing over (a revisit).
    pub(crate) kind: &'static str,
    pub(crate) result: &'static str,
}

/// Labels of `upstream_resolutions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

/// The counters and histograms of B's calls to A.
#[derive(Debug, Default)]
pub(crate) struct Upstream {
    pub(crate) outcomes: Family<Outcome, Counter>,
    pub(crate) retries: Counter,
    pub(crate) retries_denied: Counter,
    pub(crate) duration: UpstreamDuration,
    pub(crate) in_flight: Gauge,
    pub(crate) ejections: Family<ReplicaLabel, Counter>,
    pub(crate) drains: Family<ReplicaLabel, Counter>,
    pub(crate) probes: Family<ProbeLabels, Counter>,
    pub(crate) resolutions: Family<ReasonLabel, Counter>,
}

/// The call-duration histogram, with the buckets of every latency histogram.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamDuration(pub(crate) AtomicHistogram);

impl Default for UpstreamDuration {
    fn default() -> Self {
        UpstreamDuration(latency_histogram())
    }
}

impl Upstream {
    /// Registers every metric in `registry`; the gauges read `replicas` and `pool` at each
    /// scrape (while they live).
    pub(crate) fn register(
        &self,
        registry: &mut Registry,
        replicas: &Arc<Replicas>,
        pool: &Arc<Pool>,
    ) {
        registry.register(
            "upstream_requests",
            "Calls to Service A by the replica that answered last and outcome: ok, or the 503 kind",
            self.outcomes.clone(),
        );
        registry.register(
            "upstream_retries",
            "Calls to Service A tried a second time (another replica when one may take it)",
            self.retries.clone(),
        );
        registry.register(
            "upstream_retries_denied",
            "Retries the retry budget refused (at most its share of the calls of the last seconds)",
            self.retries_denied.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Duration of the calls to Service A that were made (not refused by the bulkhead or breakers)",
            self.duration.0.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Calls to Service A in flight",
            self.in_flight.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Replicas of Service A ejected by their breaker (probe failures included)",
            self.ejections.clone(),
        );
        registry.register(
            "upstream_drains",
            "Replicas of Service A seen draining (an answer with Connection: close, then /ready 503): avoided until their /ready says 200",
            self.drains.clone(),
        );
        registry.register(
            "upstream_probes",
            "Probes of replicas of Service A by kind (health: B's GET /ready of an ejected replica; drain: of a draining one; latency: a call sent to a replica passed over) and result",
            self.probes.clone(),
        );
        registry.register(
            "upstream_resolutions",
            "Resolutions of Service A's host names by reason: periodic, refused (a connect was refused), no_replica",
            self.resolutions.clone(),
        );
        registry.register_collector(Box::new(PerReplica(Arc::downgrade(replicas))));
        registry.register_collector(Box::new(Idle(Arc::downgrade(pool))));
    }
}

impl Events for Upstream {
    fn drained(&self, replica: SocketAddr) {
        self.drains
            .get_or_create(&ReplicaLabel {
                replica: replica.to_string(),
            })
            .inc();
    }

    fn ejected(&self, replica: SocketAddr) {
        self.ejections
            .get_or_create(&ReplicaLabel {
                replica: replica.to_string(),
            })
            .inc();
    }

    fn probed(&self, replica: SocketAddr, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.probes
            .get_or_create(&ProbeLabels {
                replica: replica.to_string(),
                kind,
                result,
            })
            .inc();
    }

    fn forgotten(&self, replica: SocketAddr) {
        let replica = replica.to_string();
        let label = ReplicaLabel {
            replica: replica.clone(),
        };
        self.ejections.remove(&label);
        self.drains.remove(&label);
        for outcome in OUTCOMES {
            self.outcomes.remove(&Outcome {
                replica: replica.clone(),
                outcome,
            });
        }
        for kind in ["health", "drain", "latency"] {
            for result in ["ok", "failed"] {
                self.probes.remove(&ProbeLabels {
                    replica: replica.clone(),
                    kind,
                    result,
                });
            }
        }
        log::info!(target: "service_b", "replica {replica} forgotten: it left long ago; its labels are gone from /metrics");
    }

    fn resolved(&self, why: &'static str) {
        self.resolutions
            .get_or_create(&ReasonLabel { reason: why })
            .inc();
    }
}

/// The per-replica gauges, read from the set at each scrape.
#[derive(Debug)]
struct PerReplica(Weak<Replicas>);

impl Collector for PerReplica {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(replicas) = self.0.upgrade() else {
            return Ok(());
        };
        let set = replicas.snapshot();
        let now = now_ns();
        gauge(&mut encoder, &set, "circuit_breaker_state",
            "The breaker of each replica of Service A: 0 closed, 1 open (ejected), 2 half-open (being probed)",
            |r| r.breaker.state_value())?;
        gauge(
            &mut encoder,
            &set,
            "upstream_ejection_cooldown_seconds",
            "How long the current ejection of each replica of Service A lasts (0 while in)",
            |r| r.breaker.cooldown().as_secs_f64(),
        )?;
        gauge(&mut encoder, &set, "upstream_latency_estimate_seconds",
            "The latency estimate the choice of replica uses: peak EWMA of answer times, or the wait of a call still without an answer",
            |r| r.load.estimate_ns(now) / 1e9)?;
        gauge(
            &mut encoder,
            &set,
            "upstream_replica_in_flight",
            "Calls in flight on each replica of Service A",
            |r| r.load.pending() as i64,
        )
    }
}

/// The idle connections to A, read from the pool at each scrape.
#[derive(Debug)]
struct Idle(Weak<Pool>);

impl Collector for Idle {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pool) = self.0.upgrade() else {
            return Ok(());
        };
        let help = "Idle connections to Service A kept for the next calls, all replicas together";
        let family = encoder.encode_descriptor(
            "upstream_idle_connections",
            help,
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(pool.idle() as i64).encode(family)
    }
}

/// One gauge family with a series per replica of `set`.
fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    set: &[Arc<Replica>],
    name: &str,
    help: &str,
    read: impl Fn(&Replica) -> N,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for replica in set {
        let label = ReplicaLabel {
            replica: replica.addr.to_string(),
        };
        ConstGauge::new(read(replica)).encode(family.encode_family(&label)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::OUTCOMES;
    use crate::error::CallError;
    use std::time::Duration;

    #[test]
    fn every_kind_is_an_outcome_whose_labels_a_departure_removes() {
        let ms = Duration::from_millis;
        let kinds = [
            CallError::Connect(String::new()),
            CallError::Timeout(ms(1)),
            CallError::RefusedForTime {
                told: ms(1),
                deadline: ms(1),
            },
            CallError::Status(500),
            CallError::BadResponse(String::new()),
            CallError::Overloaded(1),
        ];
        for e in &kinds {
            assert!(OUTCOMES.contains(&e.kind()), "{}", e.kind());
        }
        assert!(OUTCOMES.contains(&"circuit_open") && OUTCOMES.contains(&"ok"));
    }
}
