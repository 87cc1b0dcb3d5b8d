//! Latency histograms and the figures a run reports.
//!
//! Coordinated omission: at a fixed rate, message i is *due* at `start + i / rate`; its latency
//! counts from that moment, not from when a stalled producer finally got to send it. A broker
//! that stalls for a second therefore shows a second of latency on every message that should
//! have gone out meanwhile, as a user would experience it.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// When message `index` is due: evenly spaced at `rate` per second from the start; at rate 0
/// (as fast as possible) it is due when it is actually sent.
pub fn due_offset(index: u64, rate: u64, sent_at: Duration) -> Duration {
    if rate == 0 {
        sent_at
    } else {
        Duration::from_nanos((index as u128 * 1_000_000_000 / rate as u128) as u64)
    }
}

/// Records `latency_us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, latency_us: u64) {
    let _ = h.record(latency_us.clamp(1, h.high()));
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A run's result: what `ringtail-perf run --out` writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub label: String,
    pub workload: crate::workload::Workload,
    pub driver: String,
    pub bootstrap: String,
    /// Measured seconds (after the warm-up).
    pub duration_s: f64,
    pub produced_messages: u64,
    pub produced_bytes: u64,
    pub consumed_messages: u64,
    pub consumed_bytes: u64,
    /// Produced messages not consumed by the end (0 in a healthy run).
    pub missing_messages: u64,
    pub errors: u64,
    /// Batches the native driver resent after a retriable error (such as a full WAL); librdkafka
    /// retries internally and does not report them, so its runs show 0.
    #[serde(default)]
    pub retries: u64,
    /// The first distinct error messages (at most 10).
    #[serde(default)]
    pub error_messages: Vec<String>,
    /// Why the run did not complete cleanly (None for a healthy run).
    #[serde(default)]
    pub failure: Option<String>,
    pub publish_latency: Percentiles,
    pub end_to_end_latency: Percentiles,
    pub publish_msgs_per_s: f64,
    pub publish_mb_per_s: f64,
    pub consume_msgs_per_s: f64,
    pub consume_mb_per_s: f64,
    /// Produce throughput per second of the run (msgs/s), for the throughput-over-time plot.
    pub publish_msgs_per_s_series: Vec<f64>,
    pub broker_cpu_s: Option<f64>,
    pub broker_peak_rss_mib: Option<f64>,
    /// CPU seconds of ringtail-perf itself during the run (the client's cost).
    #[serde(default)]
    pub client_cpu_s: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_shows_on_every_message_due_during_it() {
        // 1000 msgs/s for 1 s; the broker stalls for 200 ms at t = 500 ms: messages due in the
        // stall are sent (and acknowledged 100 µs later) only when it ends.
        let rate = 1000;
        let mut corrected = histogram();
        let mut naive = histogram();
        for i in 0..1000u64 {
            let due = due_offset(i, rate, Duration::ZERO);
            let sent = if (500..700).contains(&i) {
                Duration::from_millis(700)
            } else {
                due
            };
            let acked = sent + Duration::from_micros(100);
            record(&mut corrected, (acked - due).as_micros() as u64);
            record(&mut naive, (acked - sent).as_micros() as u64);
        }
        let (c, n) = (Percentiles::of(&corrected), Percentiles::of(&naive));
        assert_eq!(
            n.p99_us, 100,
            "measured from the send, the stall is invisible"
        );
        assert!(
            c.p99_us >= 190_000,
            "corrected p99 {} shows the stall",
            c.p99_us
        );
        assert!(c.max_us >= 200_000 && c.p50_us <= 101);
        // As fast as possible: due when sent.
        assert_eq!(
            due_offset(7, 0, Duration::from_millis(3)),
            Duration::from_millis(3)
        );
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }
}
