//! Kafka API handlers: one function per API, each from a decoded request to a response.
//!
//! [`SUPPORTED`] is the contract with clients (ApiVersions): only versions that are implemented
//! and tested are advertised. A request for any other version closes the connection, as Kafka
//! does; ApiVersions itself answers UNSUPPORTED_VERSION at v0 so that the client can retry.

mod admin;
mod delete_records;
mod describe_topic_partitions;
mod error_codes;
mod fetch;
mod groups;
mod init_producer_id;
mod list_offsets;
mod log_dirs;
mod metadata;
mod offset_for_leader_epoch;
mod produce;
mod replicas;
mod replication_factor;
mod resolve;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestKind};
use kafka_protocol::protocol::{Encodable, HeaderVersion};
use kafka_protocol::ResponseError;
use ringtail_netio::request::{encode_response, Body, Header};

use crate::shard::Broker;
use error_codes::ErrorCodes;
use std::rc::Rc;

/// (api, min version, max version) advertised in ApiVersions.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
];

pub fn supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == api_key && (min..=max).contains(&version))
}

/// What the connection does after a request.
pub enum Reply {
    Send(Bytes),
    /// A response as segments for one vectored write (Fetch: the stored batches, uncopied).
    SendSegments(Vec<Bytes>),
    /// acks=0 produce: nothing goes back.
    Nothing,
    /// Close the connection (Kafka's answer to requests it cannot parse or does not support).
    Close(String),
}

/// Counts the answer's error codes, then encodes it.
fn respond<R: Encodable + HeaderVersion + ErrorCodes>(
    broker: &Broker,
    header: &Header,
    body: &R,
) -> Reply {
    let stats = &broker.stats;
    body.each_error(&mut |code| stats.error(header.api_key as i16, code));
    encode_reply(header, body)
}

fn encode_reply<R: Encodable + HeaderVersion>(header: &Header, body: &R) -> Reply {
    match encode_response(header.correlation_id, header.api_version, body) {
        Ok(bytes) => Reply::Send(bytes),
        Err(e) => Reply::Close(format!(
            "could not encode {:?} v{} response: {e}",
            header.api_key, header.api_version
        )),
    }
}

/// Answers ApiVersions, also for versions newer than ours (KIP-511: v0 body, error 35).
pub fn api_versions(header: &Header) -> Reply {
    let keys = SUPPORTED
        .iter()
        .map(|&(k, min, max)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    let mut response = ApiVersionsResponse::default().with_api_keys(keys);
    if supported(ApiKey::ApiVersions, header.api_version) {
        return encode_reply(header, &response);
    }
    response.error_code = ResponseError::UnsupportedVersion.code();
    let v0 = Header {
        api_version: 0,
        ..header.clone()
    };
    encode_reply(&v0, &response)
}

/// Counts the record bytes a fetch response sends, and those it had to copy: a batch that is not
/// one of the response's segments (same buffer) was copied.
fn count_fetch_copies(
    broker: &Broker,
    parts: &ringtail_netio::fetch::FetchResponseParts,
    segments: &[Bytes],
) {
    use std::sync::atomic::Ordering::Relaxed;
    // The encoder emits the batches in order among the segments: one forward walk finds them.
    let mut sent = segments.iter();
    let (mut total, mut copied) = (0u64, 0u64);
    for b in parts
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| &p.batches)
    {
        total += b.len() as u64;
        if !b.is_empty()
            && !sent
                .by_ref()
                .any(|s| s.as_ptr() == b.as_ptr() && s.len() == b.len())
        {
            copied += b.len() as u64;
        }
    }
    let stats = &broker.stats;
    stats.fetch_sent_record_bytes.fetch_add(total, Relaxed);
    stats.fetch_copied_record_bytes.fetch_add(copied, Relaxed);
}

/// Whether a connection may read and dispatch the requests after this one before it is
/// answered (ARCHITECTURE.md, "Pipelined connections"); the others are barriers.
pub fn pipelined(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::Produce
            | ApiKey::Fetch
            | ApiKey::Metadata
            | ApiKey::ListOffsets
            | ApiKey::OffsetForLeaderEpoch
            | ApiKey::ApiVersions
            | ApiKey::DescribeCluster
            | ApiKey::DescribeTopicPartitions
    )
}

/// Stage one of a pipelined request (a produce hands its batches to their owners; the others
/// have nothing to fix in advance); the completion resolves to the answer.
pub async fn dispatch(
    broker: &Rc<Broker>,
    header: Header,
    body: Body,
) -> futures::future::LocalBoxFuture<'static, Reply> {
    use futures::FutureExt;
    match body {
        Body::Produce(input) => produce::dispatch(broker, &header, input).await,
        body => {
            let broker = broker.clone();
            async move { handle(&broker, &header, body).await }.boxed_local()
        }
    }
}

/// Handles one decoded request on the connection's shard.
pub async fn handle(broker: &Rc<Broker>, header: &Header, body: Body) -> Reply {
    let request = match body {
        Body::Produce(input) => return produce::handle(broker, header, input).await,
        Body::Other(request) => request,
    };
    match *request {
        RequestKind::ApiVersions(_) => api_versions(header),
        RequestKind::Metadata(r) => {
            respond(broker, header, &metadata::metadata(broker, header, r).await)
        }
        RequestKind::DescribeCluster(r) => {
            respond(broker, header, &metadata::describe_cluster(broker, r))
        }
        RequestKind::Fetch(r) => {
            let parts = fetch::handle(broker, header, r).await;
            let stats = &broker.stats;
            stats.error(header.api_key as i16, parts.error_code);
            for p in parts.topics.iter().flat_map(|t| &t.partitions) {
                stats.error(header.api_key as i16, p.error_code);
            }
            match ringtail_netio::fetch::encode_fetch_response(
                header.correlation_id,
                header.api_version,
                &parts,
            ) {
                Ok(segments) => {
                    count_fetch_copies(broker, &parts, &segments);
                    Reply::SendSegments(segments)
                }
                Err(e) => Reply::Close(format!("could not encode the fetch response: {e}")),
            }
        }
        RequestKind::ListOffsets(r) => respond(
            broker,
            header,
            &list_offsets::handle(broker, header.api_version, r).await,
        ),
        RequestKind::OffsetForLeaderEpoch(r) => respond(
            broker,
            header,
            &offset_for_leader_epoch::handle(broker, r).await,
        ),
        RequestKind::CreateTopics(r) => respond(
            broker,
            header,
            &admin::create_topics(broker, header, r).await,
        ),
        RequestKind::DeleteTopics(r) => respond(
            broker,
            header,
            &admin::delete_topics(broker, header, r).await,
        ),
        RequestKind::DeleteRecords(r) => {
            respond(broker, header, &delete_records::handle(broker, r).await)
        }
        RequestKind::CreatePartitions(r) => {
            respond(broker, header, &admin::create_partitions(broker, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            respond(broker, header, &admin::describe_configs(broker, r))
        }
        RequestKind::FindCoordinator(r) => {
            respond(broker, header, &groups::find_coordinator(broker, header, r))
        }
        RequestKind::JoinGroup(r) => {
            respond(broker, header, &groups::join_group(broker, header, r).await)
        }
        RequestKind::SyncGroup(r) => {
            respond(broker, header, &groups::sync_group(broker, header, r).await)
        }
        RequestKind::Heartbeat(r) => respond(broker, header, &groups::heartbeat(broker, r).await),
        RequestKind::LeaveGroup(r) => respond(
            broker,
            header,
            &groups::leave_group(broker, header, r).await,
        ),
        RequestKind::OffsetCommit(r) => {
            respond(broker, header, &groups::offset_commit(broker, r).await)
        }
        RequestKind::OffsetFetch(r) => respond(
            broker,
            header,
            &groups::offset_fetch(broker, header, r).await,
        ),
        RequestKind::DescribeGroups(r) => respond(
            broker,
            header,
            &groups::describe_groups(broker, header, r).await,
        ),
        RequestKind::ListGroups(r) => respond(
            broker,
            header,
            &groups::list_groups(broker, header, r).await,
        ),
        RequestKind::OffsetDelete(r) => {
            respond(broker, header, &groups::offset_delete(broker, r).await)
        }
        RequestKind::InitProducerId(r) => {
            respond(broker, header, &init_producer_id::handle(broker, r).await)
        }
        RequestKind::DeleteGroups(r) => {
            respond(broker, header, &groups::delete_groups(broker, r).await)
        }
        RequestKind::AlterConfigs(r) => {
            respond(broker, header, &admin::alter_configs(broker, r).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => respond(
            broker,
            header,
            &admin::incremental_alter_configs(broker, r).await,
        ),
        RequestKind::DescribeTopicPartitions(r) => respond(
            broker,
            header,
            &describe_topic_partitions::describe_topic_partitions(broker, r),
        ),
        RequestKind::DescribeLogDirs(r) => respond(
            broker,
            header,
            &log_dirs::describe_log_dirs(broker, r).await,
        ),
        RequestKind::ElectLeaders(r) => {
            respond(broker, header, &replicas::elect_leaders(broker, header, r))
        }
        RequestKind::AlterPartitionReassignments(r) => respond(
            broker,
            header,
            &replicas::alter_partition_reassignments(broker, r),
        ),
        RequestKind::ListPartitionReassignments(r) => respond(
            broker,
            header,
            &replicas::list_partition_reassignments(broker, r),
        ),
        other => Reply::Close(format!(
            "no handler for {:?}",
            std::mem::discriminant(&other)
        )),
    }
}

/// The values that occur more than once.
pub(crate) fn repeated<T: Eq + std::hash::Hash>(
    values: impl Iterator<Item = T>,
) -> std::collections::HashSet<T> {
    let mut seen = std::collections::HashSet::new();
    let mut twice = std::collections::HashSet::new();
    for v in values {
        if seen.contains(&v) {
            twice.insert(v);
        } else {
            seen.insert(v);
        }
    }
    twice
}
