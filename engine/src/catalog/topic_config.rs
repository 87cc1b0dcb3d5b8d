//! Topic configs: which names are known, which are honoured, their defaults and validation.

use std::collections::BTreeMap;

use ringtail_netio::codec::{self, Codec, Target};

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
    /// What a produce's acknowledgement waits for (`durability`).
    pub durability: Durability,
    /// `min.insync.replicas`: copies (the owner's included) an `acks=all` produce to a
    /// `durability=replicated` topic needs in sync; no effect on the other modes.
    pub min_insync_replicas: usize,
    /// `unclean.leader.election.enable`: a `durability=replicated` partition whose owner died
    /// with every in-sync follower down may open on another broker, losing what only those
    /// copies held (its slot opens so once every replicated partition on it permits it).
    pub unclean_leader_election: bool,
    /// `compression.type` naming a codec: batches in another codec are recompressed into it
    /// at produce, at that codec's `compression.<codec>.level`. None: `producer` (stored as
    /// sent).
    pub compression: Option<Target>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            max_message_bytes: 1_048_588,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            log_append_time: false,
            durability: Durability::Wal,
            min_insync_replicas: MIN_INSYNC_REPLICAS_DEFAULT,
            unclean_leader_election: false,
            compression: None,
        }
    }
}

/// `durability`: what a produce's acknowledgement waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `wal` (default): the batches are in the owner's WAL ring.
    Wal,
    /// `object`: the batches are in a committed object (no local state at all).
    Object,
    /// `replicated`: the batches are in the owner's WAL ring and in the replica rings of the
    /// in-sync followers (`acks=all`; ARCHITECTURE.md, "Replicated WAL", R1).
    Replicated,
}

impl Durability {
    pub const COUNT: usize = 3;
    pub const ALL: [Durability; Durability::COUNT] =
        [Durability::Wal, Durability::Object, Durability::Replicated];

    pub fn index(self) -> usize {
        self as usize
    }

    /// As the topic config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Wal => "wal",
            Durability::Object => "object",
            Durability::Replicated => "replicated",
        }
    }

    pub fn from_name(name: &str) -> Option<Durability> {
        Durability::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// `min.insync.replicas` unless a topic sets it (the broker default of issue 19).
pub const MIN_INSYNC_REPLICAS_DEFAULT: usize = 2;

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
    ("compression.gzip.level", "-1", Support::Honoured),
    ("compression.lz4.level", "9", Support::Honoured),
    ("compression.zstd.level", "3", Support::Honoured),
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
    // Deprecated in Kafka 3.x (ignored there with record format v2), removed in 4.0; clients
    // and tools of the 3.x era still set them (librdkafka's test 0092).
    (
        "message.downconversion.enable",
        "true",
        Support::AcceptedNoEffect,
    ),
    (
        "message.format.version",
        "3.0-IV1",
        Support::AcceptedNoEffect,
    ),
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
    ("min.insync.replicas", "2", Support::Honoured),
    ("preallocate", "false", Support::AcceptedNoEffect),
    ("segment.bytes", "1073741824", Support::AcceptedNoEffect),
    ("segment.index.bytes", "10485760", Support::AcceptedNoEffect),
    ("segment.jitter.ms", "0", Support::AcceptedNoEffect),
    ("segment.ms", "604800000", Support::AcceptedNoEffect),
    ("unclean.leader.election.enable", "false", Support::Honoured),
];

impl TopicConfig {
    /// Validates explicitly set configs and derives the effective settings.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<TopicConfig, String> {
        let mut c = TopicConfig::default();
        // compression.type and the levels are read once all are known (names come sorted).
        let mut codec = None;
        let mut levels = [
            (Codec::Gzip, codec::GZIP_LEVEL_DEFAULT),
            (Codec::Lz4, codec::LZ4_LEVEL_DEFAULT),
            (Codec::Zstd, codec::ZSTD_LEVEL_DEFAULT),
        ];
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
                    c.durability = Durability::from_name(value).ok_or_else(|| {
                        format!("{name}={value:?} must be wal, object or replicated")
                    })?
                }
                "min.insync.replicas" => c.min_insync_replicas = int(1)?.min(i32::MAX as i64) as usize,
                "unclean.leader.election.enable" => {
                    c.unclean_leader_election = match value.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("{name}={value:?} must be true or false")),
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
                    codec = Some(Codec::from_config(value).ok_or_else(|| {
                        format!(
                            "{name}={value:?} must be producer, uncompressed, gzip, snappy, lz4 or zstd"
                        )
                    })?)
                }
                "message.format.version" if !is_format_version(value) => {
                    return Err(format!("{name}={value:?} is not a Kafka version (e.g. 0.10.0 or 3.0-IV1)"))
                }
                "message.downconversion.enable" if value != "true" && value != "false" => {
                    return Err(format!("{name}={value:?} must be true or false"))
                }
                "compression.gzip.level" => levels[0].1 = level(name, value, Codec::Gzip)?,
                "compression.lz4.level" => levels[1].1 = level(name, value, Codec::Lz4)?,
                "compression.zstd.level" => levels[2].1 = level(name, value, Codec::Zstd)?,
                _ => {}
            }
        }
        c.compression = codec
            .map(|codec| {
                let level = levels.iter().find(|(c, _)| *c == codec).map_or(0, |l| l.1);
                Target::new(codec, level)
            })
            .transpose()?;
        Ok(c)
    }
}

/// A version as Kafka's `message.format.version` takes it: 2 to 4 dot-separated numbers,
/// optionally with an `-IVn` suffix ("0.10.0.0", "2.8", "3.0-IV1").
fn is_format_version(value: &str) -> bool {
    let (numbers, suffix) = value.split_once("-IV").unwrap_or((value, "0"));
    let parts: Vec<&str> = numbers.split('.').collect();
    let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (2..=4).contains(&parts.len()) && parts.iter().all(|p| number(p)) && number(suffix)
}

/// A `compression.<codec>.level` value, checked against Kafka's range for the codec.
fn level(name: &str, value: &str, codec: Codec) -> Result<i32, String> {
    let level = value
        .parse::<i32>()
        .map_err(|_| format!("{name}={value:?} must be an integer"))?;
    codec::check_level(codec, level).map_err(|e| format!("{name}={value:?}: {e}"))?;
    Ok(level)
}

/// IncrementalAlterConfigs operations (Kafka's `AlterConfigOp.OpType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterOp {
    Set,
    Delete,
    Append,
    Subtract,
}

impl AlterOp {
    pub fn from_code(code: i8) -> Option<AlterOp> {
        Some(match code {
            0 => AlterOp::Set,
            1 => AlterOp::Delete,
            2 => AlterOp::Append,
            3 => AlterOp::Subtract,
            _ => return None,
        })
    }
}

/// The configs whose value is a comma-separated list (APPEND and SUBTRACT apply to these only).
const LIST_CONFIGS: &[&str] = &["cleanup.policy"];

/// Applies IncrementalAlterConfigs operations to a topic's explicitly set configs and returns
/// the new set, validated. A config named twice, an unknown operation target or a value that
/// does not validate fails the whole resource (Kafka applies a resource's changes atomically).
pub fn apply_incremental(
    current: &BTreeMap<String, String>,
    ops: &[(String, AlterOp, Option<String>)],
) -> Result<BTreeMap<String, String>, String> {
    if let Some((name, ..)) = ops
        .iter()
        .find(|(n, ..)| !KNOWN.iter().any(|(k, ..)| k == n))
    {
        return Err(format!("unknown topic config {name:?}"));
    }
    let next = apply_ops(current, ops, |name| {
        LIST_CONFIGS
            .contains(&name)
            .then(|| KNOWN.iter().find(|(n, ..)| *n == name).map(|(_, d, _)| *d))
            .flatten()
    })?;
    TopicConfig::from_map(&next)?;
    Ok(next)
}

/// IncrementalAlterConfigs operations applied in order to a set of configs (a topic's or a
/// broker's), not yet validated. `list_default(name)` is the default of a list config, which
/// APPEND and SUBTRACT start from when it is not set; None for other configs. A config named
/// twice, an operation without its value or APPEND/SUBTRACT on a non-list config fail.
pub fn apply_ops(
    current: &BTreeMap<String, String>,
    ops: &[(String, AlterOp, Option<String>)],
    list_default: impl Fn(&str) -> Option<&'static str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut next = current.clone();
    for (name, op, value) in ops {
        if !seen.insert(name) {
            return Err(format!("config {name:?} appears twice"));
        }
        let value = || {
            value
                .clone()
                .ok_or_else(|| format!("config {name:?} has no value"))
        };
        match op {
            AlterOp::Set => {
                next.insert(name.clone(), value()?);
            }
            AlterOp::Delete => {
                next.remove(name);
            }
            AlterOp::Append | AlterOp::Subtract => {
                let Some(default) = list_default(name) else {
                    return Err(format!(
                        "{name:?} is not a list config: APPEND/SUBTRACT do not apply"
                    ));
                };
                let effective = next.get(name).map_or(default, |v| v.as_str());
                let mut items: Vec<String> = effective
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                for item in value()?.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if *op == AlterOp::Append {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    } else {
                        items.retain(|i| i != item);
                    }
                }
                next.insert(name.clone(), items.join(","));
            }
        }
    }
    Ok(next)
}

/// AlterConfigs (the legacy API) replaces the whole set: configs it does not name go back to
/// their defaults. As Kafka reads it (a `Properties` filled in order): a config named twice
/// takes its last value, and one without a value is left out. librdkafka's
/// `test_AlterConfigs_simple` sends every described config back with the changed one appended
/// (test 0092 was refused "appears twice" once `message.format.version` was described).
pub fn apply_replace(ops: &[(String, Option<String>)]) -> Result<BTreeMap<String, String>, String> {
    let next = replaced_set(ops);
    TopicConfig::from_map(&next)?;
    Ok(next)
}

/// The set a legacy AlterConfigs names (a topic's or a broker's), read as Kafka fills a
/// `Properties`: in order, so a config named twice takes its last value; one without a value is
/// left out. Not validated.
pub fn replaced_set(ops: &[(String, Option<String>)]) -> BTreeMap<String, String> {
    ops.iter()
        .filter_map(|(name, value)| Some((name.clone(), value.clone()?)))
        .collect()
}

/// A config map from name/value pairs (the offsets topic's fixed configs, tests).
pub fn config_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honoured_configs_take_effect() {
        let c = TopicConfig::from_map(&config_map(&[
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
            ("compression.type", "brotli"),
            ("compression.type", "ZSTD"),
            ("compression.zstd.level", "23"),
            ("compression.gzip.level", "0"),
            ("compression.lz4.level", "fast"),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("message.timestamp.type", "Now"),
            ("nope", "1"),
        ] {
            assert!(
                TopicConfig::from_map(&config_map(&[(k, v)])).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn compression_type_names_a_codec_at_its_level() {
        let target = |pairs: &[(&str, &str)]| {
            TopicConfig::from_map(&config_map(pairs))
                .unwrap()
                .compression
        };
        assert_eq!(target(&[]), None);
        assert_eq!(target(&[("compression.type", "producer")]), None);
        assert_eq!(
            target(&[("compression.type", "uncompressed")]),
            Some(Target::new(Codec::None, 0).unwrap())
        );
        assert_eq!(
            target(&[("compression.type", "snappy")]),
            Some(Target::new(Codec::Snappy, 0).unwrap())
        );
        // Kafka's default level of the codec, or the codec's own level config; the others'
        // levels are checked but do not matter.
        assert_eq!(
            target(&[("compression.type", "zstd")]),
            Some(Target::new(Codec::Zstd, 3).unwrap())
        );
        assert_eq!(
            target(&[
                ("compression.type", "zstd"),
                ("compression.zstd.level", "-7"),
                ("compression.gzip.level", "9"),
            ]),
            Some(Target::new(Codec::Zstd, -7).unwrap())
        );
        assert_eq!(
            target(&[
                ("compression.type", "gzip"),
                ("compression.gzip.level", "1")
            ]),
            Some(Target::new(Codec::Gzip, 1).unwrap())
        );
        assert_eq!(
            target(&[("compression.type", "lz4")]),
            Some(Target::new(Codec::Lz4, 9).unwrap())
        );
        assert!(TopicConfig::from_map(&config_map(&[
            ("compression.type", "gzip"),
            ("compression.lz4.level", "99")
        ]))
        .is_err());
    }

    fn op(name: &str, op: AlterOp, value: Option<&str>) -> (String, AlterOp, Option<String>) {
        (name.to_string(), op, value.map(str::to_string))
    }

    #[test]
    fn incremental_alter_sets_deletes_and_validates_atomically() {
        let current = config_map(&[("retention.ms", "1000"), ("segment.bytes", "5")]);
        let next = apply_incremental(
            &current,
            &[
                op("retention.bytes", AlterOp::Set, Some("4096")),
                op("segment.bytes", AlterOp::Delete, None),
            ],
        )
        .unwrap();
        assert_eq!(
            next,
            config_map(&[("retention.bytes", "4096"), ("retention.ms", "1000")])
        );
        // Deleting a config that is not set is fine (it is already the default).
        assert_eq!(
            apply_incremental(&current, &[op("durability", AlterOp::Delete, None)]).unwrap(),
            current
        );
        // Appending what is there is a no-op; anything but "delete" does not validate.
        assert_eq!(
            apply_incremental(
                &config_map(&[]),
                &[op("cleanup.policy", AlterOp::Append, Some("delete"))]
            )
            .unwrap(),
            config_map(&[("cleanup.policy", "delete")])
        );
        for bad in [
            vec![op("cleanup.policy", AlterOp::Append, Some("compact"))],
            vec![op("cleanup.policy", AlterOp::Subtract, Some("delete"))],
            vec![op("retention.ms", AlterOp::Append, Some("5"))],
            vec![op("retention.ms", AlterOp::Set, Some("-7"))],
            vec![op("retention.ms", AlterOp::Set, None)],
            vec![op("nope", AlterOp::Delete, None)],
            vec![
                op("retention.ms", AlterOp::Set, Some("5")),
                op("retention.ms", AlterOp::Delete, None),
            ],
            // One bad op fails the whole resource, including the good one before it.
            vec![
                op("retention.bytes", AlterOp::Set, Some("10")),
                op("durability", AlterOp::Set, Some("disk")),
            ],
        ] {
            assert!(apply_incremental(&current, &bad).is_err(), "{bad:?}");
        }
        assert_eq!(AlterOp::from_code(3), Some(AlterOp::Subtract));
        assert_eq!(AlterOp::from_code(4), None);
    }

    #[test]
    fn legacy_alter_replaces_the_whole_set() {
        let next = apply_replace(&[("retention.ms".into(), Some("5".into()))]).unwrap();
        assert_eq!(next, config_map(&[("retention.ms", "5")]));
        // As Kafka: no value leaves the config out, a config named twice takes its last value.
        assert_eq!(
            apply_replace(&[("retention.ms".into(), None)]),
            Ok(config_map(&[]))
        );
        assert_eq!(
            apply_replace(&[
                ("retention.ms".into(), Some("5".into())),
                ("retention.ms".into(), Some("6".into()))
            ]),
            Ok(config_map(&[("retention.ms", "6")]))
        );
        assert!(apply_replace(&[("retention.ms".into(), Some("-5".into()))]).is_err());
    }

    /// librdkafka's test 0092 sets the deprecated `message.format.version`, which Kafka 3.x
    /// accepts and ignores; it was refused as an unknown config.
    #[test]
    fn deprecated_format_configs_are_accepted_and_checked() {
        let set = |name: &str, value: &str| {
            TopicConfig::from_map(&[(name.to_string(), value.to_string())].into())
        };
        for v in ["0.10.0.0", "0.10.0", "2.8", "3.0-IV1"] {
            assert!(set("message.format.version", v).is_ok(), "{v}");
        }
        for v in ["", "3", "x.y", "3.0-IV", "1.2.3.4.5"] {
            assert!(set("message.format.version", v).is_err(), "{v:?}");
        }
        assert!(set("message.downconversion.enable", "false").is_ok());
        assert!(set("message.downconversion.enable", "no").is_err());
    }
}
