//! Benchmarks any Kafka-compatible broker with standard-shaped workloads and compares runs.
//!
//! * [`workload`]: OpenMessaging-Benchmark-shaped workload files.
//! * [`run`]: running one against a broker with librdkafka, measuring publish and end-to-end
//!   latency (coordinated omission corrected at fixed rates), throughput, the broker's CPU/RSS.
//! * [`stats`]: histograms and the JSON result.
//! * [`report`]: side-by-side markdown and SVG.
//!
//! Architecture invariant: nothing here knows Ringtail; the client path is a standard client.

pub mod report;
pub mod run;
pub mod stats;
pub mod workload;
