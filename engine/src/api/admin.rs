//! CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs,
//! IncrementalAlterConfigs.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringtail_netio::request::Header;
use uuid::Uuid;

use crate::catalog::broker_config::{self, source, Described};
use crate::catalog::topic_config::{
    apply_incremental, apply_replace, replaced_set, AlterOp, KNOWN,
};
use crate::catalog::{is_internal_topic, CatalogError, TopicMeta};
use crate::errors::catalog_error_code;
use crate::shard::Broker;

pub(super) fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub async fn create_topics(
    broker: &Broker,
    header: &Header,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let duplicates = super::repeated(request.topics.iter().map(|t| t.name.to_string()));
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        results.push(create_topic(broker, header, &duplicates, request.validate_only, t).await);
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_topic(
    broker: &Broker,
    header: &Header,
    duplicates: &HashSet<String>,
    validate_only: bool,
    t: kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> CreatableTopicResult {
    let node = broker.config.node_id;

    let name = t.name.to_string();
    let fail = |code: i16, message: String| {
        CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_error_code(code)
            .with_error_message(Some(text(message)))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
    };
    if let Err(message) = controller_only(broker) {
        return fail(ResponseError::NotController.code(), message);
    }
    if duplicates.contains(&name) {
        return fail(
            ResponseError::InvalidRequest.code(),
            format!("topic {name:?} appears twice in the request"),
        );
    }
    let partitions = if t.assignments.is_empty() {
        if t.replication_factor != -1 && t.replication_factor < 1 {
            return fail(
                ResponseError::InvalidReplicationFactor.code(),
                "replication factor must be -1 or >= 1".into(),
            );
        }
        if t.num_partitions == -1 {
            broker.config.default_partitions
        } else {
            t.num_partitions
        }
    } else {
        let assigned_here = t
            .assignments
            .iter()
            .all(|a| a.broker_ids.iter().all(|b| b.0 == node) && !a.broker_ids.is_empty());
        let dense = t
            .assignments
            .iter()
            .enumerate()
            .all(|(i, a)| a.partition_index == i as i32);
        if t.num_partitions != -1 || !assigned_here || !dense {
            return fail(
                ResponseError::InvalidReplicaAssignment.code(),
                format!(
                    "replica assignments must name partitions 0.. densely and only broker {node}"
                ),
            );
        }
        t.assignments.len() as i32
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        match &c.value {
            Some(v) => {
                configs.insert(c.name.to_string(), v.to_string());
            }
            None => {
                return fail(
                    ResponseError::InvalidConfig.code(),
                    format!("config {} has no value", c.name.as_str()),
                )
            }
        }
    }
    if configs.get("durability").is_some_and(|v| v == "object")
        && broker.config.object_store.is_none()
    {
        return fail(
            ResponseError::InvalidConfig.code(),
            "durability=object needs an object store (--object-store)".into(),
        );
    }
    let replication_factor = match super::replication_factor::resolve(
        &mut configs,
        t.replication_factor,
        super::replication_factor::Replicating::of(broker),
    ) {
        Ok(n) => n,
        Err((code, message)) => return fail(code.code(), message),
    };
    crate::errors::failpoint_panic_on_create(&name);
    match broker
        .catalog
        .create(
            &name,
            partitions,
            replication_factor,
            configs,
            validate_only,
        )
        .await
    {
        Ok(topic) => {
            if !validate_only {
                tracing::info!(topic = %name, partitions, replication_factor, durability = topic.config.durability.name(), id = %topic.id, "created topic");
            }
            let mut r = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)
                .with_configs(Some(
                    topic_configs(&topic)
                        .into_iter()
                        .map(|(n, v, is_set)| {
                            CreatableTopicConfigs::default()
                                .with_name(text(n))
                                .with_value(Some(text(v)))
                                .with_config_source(if is_set { 1 } else { 5 })
                        })
                        .collect(),
                ));
            if header.api_version >= 7 {
                r = r.with_topic_id(topic.id);
            }
            r
        }
        Err(e) => fail(catalog_error_code(&e), e.to_string()),
    }
}

/// Topics change only on the controller (cluster mode); elsewhere NOT_CONTROLLER, and the
/// client asks the controller Metadata names.
pub(super) fn controller_only(broker: &Broker) -> Result<(), String> {
    let view = broker.view();
    if view.is_controller() {
        Ok(())
    } else {
        Err(format!(
            "broker {} is not the controller; broker {} is",
            view.me, view.controller
        ))
    }
}

/// (name, value, set explicitly) for every known config of a topic.
fn topic_configs(topic: &TopicMeta) -> Vec<(String, String, bool)> {
    KNOWN
        .iter()
        .map(|(name, default, _)| match topic.configs.get(*name) {
            Some(v) => (name.to_string(), v.clone(), true),
            None => (name.to_string(), default.to_string(), false),
        })
        .collect()
}

pub async fn delete_topics(
    broker: &Broker,
    header: &Header,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<String>, Uuid)> = if header.api_version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.to_string()), Uuid::nil()))
            .collect()
    };
    // A topic named (or identified) twice is refused, as Kafka does, and not deleted.
    let duplicate = super::repeated(wanted.iter().map(|(name, id)| (name.clone(), *id)));
    let mut responses = Vec::new();
    for (name, id) in wanted {
        if duplicate.contains(&(name.clone(), id)) {
            let what = if name.is_some() { "name" } else { "id" };
            responses.push(
                DeletableTopicResult::default()
                    .with_name(name.map(|n| TopicName(text(n))))
                    .with_topic_id(id)
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(text(format!(
                        "duplicate topic {what} in the request"
                    )))),
            );
            continue;
        }
        let snapshot = broker.catalog.snapshot();
        let found = match &name {
            Some(n) => snapshot.by_name(n).cloned(),
            None => snapshot.by_id(&id).cloned(),
        };
        let result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(text(n))))
            .with_topic_id(id);
        if let Err(message) = controller_only(broker) {
            responses.push(
                result
                    .with_error_code(ResponseError::NotController.code())
                    .with_error_message(Some(text(message))),
            );
            continue;
        }
        if found.as_ref().is_some_and(|t| t.is_internal()) {
            responses.push(
                result
                    .with_error_code(ResponseError::InvalidTopicException.code())
                    .with_error_message(Some(text(
                        "the committed-offsets topic cannot be deleted",
                    ))),
            );
            continue;
        }
        let Some(topic) = found else {
            let code = if name.is_some() {
                ResponseError::UnknownTopicOrPartition
            } else {
                ResponseError::UnknownTopicId
            };
            responses.push(result.with_error_code(code.code()));
            continue;
        };
        match broker.catalog.delete(&topic.name).await {
            Ok(t) => {
                broker.drop_topic(t.id).await;
                tracing::info!(topic = %t.name, id = %t.id, "deleted topic");
                responses.push(
                    result
                        .with_name(Some(TopicName(text(t.name.clone()))))
                        .with_topic_id(t.id),
                );
            }
            Err(e) => responses.push(
                result
                    .with_error_code(catalog_error_code(&e))
                    .with_error_message(Some(text(e.to_string()))),
            ),
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    broker: &Broker,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let node = broker.config.node_id;
    let duplicate = super::repeated(request.topics.iter().map(|t| t.name.to_string()));
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let refused = |code: ResponseError, message: String| {
            result
                .clone()
                .with_error_code(code.code())
                .with_error_message(Some(text(message)))
        };
        let assigned_here = t.assignments.as_ref().is_none_or(|a| {
            a.iter()
                .all(|x| !x.broker_ids.is_empty() && x.broker_ids.iter().all(|b| b.0 == node))
        });
        results.push(if let Err(message) = controller_only(broker) {
            refused(ResponseError::NotController, message)
        } else if duplicate.contains(t.name.as_str()) {
            refused(
                ResponseError::InvalidRequest,
                "duplicate topic in the request".into(),
            )
        } else if !assigned_here {
            refused(
                ResponseError::InvalidReplicaAssignment,
                format!("only broker {node} can hold partitions"),
            )
        } else if is_internal_topic(t.name.as_str()) {
            // Groups map to its partitions by count: more partitions would move them.
            refused(
                ResponseError::InvalidTopicException,
                "the committed-offsets topic has one partition per shard".into(),
            )
        } else {
            match broker
                .catalog
                .add_partitions(t.name.as_str(), t.count, request.validate_only)
                .await
            {
                Ok(()) => {
                    tracing::info!(topic = %t.name.as_str(), partitions = t.count, "added partitions");
                    result
                }
                Err(e) => result
                    .with_error_code(catalog_error_code(&e))
                    .with_error_message(Some(text(e.to_string()))),
            }
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

pub fn describe_configs(
    broker: &Broker,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let snapshot = broker.catalog.snapshot();
    // Each resource once, however often the request names it (Kafka answers a set).
    let mut seen = HashSet::new();
    let results = request
        .resources
        .into_iter()
        .filter(|r| seen.insert((r.resource_type, r.resource_name.clone())))
        .map(|r| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let entries: Vec<(String, Option<String>, i8, bool)> = match r.resource_type {
                RESOURCE_TOPIC => match snapshot.by_name(r.resource_name.as_str()) {
                    Some(t) => topic_configs(t)
                        .into_iter()
                        .map(|(n, v, set)| {
                            let from = if set { source::TOPIC } else { source::DEFAULT };
                            (n, Some(v), from, false)
                        })
                        .collect(),
                    None => {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(text(format!(
                                "topic {:?} does not exist",
                                r.resource_name.as_str()
                            ))))
                    }
                },
                RESOURCE_BROKER if r.resource_name.is_empty() => {
                    broker_config::describe(snapshot.broker_configs(""), Described::ClusterDefault)
                        .into_iter()
                        .map(|(n, v, source)| (n, v, source, false))
                        .collect()
                }
                RESOURCE_BROKER
                    if r.resource_name.as_str() == broker.config.node_id.to_string() =>
                {
                    broker_configs(broker, &snapshot)
                }
                RESOURCE_BROKER => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(text(format!(
                            "this is broker {}",
                            broker.config.node_id
                        ))))
                }
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(text(format!(
                            "resource type {other} is not supported"
                        ))))
                }
            };
            let keys: Option<HashSet<String>> = r
                .configuration_keys
                .map(|k| k.iter().map(|s| s.to_string()).collect());
            let configs = entries
                .into_iter()
                .filter(|(n, ..)| keys.as_ref().is_none_or(|k| k.contains(n)))
                .map(|(n, v, source, read_only)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(text(n))
                        .with_value(v.map(text))
                        .with_read_only(read_only)
                        .with_config_source(source)
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A broker's configs: its static settings (read-only), then the dynamic ones.
fn broker_configs(
    broker: &Broker,
    snapshot: &crate::catalog::Snapshot,
) -> Vec<(String, Option<String>, i8, bool)> {
    let c = &broker.config;
    let own = snapshot.broker_configs(&c.node_id.to_string());
    let dynamic = broker_config::describe(snapshot.broker_configs(""), Described::Broker(own))
        .into_iter()
        .map(|(n, v, source)| (n, v, source, false));
    [
        ("broker.id", c.node_id.to_string()),
        ("node.id", c.node_id.to_string()),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
        ),
        ("num.partitions", c.default_partitions.to_string()),
        ("socket.request.max.bytes", c.request_bytes_max.to_string()),
        ("message.max.bytes", "1048588".to_string()),
        (
            "default.replication.factor",
            super::replication_factor::default_factor(broker).to_string(),
        ),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), Some(v), source::STATIC_BROKER, true))
    .chain(dynamic)
    .collect()
}

/// A resource's requested change, as one of the two alter APIs states it.
enum Change {
    /// AlterConfigs: the whole set; configs not named go back to their defaults.
    Replace(Vec<(String, Option<String>)>),
    /// IncrementalAlterConfigs: (name, operation code, value).
    Incremental(Vec<(String, i8, Option<String>)>),
}

/// (resource type, resource name, error code, error message) per resource.
type AlterResult = (i8, StrBytes, i16, Option<StrBytes>);

async fn alter_configs_of(
    broker: &Broker,
    resources: Vec<(i8, StrBytes, Change)>,
    validate_only: bool,
) -> Vec<AlterResult> {
    let mut seen = HashSet::new();
    let duplicates: HashSet<(i8, String)> = resources
        .iter()
        .map(|(t, n, _)| (*t, n.to_string()))
        .filter(|k| !seen.insert(k.clone()))
        .collect();
    let mut out = Vec::with_capacity(resources.len());
    for (kind, name, change) in resources {
        let fail = |code: ResponseError, message: String| {
            (kind, name.clone(), code.code(), Some(text(message)))
        };
        // Broker configs are altered on any broker, as clients send them (a node's own to that
        // node): the catalog's compare-and-swap keeps a stale writer from overwriting anything.
        if kind != RESOURCE_BROKER {
            if let Err(message) = controller_only(broker) {
                out.push(fail(ResponseError::NotController, message));
                continue;
            }
        }
        if duplicates.contains(&(kind, name.to_string())) {
            out.push(fail(
                ResponseError::InvalidRequest,
                format!("resource {name:?} appears twice in the request"),
            ));
            continue;
        }
        match kind {
            RESOURCE_TOPIC if is_internal_topic(name.as_str()) => {
                out.push(fail(
                    ResponseError::InvalidTopicException,
                    "the committed-offsets topic's configs are fixed".into(),
                ));
                continue;
            }
            RESOURCE_TOPIC => {}
            RESOURCE_BROKER => {
                let Ok(scope) = broker_config::scope(&name) else {
                    out.push(fail(
                        ResponseError::InvalidRequest,
                        format!("broker id must be an integer or \"\" (the cluster default), not {name:?}"),
                    ));
                    continue;
                };
                out.push(
                    match alter_broker_configs(broker, &scope, &change, validate_only).await {
                        Ok(()) => (kind, name, 0, None),
                        Err(e) => (
                            kind,
                            name,
                            catalog_error_code(&e),
                            Some(text(e.to_string())),
                        ),
                    },
                );
                continue;
            }
            other => {
                out.push(fail(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} is not supported"),
                ));
                continue;
            }
        }
        let has_store = broker.config.object_store.is_some();
        let next = |current: &BTreeMap<String, String>| {
            let next = match &change {
                Change::Replace(set) => apply_replace(set)?,
                Change::Incremental(ops) => apply_incremental(current, &change_ops(ops)?)?,
            };
            if !has_store && next.get("durability").is_some_and(|v| v == "object") {
                return Err("durability=object needs an object store (--object-store)".to_string());
            }
            let replicated = |c: &BTreeMap<String, String>| {
                c.get("durability").is_some_and(|v| v == "replicated")
            };
            if replicated(&next) && !replicated(current) {
                return Err(
                    "durability=replicated is chosen at creation, with the replication factor"
                        .to_string(),
                );
            }
            Ok(next)
        };
        match broker
            .catalog
            .alter_configs(name.as_str(), next, validate_only)
            .await
        {
            Ok(topic) => {
                if !validate_only {
                    tracing::info!(topic = %topic.name, configs = ?topic.configs, "altered topic configs");
                    broker.topic_changed(topic).await;
                }
                out.push((kind, name, 0, None));
            }
            Err(e) => out.push((
                kind,
                name,
                catalog_error_code(&e),
                Some(text(e.to_string())),
            )),
        }
    }
    out
}

/// IncrementalAlterConfigs operation codes read, or the first unknown one refused.
fn change_ops(
    ops: &[(String, i8, Option<String>)],
) -> Result<Vec<(String, AlterOp, Option<String>)>, String> {
    ops.iter()
        .map(|(n, code, v)| {
            AlterOp::from_code(*code)
                .map(|op| (n.clone(), op, v.clone()))
                .ok_or_else(|| {
                    format!("config operation {code} is not one of SET, DELETE, APPEND, SUBTRACT")
                })
        })
        .collect()
}

/// A BROKER resource's change: the dynamic configs of the cluster default (`""`) or of one
/// node, kept in the catalog (see `broker_config`).
async fn alter_broker_configs(
    broker: &Broker,
    scope: &str,
    change: &Change,
    validate_only: bool,
) -> Result<(), CatalogError> {
    let next = |current: &BTreeMap<String, String>| match change {
        Change::Replace(set) => Ok(replaced_set(set)),
        Change::Incremental(ops) => broker_config::apply_incremental(current, &change_ops(ops)?),
    };
    broker
        .catalog
        .alter_broker_configs(scope, next, validate_only)
        .await?;
    if !validate_only {
        tracing::info!(broker = %scope, "altered dynamic broker configs (accepted; no effect in Ringtail)");
    }
    Ok(())
}

pub async fn alter_configs(broker: &Broker, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources = request
        .resources
        .into_iter()
        .map(|r| {
            let set = r
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                .collect();
            (r.resource_type, r.resource_name, Change::Replace(set))
        })
        .collect();
    let responses = alter_configs_of(broker, resources, request.validate_only)
        .await
        .into_iter()
        .map(|(kind, name, code, message)| {
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(kind)
                .with_resource_name(name)
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    broker: &Broker,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = request
        .resources
        .into_iter()
        .map(|r| {
            let ops = r
                .configs
                .into_iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.map(|v| v.to_string()),
                    )
                })
                .collect();
            (r.resource_type, r.resource_name, Change::Incremental(ops))
        })
        .collect();
    let responses = alter_configs_of(broker, resources, request.validate_only)
        .await
        .into_iter()
        .map(|(kind, name, code, message)| {
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(kind)
                .with_resource_name(name)
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
