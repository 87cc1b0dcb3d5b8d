//! A new topic's durability and replication factor (ARCHITECTURE.md, "Replicated WAL"):
//! CreateTopics and auto-creation resolve them once, at creation, and the catalog keeps them.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use crate::catalog::topic_config::{Durability, MIN_INSYNC_REPLICAS_DEFAULT};
use crate::cluster::view::FOLLOWERS_MAX;
use crate::shard::Broker;

/// What the cluster offers a new topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicating {
    /// This broker has a replication listener and an object store.
    pub here: bool,
    /// Live brokers with a replication listener, this one included.
    pub brokers: usize,
    /// `--default-replication-factor` (None: min(3, brokers)).
    pub default_factor: Option<i16>,
}

impl Replicating {
    pub fn of(broker: &Broker) -> Replicating {
        let here =
            broker.config.replication_listen.is_some() && broker.config.object_store.is_some();
        Replicating {
            here,
            brokers: if here {
                broker
                    .view()
                    .members
                    .iter()
                    .filter(|m| !m.replication.is_empty())
                    .count()
            } else {
                0
            },
            default_factor: broker.config.default_replication_factor,
        }
    }
}

/// The replication factor a topic created with -1 gets now (`default.replication.factor`).
pub fn default_factor(broker: &Broker) -> i16 {
    let mut configs = BTreeMap::new();
    resolve(&mut configs, -1, Replicating::of(broker)).unwrap_or(1)
}

/// Resolves a new topic's replication: `configs` gains `durability=replicated` when it names no
/// durability, two or more brokers replicate (a single broker keeps `wal`) and the factor is
/// not 1 (one copy asked for, or the broker default: `wal`); returns the
/// replication factor to store — the request's, or the default for -1 — checked against the
/// live brokers (Kafka's INVALID_REPLICATION_FACTOR) and `min.insync.replicas`. Topics of the
/// other modes keep one copy of their tail (the bucket is their durable copy): their factor is
/// 1 whatever was asked.
pub fn resolve(
    configs: &mut BTreeMap<String, String>,
    requested: i16,
    cluster: Replicating,
) -> Result<i16, (ResponseError, String)> {
    let most = cluster.brokers.min(1 + FOLLOWERS_MAX) as i16;
    let factor = match requested {
        -1 => cluster.default_factor.unwrap_or(most),
        n => n,
    };
    if !configs.contains_key("durability") && cluster.here && cluster.brokers >= 2 && factor != 1 {
        configs.insert("durability".into(), Durability::Replicated.name().into());
    }
    if configs.get("durability").map(String::as_str) != Some(Durability::Replicated.name()) {
        return Ok(1);
    }
    if !cluster.here {
        return Err((
            ResponseError::InvalidConfig,
            "durability=replicated needs a broker with --replication-listen and an object store"
                .into(),
        ));
    }
    if factor < 1 || factor > most {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {factor} for a replicated topic must be 1..={most} ({} live \
                 brokers replicate; at most {} copies)",
                cluster.brokers,
                1 + FOLLOWERS_MAX
            ),
        ));
    }
    let min_insync = configs
        .get("min.insync.replicas")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MIN_INSYNC_REPLICAS_DEFAULT);
    if min_insync > factor as usize {
        return Err((
            ResponseError::InvalidConfig,
            format!(
                "min.insync.replicas={min_insync} exceeds the replication factor {factor}: every \
                 acks=all produce would be refused"
            ),
        ));
    }
    Ok(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(brokers: usize) -> Replicating {
        Replicating {
            here: true,
            brokers,
            default_factor: None,
        }
    }

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replicated_is_the_default_with_two_replicating_brokers() {
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, -1, cluster(3)), Ok(3));
        assert_eq!(c["durability"], "replicated");
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, -1, cluster(5)), Ok(3), "at most 3 copies");
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, -1, cluster(2)), Ok(2));
        // One broker, or none replicating: wal, one copy whatever was asked.
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, 3, cluster(1)), Ok(1));
        assert!(!c.contains_key("durability"));
        let off = Replicating {
            here: false,
            brokers: 0,
            default_factor: None,
        };
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, -1, off), Ok(1));
        // One copy asked for: wal.
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, 1, cluster(3)), Ok(1));
        assert!(!c.contains_key("durability"));
        // An explicit mode is kept.
        let mut c = configs(&[("durability", "wal")]);
        assert_eq!(resolve(&mut c, 3, cluster(3)), Ok(1));
        assert_eq!(c["durability"], "wal");
    }

    #[test]
    fn factors_are_checked_as_kafka_does() {
        let replicated = || configs(&[("durability", "replicated")]);
        let code = |r: Result<i16, (ResponseError, String)>| r.map_err(|(c, _)| c);
        assert_eq!(
            code(resolve(&mut replicated(), 4, cluster(3))),
            Err(ResponseError::InvalidReplicationFactor)
        );
        assert_eq!(
            code(resolve(&mut replicated(), 3, cluster(2))),
            Err(ResponseError::InvalidReplicationFactor)
        );
        assert_eq!(
            code(resolve(&mut replicated(), 0, cluster(2))),
            Err(ResponseError::InvalidReplicationFactor)
        );
        // min.insync.replicas (default 2) above the factor would refuse every acks=all.
        assert_eq!(
            code(resolve(&mut replicated(), 1, cluster(2))),
            Err(ResponseError::InvalidConfig)
        );
        let mut one = configs(&[("durability", "replicated"), ("min.insync.replicas", "1")]);
        assert_eq!(resolve(&mut one, 1, cluster(2)), Ok(1));
        // The broker default for -1.
        let with_default = Replicating {
            default_factor: Some(2),
            ..cluster(3)
        };
        assert_eq!(resolve(&mut replicated(), -1, with_default), Ok(2));
        // A default of one copy keeps new topics `wal` (review finding: it made them fail).
        let one = Replicating {
            default_factor: Some(1),
            ..cluster(3)
        };
        let mut c = configs(&[]);
        assert_eq!(resolve(&mut c, -1, one), Ok(1));
        assert!(!c.contains_key("durability"));
        // A broker that does not replicate refuses the mode.
        let off = Replicating {
            here: false,
            brokers: 0,
            default_factor: None,
        };
        assert_eq!(
            code(resolve(&mut replicated(), -1, off)),
            Err(ResponseError::InvalidConfig)
        );
    }
}
