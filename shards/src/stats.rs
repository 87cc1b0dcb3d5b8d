//! Counters and histograms a shard writes and another thread reads (a metrics endpoint): relaxed
//! atomics, no locks, a fixed set of buckets. Only the owning shard writes, so a reader sees
//! each value whole, at worst a moment old.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency bucket bounds in seconds (Prometheus `le`), 50 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Size bucket bounds in bytes, 4 KiB to 256 MiB.
pub const SIZE_BOUNDS: &[f64] = &[
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    8388608.0,
    16777216.0,
    33554432.0,
    67108864.0,
    268435456.0,
];

/// A histogram over fixed bucket bounds (values above the last bound count in `+Inf` only).
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum of observed values, in millionths (µs for latencies).
    sum_micro: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS)
    }

    pub fn sizes() -> Histogram {
        Histogram::new(SIZE_BOUNDS)
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micro
            .fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// (bound, cumulative count) per bucket, then the total count and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.buckets.iter())
            .map(|(b, n)| {
                cumulative += n.load(Relaxed);
                (*b, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Relaxed).max(cumulative),
            sum: self.sum_micro.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Adds another snapshot over the same bounds (several shards into one series).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.1 += b.1;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// Counts one in a gauge while it lives (every way out of the scope, cancellation included).
pub struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    pub fn enter(gauge: &'a AtomicU64) -> Held<'a> {
        gauge.fetch_add(1, Relaxed);
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_overflow_counts_only_in_the_total() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_micros(40)); // ≤ 50 µs
        h.observe_duration(Duration::from_micros(50)); // ≤ 50 µs (bounds are inclusive)
        h.observe_duration(Duration::from_millis(3)); // ≤ 5 ms
        h.observe_duration(Duration::from_secs(60)); // beyond 10 s
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.00005, 2));
        assert_eq!(s.buckets[5], (0.0025, 2));
        assert_eq!(s.buckets[6], (0.005, 3));
        assert_eq!(s.buckets.last().unwrap().1, 3);
        assert_eq!(s.count, 4);
        assert!((s.sum - 60.00309).abs() < 1e-6, "{}", s.sum);
        let mut two = s.clone();
        two.merge(&s);
        assert_eq!((two.count, two.buckets[6].1), (8, 6));
    }
}
