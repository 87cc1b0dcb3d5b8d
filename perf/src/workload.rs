//! A workload: what to send and how, in the shape of the OpenMessaging Benchmark's workload
//! files (TOML here). The standard ones ship in `perf/workloads/` and are also built in by name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    /// The topic, or with `topics` > 1 the prefix of `<topic>-0`, `<topic>-1`, ...
    pub topic: String,
    /// Topics (each with `partitions` partitions); messages go round-robin over all of them.
    #[serde(default = "default_topics")]
    pub topics: usize,
    pub partitions: i32,
    /// Bytes per message value (at least 16: the send time and sequence travel in it).
    pub message_size: usize,
    /// When set, value sizes are spread evenly from `message_size` to this.
    #[serde(default)]
    pub message_size_max: Option<usize>,
    /// Message keys: `none` (partitions taken round-robin), `round-robin` (keys cycle over
    /// 10,000 values) or `random`; keyed messages go to murmur2(key) mod partitions, as with
    /// the Java client.
    #[serde(default = "default_keys")]
    pub keys: String,
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

fn default_topics() -> usize {
    1
}
fn default_keys() -> String {
    "none".into()
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
        if let Some(max) = self.message_size_max {
            anyhow::ensure!(
                max >= self.message_size,
                "message_size_max must be at least message_size"
            );
        }
        anyhow::ensure!(
            self.max_message_size() <= 64 << 20,
            "messages larger than 64 MiB are not a benchmark"
        );
        anyhow::ensure!(
            ["none", "round-robin", "random"].contains(&self.keys.as_str()),
            "keys must be none, round-robin or random"
        );
        anyhow::ensure!(
            (1..=1000).contains(&self.topics),
            "topics must be 1 to 1000"
        );
        anyhow::ensure!(
            self.partitions as i64 * self.topics as i64 <= 100_000,
            "at most 100000 partitions in all"
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

/// A well-mixed 64-bit hash of `i` (splitmix64): the same message gets the same size and key
/// in every driver and every run.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Kafka's murmur2 (the Java client's default partitioner hash).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes(c.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

impl Workload {
    pub fn max_message_size(&self) -> usize {
        self.message_size_max.unwrap_or(self.message_size)
    }

    /// The value size of message `i`.
    pub fn size_of(&self, i: u64) -> usize {
        match self.message_size_max {
            Some(max) if max > self.message_size => {
                self.message_size + (mix(i) % (max - self.message_size + 1) as u64) as usize
            }
            _ => self.message_size,
        }
    }

    /// The key of message `i`, if the workload uses keys.
    pub fn key_of(&self, i: u64) -> Option<Vec<u8>> {
        match self.keys.as_str() {
            "round-robin" => Some(format!("key-{}", i % 10_000).into_bytes()),
            "random" => Some(format!("key-{:016x}", mix(!i)).into_bytes()),
            _ => None,
        }
    }

    /// The topics' names.
    pub fn topic_names(&self) -> Vec<String> {
        if self.topics <= 1 {
            vec![self.topic.clone()]
        } else {
            (0..self.topics)
                .map(|t| format!("{}-{t}", self.topic))
                .collect()
        }
    }

    /// Topic-partitions in all (a slot is `topic index × partitions + partition`).
    pub fn slots(&self) -> usize {
        self.topics.max(1) * self.partitions as usize
    }

    /// Where message `i` goes, as a slot: topics round-robin; within a topic murmur2 of the key
    /// mod partitions (as the Java client), or round-robin without keys.
    pub fn slot_of(&self, i: u64) -> usize {
        let topics = self.topics.max(1) as u64;
        let topic = (i % topics) as usize;
        let partition = match self.key_of(i) {
            Some(k) => ((murmur2(&k) & 0x7fff_ffff) % self.partitions as u32) as usize,
            None => ((i / topics) % self.partitions as u64) as usize,
        };
        topic * self.partitions as usize + partition
    }

    /// (topic index, partition) of a slot.
    pub fn split_slot(&self, slot: usize) -> (usize, i32) {
        (
            slot / self.partitions as usize,
            (slot % self.partitions as usize) as i32,
        )
    }

    /// The value of message `i` from producer `producer`: its due time and sequence, then
    /// filler up to its size.
    pub fn payload(&self, filler: &[u8], i: u64, producer: usize, due_nanos: u64) -> Vec<u8> {
        let mut v = filler[..self.size_of(i)].to_vec();
        v[..8].copy_from_slice(&due_nanos.to_be_bytes());
        v[8..16].copy_from_slice(&(((producer as u64) << 48) | i).to_be_bytes());
        v
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
        assert!(Workload::parse(&format!("{good}keys='sometimes'\n")).is_err());
        assert!(Workload::parse(&format!("{good}message_size_max=50\n")).is_err());
    }

    #[test]
    fn sizes_keys_and_partitions() {
        let mut w = Workload::parse(
            "name='x'\ntopic='t'\npartitions=8\nmessage_size=100\nmessage_size_max=200\nproducers=1\nconsumers=1\nduration_s=1\n",
        )
        .unwrap();
        let sizes: Vec<usize> = (0..1000).map(|i| w.size_of(i)).collect();
        assert!(sizes.iter().all(|s| (100..=200).contains(s)));
        assert!(sizes.iter().any(|s| *s < 120) && sizes.iter().any(|s| *s > 180));
        assert_eq!(w.slot_of(9), 1, "no keys: round-robin");
        assert_eq!(w.key_of(3), None);
        w.keys = "round-robin".into();
        assert_eq!(w.key_of(10_003), Some(b"key-3".to_vec()));
        let hits = (0..800).fold([0; 8], |mut h, i| {
            h[w.slot_of(i)] += 1;
            h
        });
        assert!(
            hits.iter().all(|n| *n > 50),
            "keys spread over partitions: {hits:?}"
        );
        // Several topics: round-robin over all their partitions.
        let mut t = w.clone();
        t.keys = "none".into();
        t.topics = 3;
        assert_eq!(t.topic_names(), vec!["t-0", "t-1", "t-2"]);
        let slots: Vec<usize> = (0..24).map(|i| t.slot_of(i)).collect();
        let mut sorted = slots.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..24).collect::<Vec<_>>(),
            "every slot once in 24 messages"
        );
        assert_eq!(t.split_slot(17), (2, 1));
        let filler = vec![0u8; 200];
        let v = w.payload(&filler, 5, 2, 77);
        assert_eq!(v.len(), w.size_of(5));
        assert_eq!(u64::from_be_bytes(v[..8].try_into().unwrap()), 77);
        assert_eq!(
            u64::from_be_bytes(v[8..16].try_into().unwrap()),
            (2 << 48) | 5
        );
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's Utils.murmur2 (UtilsTest): "21" -> -973932308, "foobar" -> -790332482,
        // "a-little-bit-long-string" -> -985981536.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
    }
}
