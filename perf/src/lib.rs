//! Benchmarks any Kafka-compatible broker with standard-shaped workloads and compares runs.
//!
//! * [`workload`]: OpenMessaging-Benchmark-shaped workload files.
//! * [`run`]: running one against a broker, measuring publish and end-to-end latency
//!   (coordinated omission corrected at fixed rates), throughput, the broker's CPU/RSS, with
//!   one of two drivers: [`librdkafka`] (the standard client) or [`native`] (a lean pipelined
//!   client on the same codec crate as the broker).
//! * [`stats`]: histograms and the JSON result.
//! * [`report`]: side-by-side markdown and SVG.
//! * [`cli`]: the command line (`ringtail-perf`, and `ringtail perf` in the broker binary).
//!
//! Architecture invariant: nothing here knows Ringtail; the client path is a standard client.

pub mod cli;
pub mod librdkafka;
pub mod native;
pub mod report;
pub mod run;
pub mod shared;
pub mod stats;
pub mod workload;
