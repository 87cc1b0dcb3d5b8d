//! Metadata and DescribeCluster: the live brokers, and each partition's leader is the target
//! owner of its slot (cluster mode) — this broker when it runs alone.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringtail_netio::request::Header;
use uuid::Uuid;

use crate::catalog::topic_config::Durability;
use crate::catalog::{validate_name, CatalogError, TopicMeta};
use crate::cluster::view::View;
use crate::shard::Broker;

pub async fn metadata(
    broker: &Broker,
    header: &Header,
    request: MetadataRequest,
) -> MetadataResponse {
    let version = header.api_version;
    let snapshot = broker.catalog.snapshot();
    let all = match &request.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let topics = if all {
        snapshot
            .topics()
            .iter()
            .map(|t| topic_entry(broker, t))
            .collect()
    } else {
        let allow_auto = version < 4 || request.allow_auto_topic_creation;
        // Each topic once, however often the request names it (Kafka reads the list as a
        // set): 1,000 mentions of a 10k-partition topic would otherwise answer 10M partitions.
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut entries = Vec::new();
        for req in request.topics.unwrap_or_default() {
            let first = match &req.name {
                Some(name) => names.insert(name.clone()),
                None => ids.insert(req.topic_id),
            };
            if !first {
                continue;
            }
            entries.push(match req.name {
                Some(name) => by_name(broker, name.as_str(), allow_auto).await,
                None => match snapshot.by_id(&req.topic_id) {
                    Some(t) => topic_entry(broker, t),
                    None => error_entry(None, req.topic_id, ResponseError::UnknownTopicId.code()),
                },
            });
        }
        entries
    };
    let view = broker.view();
    MetadataResponse::default()
        .with_brokers(
            view.members
                .iter()
                .map(|m| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(m.node_id))
                        .with_host(StrBytes::from_string(m.host.clone()))
                        .with_port(m.port)
                        .with_rack(m.rack.clone().map(StrBytes::from_string))
                })
                .collect(),
        )
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(view.controller))
        .with_topics(topics)
}

async fn by_name(broker: &Broker, name: &str, allow_auto: bool) -> MetadataResponseTopic {
    if let Some(t) = broker.catalog.snapshot().by_name(name) {
        return topic_entry(broker, t);
    }
    if validate_name(name).is_err() {
        return error_entry(
            Some(name),
            Uuid::nil(),
            ResponseError::InvalidTopicException.code(),
        );
    }
    if !(allow_auto && broker.config.auto_create_topics) {
        return error_entry(
            Some(name),
            Uuid::nil(),
            ResponseError::UnknownTopicOrPartition.code(),
        );
    }
    if !broker.view().is_controller() {
        // Only the controller changes topics; the client asks again and the controller's
        // catalog reaches this broker within a lease period.
        return error_entry(
            Some(name),
            Uuid::nil(),
            ResponseError::LeaderNotAvailable.code(),
        );
    }
    let mut configs = BTreeMap::new();
    let replication = super::replication_factor::Replicating::of(broker);
    let replication_factor = match super::replication_factor::resolve(&mut configs, -1, replication)
    {
        Ok(n) => n,
        Err((code, _)) => return error_entry(Some(name), Uuid::nil(), code.code()),
    };
    match broker
        .catalog
        .create(
            name,
            broker.config.default_partitions,
            replication_factor,
            configs,
            false,
        )
        .await
    {
        // Kafka's first answer for a topic it is creating: LEADER_NOT_AVAILABLE, no partitions;
        // the client asks again (kafka-go reads a topic listed at once as one never deleted).
        Ok(t) => {
            tracing::info!(
                topic = name,
                partitions = t.partitions,
                "auto-created topic"
            );
            error_entry(
                Some(name),
                Uuid::nil(),
                ResponseError::LeaderNotAvailable.code(),
            )
        }
        // Another connection created it first.
        Err(CatalogError::Exists(_)) => match broker.catalog.snapshot().by_name(name) {
            Some(t) => topic_entry(broker, t),
            None => error_entry(
                Some(name),
                Uuid::nil(),
                ResponseError::LeaderNotAvailable.code(),
            ),
        },
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-create failed");
            error_entry(
                Some(name),
                Uuid::nil(),
                crate::errors::catalog_error_code(&e),
            )
        }
    }
}

/// A partition's leader as Metadata and DescribeTopicPartitions report it.
pub(super) struct Leader {
    /// LEADER_NOT_AVAILABLE while no live broker owns the slot.
    pub error: i16,
    /// The target owner of its slot.
    pub node: BrokerId,
    /// Its slot's ownership epoch as known here (never lower than one reported before).
    pub epoch: i32,
    /// The brokers holding a copy of its tail, the owner first, and those in sync: the owner
    /// alone unless the topic is replicated and its owner streams to followers.
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
}

pub(super) fn leader(broker: &Broker, view: &View, t: &TopicMeta, partition: i32) -> Leader {
    let route = broker.owner(t, partition);
    let owner = view.owner(route.slot);
    let error = if owner < 0 {
        ResponseError::LeaderNotAvailable.code()
    } else {
        0
    };
    let factor = match t.config.durability {
        Durability::Replicated => t.replication_factor.max(1) as usize,
        _ => 1,
    };
    let (replicas, isr) = broker
        .membership
        .replica_sets
        .of(route.slot, owner)
        .unwrap_or_default()
        .of_topic(owner, factor);
    let ids = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect();
    Leader {
        error,
        node: BrokerId(owner),
        epoch: broker.leader_epoch(route),
        replicas: ids(replicas),
        isr: ids(isr),
    }
}

fn topic_entry(broker: &Broker, t: &Arc<TopicMeta>) -> MetadataResponseTopic {
    let view = broker.view();
    let partitions = (0..t.partitions)
        .map(|i| {
            let leader = leader(broker, &view, t, i);
            MetadataResponsePartition::default()
                .with_error_code(leader.error)
                .with_partition_index(i)
                .with_leader_id(leader.node)
                .with_leader_epoch(leader.epoch)
                .with_replica_nodes(leader.replicas)
                .with_isr_nodes(leader.isr)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(t.is_internal())
        .with_partitions(partitions)
}

fn error_entry(name: Option<&str>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n.to_string()))))
        .with_topic_id(id)
}

pub fn describe_cluster(
    broker: &Broker,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let view = broker.view();
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(view.controller))
        .with_brokers(
            view.members
                .iter()
                .map(|m| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(m.node_id))
                        .with_host(StrBytes::from_string(m.host.clone()))
                        .with_port(m.port)
                        .with_rack(m.rack.clone().map(StrBytes::from_string))
                })
                .collect(),
        )
}
