//! The partition vocabulary every layer speaks: a partition's key, and the work items and
//! outcomes of produce, fetch, list-offsets, offset-for-leader-epoch and delete-records, whichever shard runs them.

use std::sync::Arc;

use bytes::Bytes;
use ringtail_netio::batch::ValidBatch;
use uuid::Uuid;

use crate::catalog::TopicMeta;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic_id: Uuid,
    pub partition: i32,
}

pub struct ProduceItem {
    pub key: PartitionKey,
    pub topic: Arc<TopicMeta>,
    pub batches: Vec<ValidBatch>,
    /// `acks=all`: the answer waits for the topic's durability; otherwise (`acks=1`, `acks=0`)
    /// for the owner's WAL only when the topic is `replicated`.
    pub acks_all: bool,
    /// How long the answer may wait for the upload (`durability=object`) or the followers
    /// (`durability=replicated`): the request's `timeout_ms` (0: not at all; capped, see
    /// `api::produce::ack_wait`); then REQUEST_TIMED_OUT (retriable; the batches stay
    /// written). None: as long as it takes.
    pub ack_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct ProduceOutcome {
    pub error: i16,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

pub struct FetchItem {
    pub key: PartitionKey,
    pub offset: i64,
    pub max_bytes: usize,
    pub first_batch_always: bool,
    /// The request's `current_leader_epoch` (-1: not checked).
    pub current_leader_epoch: i32,
}

#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
}

pub struct ListItem {
    pub key: PartitionKey,
    pub timestamp: i64,
    /// The request's `current_leader_epoch` (-1: not checked).
    pub current_leader_epoch: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct ListOutcome {
    pub error: i16,
    pub offset: i64,
    pub timestamp: i64,
    /// The leader epoch of the batch holding `offset` (the newest one for the log end).
    pub leader_epoch: i32,
}

/// OffsetForLeaderEpoch for one partition: where `epoch` ends.
pub struct EpochItem {
    pub key: PartitionKey,
    pub epoch: i32,
    /// The request's `current_leader_epoch` (-1: not checked).
    pub current_leader_epoch: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct EpochOutcome {
    pub error: i16,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

pub struct DeleteItem {
    pub key: PartitionKey,
    /// Delete the records below this offset (-1: the high watermark).
    pub offset: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct DeleteOutcome {
    pub error: i16,
    pub low_watermark: i64,
}

/// An outcome that carries only an error (owner shard gone).
pub trait ErrorOutcome {
    fn error(code: i16) -> Self;
}

impl ErrorOutcome for ProduceOutcome {
    fn error(code: i16) -> Self {
        ProduceOutcome {
            error: code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}
impl ErrorOutcome for FetchOutcome {
    fn error(code: i16) -> Self {
        FetchOutcome {
            error: code,
            high_watermark: -1,
            log_start_offset: -1,
            batches: Vec::new(),
        }
    }
}
impl ErrorOutcome for ListOutcome {
    fn error(code: i16) -> Self {
        ListOutcome {
            error: code,
            offset: -1,
            timestamp: -1,
            leader_epoch: -1,
        }
    }
}

impl ErrorOutcome for EpochOutcome {
    fn error(code: i16) -> Self {
        EpochOutcome {
            error: code,
            leader_epoch: -1,
            end_offset: -1,
        }
    }
}

impl ErrorOutcome for DeleteOutcome {
    fn error(code: i16) -> Self {
        DeleteOutcome {
            error: code,
            low_watermark: -1,
        }
    }
}
