//! Host tuning for Ringtail: `ringtail tune check | apply | revert | experiment`.
//!
//! * [`host`]: the machine as files under a root (`/`, or a fixture in tests).
//! * [`check`]: items (current, recommended, why, how to change) from procfs/sysfs;
//!   [`probe`]: those that need system calls (io_uring, limits, the WAL's device).
//! * [`apply`]: dry-run plan, apply with the previous values recorded, revert.
//! * [`experiment`]: sweeps a broker flag with `ringtail-perf` runs, A/B alternated.
//! * [`cli`]: the command line.
//!
//! Architecture invariant: `tuning` touches only files it listed in `check`; it knows the broker
//! only as a binary with flags and a Kafka port.

pub mod apply;
pub mod check;
pub mod cli;
pub mod experiment;
pub mod host;
pub mod item;
pub mod probe;
