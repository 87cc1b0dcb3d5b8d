//! Dynamic broker configs: what AlterConfigs and IncrementalAlterConfigs may change on a BROKER
//! resource, how each value is checked, and what DescribeConfigs reports.
//!
//! Ringtail's own broker settings (listeners, shards, WAL, object store, limits) are static:
//! flags, `RINGTAIL_*` variables or the config file. What Kafka lets an operator change at run
//! time and Ringtail has no machinery for — thread pools (a shard per core does the work),
//! Kerberos logins (no GSSAPI), the log cleaner (no compaction yet) — is accepted, stored in
//! the catalog (so every broker of a cluster and every restart sees it) and reported, with no
//! effect, as a Kafka broker stores a Kerberos setting while no listener uses GSSAPI. Tools
//! (`kafka-configs.sh --entity-type brokers`, librdkafka's admin test 0081) keep working.
//! Anything else is refused with INVALID_CONFIG naming the configs, as Kafka refuses a
//! non-dynamic one ("Cannot update these configs dynamically").

use std::collections::BTreeMap;

use crate::catalog::topic_config::{apply_ops, AlterOp};

/// How a dynamic broker config's value is checked (Kafka's `ConfigDef.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A 32-bit integer of at least this (Kafka's INT).
    Int(i32),
    /// A 64-bit integer of at least this (Kafka's LONG).
    Long(i64),
    Double,
    Text,
    /// Comma-separated; APPEND and SUBTRACT apply.
    List,
}

/// Every dynamic broker config Ringtail accepts: name, check, Kafka's default (None: null).
const DYNAMIC: &[(&str, Kind, Option<&str>)] = &[
    ("background.threads", Kind::Int(1), Some("10")),
    ("log.cleaner.backoff.ms", Kind::Long(0), Some("15000")),
    (
        "log.cleaner.dedupe.buffer.size",
        Kind::Long(0),
        Some("134217728"),
    ),
    (
        "log.cleaner.io.buffer.load.factor",
        Kind::Double,
        Some("0.9"),
    ),
    ("log.cleaner.io.buffer.size", Kind::Int(0), Some("524288")),
    (
        "log.cleaner.io.max.bytes.per.second",
        Kind::Double,
        Some("1.7976931348623157E308"),
    ),
    ("log.cleaner.threads", Kind::Int(0), Some("1")),
    ("num.io.threads", Kind::Int(1), Some("8")),
    ("num.network.threads", Kind::Int(1), Some("3")),
    ("num.recovery.threads.per.data.dir", Kind::Int(1), Some("1")),
    ("num.replica.fetchers", Kind::Int(1), Some("1")),
    (
        "sasl.kerberos.kinit.cmd",
        Kind::Text,
        Some("/usr/bin/kinit"),
    ),
    (
        "sasl.kerberos.min.time.before.relogin",
        Kind::Long(0),
        Some("60000"),
    ),
    (
        "sasl.kerberos.principal.to.local.rules",
        Kind::List,
        Some("DEFAULT"),
    ),
    ("sasl.kerberos.service.name", Kind::Text, None),
    (
        "sasl.kerberos.ticket.renew.jitter",
        Kind::Double,
        Some("0.05"),
    ),
    (
        "sasl.kerberos.ticket.renew.window.factor",
        Kind::Double,
        Some("0.8"),
    ),
];

/// The scope a BROKER resource name names: "" is the cluster-wide default, a node id one
/// broker. Anything else is not a broker.
pub fn scope(resource_name: &str) -> Result<String, String> {
    if resource_name.is_empty() {
        return Ok(String::new());
    }
    match resource_name.parse::<i32>() {
        Ok(id) if id >= 0 && id.to_string() == resource_name => Ok(resource_name.to_string()),
        _ => Err(format!(
            "broker resource name {resource_name:?} is neither a node id nor \"\" (the cluster default)"
        )),
    }
}

/// The dynamic broker config `name`: its check and Kafka's default.
fn dynamic(name: &str) -> Option<(Kind, Option<&'static str>)> {
    DYNAMIC
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, kind, default)| (*kind, *default))
}

/// Refuses, naming them all, the configs among `names` that cannot be set at run time.
fn refuse_static<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let refused: Vec<&str> = names.filter(|n| dynamic(n).is_none()).collect();
    if !refused.is_empty() {
        return Err(format!(
            "cannot update these broker configs dynamically: {}. Ringtail's own broker settings \
             are static (flags, RINGTAIL_* environment variables, the config file) and it has no \
             broker-wide topic defaults (set them on each topic)",
            refused.join(", ")
        ));
    }
    Ok(())
}

/// Checks a whole set of dynamic broker configs: every name dynamic, every value of its kind.
pub fn validate(configs: &BTreeMap<String, String>) -> Result<(), String> {
    refuse_static(configs.keys().map(String::as_str))?;
    for (name, value) in configs {
        let (kind, _) = dynamic(name).expect("checked");
        let ok = match kind {
            Kind::Int(min) => value.parse::<i32>().is_ok_and(|v| v >= min),
            Kind::Long(min) => value.parse::<i64>().is_ok_and(|v| v >= min),
            Kind::Double => value.parse::<f64>().is_ok_and(f64::is_finite),
            Kind::Text | Kind::List => true,
        };
        if !ok {
            return Err(match kind {
                Kind::Int(min) => format!("{name}={value:?} must be a 32-bit integer >= {min}"),
                Kind::Long(min) => format!("{name}={value:?} must be an integer >= {min}"),
                _ => format!("{name}={value:?} must be a number"),
            });
        }
    }
    Ok(())
}

/// IncrementalAlterConfigs on a broker scope: the operations applied to its current set.
pub fn apply_incremental(
    current: &BTreeMap<String, String>,
    ops: &[(String, AlterOp, Option<String>)],
) -> Result<BTreeMap<String, String>, String> {
    // Named up front, as for topics: a DELETE of a config that cannot be set is refused too.
    refuse_static(ops.iter().map(|(n, ..)| n.as_str()))?;
    let next = apply_ops(current, ops, |name| match dynamic(name) {
        Some((Kind::List, default)) => Some(default.unwrap_or("")),
        _ => None,
    })?;
    validate(&next)?;
    Ok(next)
}

/// Where a described value comes from (Kafka's `ConfigSource`), for topics and brokers.
pub mod source {
    pub const TOPIC: i8 = 1;
    pub const DYNAMIC_BROKER: i8 = 2;
    pub const DYNAMIC_DEFAULT_BROKER: i8 = 3;
    pub const STATIC_BROKER: i8 = 4;
    pub const DEFAULT: i8 = 5;
}

/// Which broker resource DescribeConfigs asked for.
#[derive(Debug, Clone, Copy)]
pub enum Described<'a> {
    /// The `""` resource: only what is set as the cluster default, as Kafka describes it.
    ClusterDefault,
    /// One broker, with its own dynamic configs (if any).
    Broker(Option<&'a BTreeMap<String, String>>),
}

/// The dynamic configs as DescribeConfigs reports them: for a broker, its own value over the
/// cluster default over Kafka's default, each with its source.
pub fn describe(
    default: Option<&BTreeMap<String, String>>,
    resource: Described,
) -> Vec<(String, Option<String>, i8)> {
    let mut out = Vec::new();
    for (name, _, kafka_default) in DYNAMIC {
        let shared = default.and_then(|c| c.get(*name)).cloned();
        let entry = match resource {
            Described::ClusterDefault => shared.map(|v| (Some(v), source::DYNAMIC_DEFAULT_BROKER)),
            Described::Broker(own) => {
                Some(match (own.and_then(|c| c.get(*name)).cloned(), shared) {
                    (Some(v), _) => (Some(v), source::DYNAMIC_BROKER),
                    (None, Some(v)) => (Some(v), source::DYNAMIC_DEFAULT_BROKER),
                    (None, None) => (kafka_default.map(str::to_string), source::DEFAULT),
                })
            }
        };
        if let Some((value, source)) = entry {
            out.push((name.to_string(), value, source));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::topic_config::config_map;

    #[test]
    fn only_dynamic_names_with_valid_values_pass() {
        assert!(validate(&config_map(&[(
            "sasl.kerberos.min.time.before.relogin",
            "58000"
        )]))
        .is_ok());
        assert!(validate(&config_map(&[
            ("num.io.threads", "16"),
            ("log.cleaner.io.buffer.load.factor", "0.5")
        ]))
        .is_ok());
        let e = validate(&config_map(&[
            ("num.partitions", "3"),
            ("log.retention.ms", "1"),
        ]))
        .unwrap_err();
        assert!(e.contains("log.retention.ms, num.partitions"), "{e}");
        assert!(validate(&config_map(&[("num.io.threads", "0")])).is_err());
        assert!(validate(&config_map(&[("num.io.threads", "many")])).is_err());
        assert!(
            validate(&config_map(&[("num.io.threads", "99999999999")])).is_err(),
            "an INT"
        );
        assert!(
            validate(&config_map(&[("log.cleaner.backoff.ms", "99999999999")])).is_ok(),
            "a LONG"
        );
        assert!(validate(&config_map(&[("log.cleaner.io.buffer.load.factor", "inf")])).is_err());
        assert!(validate(&config_map(&[("sasl.kerberos.ticket.renew.jitter", "NaN")])).is_err());
        assert!(validate(&config_map(&[("sasl.kerberos.ticket.renew.jitter", "x")])).is_err());
    }

    #[test]
    fn scopes_are_the_cluster_default_or_a_node_id() {
        assert_eq!(scope("").unwrap(), "");
        assert_eq!(scope("7").unwrap(), "7");
        for bad in ["-1", "07", "x", "1.0", " 1"] {
            assert!(scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn incremental_operations_apply_in_order_and_validate_the_result() {
        let current = config_map(&[("num.io.threads", "4")]);
        let next = apply_incremental(
            &current,
            &[
                ("num.io.threads".into(), AlterOp::Delete, None),
                (
                    "sasl.kerberos.principal.to.local.rules".into(),
                    AlterOp::Append,
                    Some("RULE:x".into()),
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            next,
            config_map(&[("sasl.kerberos.principal.to.local.rules", "DEFAULT,RULE:x")])
        );
        assert!(apply_incremental(
            &current,
            &[("num.io.threads".into(), AlterOp::Append, Some("1".into()))]
        )
        .is_err());
        assert!(apply_incremental(
            &current,
            &[("num.partitions".into(), AlterOp::Set, Some("1".into()))]
        )
        .is_err());
        assert!(apply_incremental(
            &current,
            &[("log.retention.ms".into(), AlterOp::Delete, None)]
        )
        .is_err());
        assert!(
            apply_incremental(&current, &[("num.io.threads".into(), AlterOp::Set, None)]).is_err()
        );
        // Deleting what is not set is not an error (Kafka: a no-op).
        assert_eq!(
            apply_incremental(
                &current,
                &[("background.threads".into(), AlterOp::Delete, None)]
            )
            .unwrap(),
            current
        );
    }

    #[test]
    fn a_brokers_own_value_wins_over_the_cluster_default() {
        let default = config_map(&[("num.io.threads", "6"), ("background.threads", "2")]);
        let own = config_map(&[("num.io.threads", "9")]);
        let described = describe(Some(&default), Described::Broker(Some(&own)));
        let get = |n: &str| {
            described
                .iter()
                .find(|(name, ..)| name == n)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            get("num.io.threads"),
            (
                "num.io.threads".into(),
                Some("9".into()),
                source::DYNAMIC_BROKER
            )
        );
        assert_eq!(get("background.threads").2, source::DYNAMIC_DEFAULT_BROKER);
        assert_eq!(
            get("num.network.threads"),
            (
                "num.network.threads".into(),
                Some("3".into()),
                source::DEFAULT
            )
        );
        assert_eq!(get("sasl.kerberos.service.name").1, None);
        // The "" resource: what is set there, nothing else.
        let cluster = describe(Some(&default), Described::ClusterDefault);
        assert_eq!(cluster.len(), 2);
        assert!(cluster
            .iter()
            .all(|(.., s)| *s == source::DYNAMIC_DEFAULT_BROKER));
    }
}
