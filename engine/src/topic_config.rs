//! Topic configs: which names are known, which are honoured, their defaults and validation.

use std::collections::BTreeMap;

/// The configs that change what the broker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Largest record batch accepted (max.message.bytes).
    pub max_message_bytes: usize,
    /// Batches older than this (by max timestamp) are removed; -1 keeps them forever.
    pub retention_ms: i64,
    /// Oldest batches are removed while the partition holds more; -1 means no bound.
    pub retention_bytes: i64,
    /// true: the broker stamps each batch with its append time (LogAppendTime).
    pub log_append_time: bool,
    /// `durability=object`: a produce is acknowledged only once its batches are in a committed
    /// object (no local state at all); `wal` (default): once they are in the WAL ring.
    pub durability_object: bool,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            max_message_bytes: 1_048_588,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            log_append_time: false,
            durability_object: false,
        }
    }
}

/// How the broker treats a config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Changes broker behaviour.
    Honoured,
    /// Accepted and reported so that tools and scripts keep working; it has no effect here
    /// (one broker, durability from the log design, no segments).
    AcceptedNoEffect,
}

/// Every topic config name Ringtail accepts, with its default as Kafka reports it.
pub const KNOWN: &[(&str, &str, Support)] = &[
    ("cleanup.policy", "delete", Support::Honoured),
    ("durability", "wal", Support::Honoured),
    ("compression.type", "producer", Support::Honoured),
    ("max.message.bytes", "1048588", Support::Honoured),
    ("message.timestamp.type", "CreateTime", Support::Honoured),
    ("retention.bytes", "-1", Support::Honoured),
    ("retention.ms", "604800000", Support::Honoured),
    ("delete.retention.ms", "86400000", Support::AcceptedNoEffect),
    ("file.delete.delay.ms", "60000", Support::AcceptedNoEffect),
    (
        "flush.messages",
        "9223372036854775807",
        Support::AcceptedNoEffect,
    ),
    ("flush.ms", "9223372036854775807", Support::AcceptedNoEffect),
    ("index.interval.bytes", "4096", Support::AcceptedNoEffect),
    (
        "message.timestamp.after.max.ms",
        "9223372036854775807",
        Support::AcceptedNoEffect,
    ),
    (
        "message.timestamp.before.max.ms",
        "9223372036854775807",
        Support::AcceptedNoEffect,
    ),
    (
        "min.cleanable.dirty.ratio",
        "0.5",
        Support::AcceptedNoEffect,
    ),
    ("min.compaction.lag.ms", "0", Support::AcceptedNoEffect),
    ("min.insync.replicas", "1", Support::AcceptedNoEffect),
    ("preallocate", "false", Support::AcceptedNoEffect),
    ("segment.bytes", "1073741824", Support::AcceptedNoEffect),
    ("segment.index.bytes", "10485760", Support::AcceptedNoEffect),
    ("segment.jitter.ms", "0", Support::AcceptedNoEffect),
    ("segment.ms", "604800000", Support::AcceptedNoEffect),
    (
        "unclean.leader.election.enable",
        "false",
        Support::AcceptedNoEffect,
    ),
];

impl TopicConfig {
    /// Validates explicitly set configs and derives the effective settings.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<TopicConfig, String> {
        let mut c = TopicConfig::default();
        for (name, value) in map {
            if !KNOWN.iter().any(|(n, _, _)| n == name) {
                return Err(format!("unknown topic config {name:?}"));
            }
            let int = |min: i64| -> Result<i64, String> {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|v| *v >= min)
                    .ok_or_else(|| format!("{name}={value:?} must be an integer >= {min}"))
            };
            match name.as_str() {
                "max.message.bytes" => c.max_message_bytes = int(0)?.min(i32::MAX as i64) as usize,
                "retention.ms" => c.retention_ms = int(-1)?,
                "retention.bytes" => c.retention_bytes = int(-1)?,
                "durability" => {
                    c.durability_object = match value.as_str() {
                        "wal" => false,
                        "object" => true,
                        _ => return Err(format!("{name}={value:?} must be wal or object")),
                    }
                }
                "message.timestamp.type" => {
                    c.log_append_time = match value.as_str() {
                        "CreateTime" => false,
                        "LogAppendTime" => true,
                        _ => return Err(format!("{name}={value:?} must be CreateTime or LogAppendTime")),
                    }
                }
                "cleanup.policy" if value != "delete" => {
                    return Err(format!("{name}={value:?}: only \"delete\" is supported (no compaction)"))
                }
                "compression.type" if value != "producer" => {
                    return Err(format!(
                        "{name}={value:?}: only \"producer\" is supported (batches are stored as the producer compressed them)"
                    ))
                }
                _ => {}
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn honoured_configs_take_effect() {
        let c = TopicConfig::from_map(&map(&[
            ("max.message.bytes", "2097152"),
            ("retention.bytes", "1000"),
            ("message.timestamp.type", "LogAppendTime"),
            ("segment.bytes", "1000"),
        ]))
        .unwrap();
        assert_eq!(c.max_message_bytes, 2097152);
        assert_eq!(c.retention_bytes, 1000);
        assert!(c.log_append_time);
    }

    #[test]
    fn unsupported_values_are_refused() {
        for (k, v) in [
            ("cleanup.policy", "compact"),
            ("compression.type", "zstd"),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("message.timestamp.type", "Now"),
            ("nope", "1"),
        ] {
            assert!(TopicConfig::from_map(&map(&[(k, v)])).is_err(), "{k}={v}");
        }
    }
}
