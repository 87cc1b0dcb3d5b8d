//! A workload: what to send and how, in the shape of the OpenMessaging Benchmark's workload
//! files (TOML here). The standard ones ship in `perf/workloads/` and are also built in by name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub topic: String,
    pub partitions: i32,
    /// Bytes per message (at least 16: the send time and sequence travel in the payload).
    pub message_size: usize,
    pub producers: usize,
    pub consumers: usize,
    /// Messages per second over all producers; 0 means as fast as the broker accepts.
    #[serde(default)]
    pub rate: u64,
    pub duration_s: u64,
    #[serde(default)]
    pub warmup_s: u64,
    /// `all`, `1` or `0`.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// `none`, `gzip`, `snappy`, `lz4`, `zstd`.
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default)]
    pub linger_ms: u64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Consumers join one group (`subscribe`) or split the partitions among themselves
    /// (`assign`).
    #[serde(default = "default_subscribe")]
    pub subscribe: bool,
}

fn default_acks() -> String {
    "all".into()
}
fn default_compression() -> String {
    "none".into()
}
fn default_batch_size() -> usize {
    131072
}
fn default_subscribe() -> bool {
    true
}

/// The workloads in `perf/workloads/`, by name.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "1-topic-8-partitions-1kb",
        include_str!("../workloads/1-topic-8-partitions-1kb.toml"),
    ),
    (
        "fixed-rate-1000-1kb",
        include_str!("../workloads/fixed-rate-1000-1kb.toml"),
    ),
];

impl Workload {
    pub fn parse(text: &str) -> anyhow::Result<Workload> {
        let w: Workload = toml::from_str(text)?;
        w.validate()?;
        Ok(w)
    }

    /// A file path, or the name of a built-in workload.
    pub fn load(file_or_name: &str) -> anyhow::Result<Workload> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == file_or_name) {
            return Workload::parse(text);
        }
        let text = std::fs::read_to_string(file_or_name).map_err(|e| {
            let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            anyhow::anyhow!(
                "workload {file_or_name:?}: {e} (built in: {})",
                names.join(", ")
            )
        })?;
        Workload::parse(&text).map_err(|e| anyhow::anyhow!("workload {file_or_name}: {e}"))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.partitions >= 1, "partitions must be at least 1");
        anyhow::ensure!(
            self.message_size >= 16,
            "message_size must be at least 16 bytes"
        );
        anyhow::ensure!(self.producers >= 1, "producers must be at least 1");
        anyhow::ensure!(self.duration_s >= 1, "duration_s must be at least 1");
        anyhow::ensure!(
            ["all", "1", "0", "-1"].contains(&self.acks.as_str()),
            "acks must be all, 1 or 0"
        );
        anyhow::ensure!(
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()),
            "compression must be none, gzip, snappy, lz4 or zstd"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_workloads_parse_and_bad_ones_do_not() {
        for (name, _) in BUILT_IN {
            let w = Workload::load(name).unwrap();
            assert_eq!(&w.name, name);
        }
        let good = "name='x'\ntopic='t'\npartitions=1\nmessage_size=100\nproducers=1\nconsumers=1\nduration_s=1\n";
        let w = Workload::parse(good).unwrap();
        assert_eq!((w.rate, w.acks.as_str(), w.subscribe), (0, "all", true));
        assert!(Workload::parse(&good.replace("message_size=100", "message_size=8")).is_err());
        assert!(Workload::parse(&format!("{good}bogus=1\n")).is_err());
        assert!(Workload::parse(&format!("{good}acks='some'\n")).is_err());
        assert!(Workload::load("no-such-workload").is_err());
    }
}
