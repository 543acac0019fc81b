//! A latency histogram with no lock: prometheus-client's own takes a write lock on every
//! observation, and with many threads answering at once (the workers, and blocked handlers'
//! spares) that lock was contended
//! (a `futex` system call per contended request). Here each bucket, the count and the sum are
//! atomics, so an observation is three atomic additions; a scrape reads them one by one
//! (a scrape racing an observation may see it in the count and not yet in its bucket, as
//! with any lock-free exposition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of seconds over fixed buckets, cheap to clone (the clones share counts).
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending; the last bucket (`+Inf`) is implied.
    bounds: Vec<f64>,
    /// One count per bound, then `+Inf`.
    counts: Vec<AtomicU64>,
    /// The sum of observations, in nanoseconds (whole ns: adds without a compare loop).
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (ascending).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> AtomicHistogram {
        let bounds: Vec<f64> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            inner: Arc::new(Inner {
                bounds,
                counts,
                sum_ns: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let inner = &self.inner;
        let i = inner
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(inner.bounds.len());
        inner.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = (seconds.max(0.0) * 1e9) as u64;
        inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_their_bucket_and_encode_cumulatively() {
        let h = AtomicHistogram::new([0.001, 0.01]);
        for s in [0.0005, 0.001, 0.005, 5.0] {
            h.observe(s);
        }
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for line in [
            "t_bucket{le=\"0.001\"} 2",
            "t_bucket{le=\"0.01\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
            "t_sum 5.0065",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
