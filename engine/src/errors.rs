//! Kafka error codes for Ringtail's own errors: mapped here and nowhere else.

use kafka_protocol::ResponseError;
use ringtail_netio::batch::BatchError;
use ringtail_netio::records::RecordsError;

use crate::catalog::CatalogError;

pub fn batch_error_code(e: &BatchError) -> i16 {
    match e {
        BatchError::Crc { .. }
        | BatchError::Truncated { .. }
        | BatchError::LengthTooSmall(_)
        | BatchError::Empty => ResponseError::CorruptMessage.code(),
        BatchError::Magic(_)
        | BatchError::CountMismatch { .. }
        | BatchError::Control
        | BatchError::Sequence { .. }
        | BatchError::DecompressBudget { .. } => ResponseError::InvalidRecord.code(),
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
        BatchError::Records(RecordsError::Codec(_) | RecordsError::Corrupt(_)) => {
            ResponseError::CorruptMessage.code()
        }
        BatchError::Records(
            RecordsError::TooLarge { .. }
            | RecordsError::Count { .. }
            | RecordsError::OffsetDelta { .. },
        ) => ResponseError::InvalidRecord.code(),
        // A codec library failing on the broker's side, not the producer's input.
        BatchError::Compress(_) => ResponseError::UnknownServerError.code(),
    }
}

pub fn catalog_error_code(e: &CatalogError) -> i16 {
    match e {
        CatalogError::Exists(_) => ResponseError::TopicAlreadyExists.code(),
        CatalogError::Unknown(_) => ResponseError::UnknownTopicOrPartition.code(),
        CatalogError::InvalidName(..) => ResponseError::InvalidTopicException.code(),
        CatalogError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        CatalogError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        CatalogError::Storage(_) => ResponseError::KafkaStorageError.code(),
        // Another broker changed the catalog: this one was not (or no longer) the controller.
        CatalogError::Stale => ResponseError::NotController.code(),
    }
}

/// Success: Kafka's `NONE` (no `ResponseError` names it).
pub const NONE: i16 = 0;

// The codes consumer groups answer, by their Kafka names.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = ResponseError::CoordinatorLoadInProgress.code();
pub const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();
pub const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = ResponseError::InconsistentGroupProtocol.code();
pub const INVALID_GROUP_ID: i16 = ResponseError::InvalidGroupId.code();
pub const UNKNOWN_MEMBER_ID: i16 = ResponseError::UnknownMemberId.code();
pub const INVALID_SESSION_TIMEOUT: i16 = ResponseError::InvalidSessionTimeout.code();
pub const REBALANCE_IN_PROGRESS: i16 = ResponseError::RebalanceInProgress.code();
pub const NON_EMPTY_GROUP: i16 = ResponseError::NonEmptyGroup.code();
pub const GROUP_ID_NOT_FOUND: i16 = ResponseError::GroupIdNotFound.code();
pub const MEMBER_ID_REQUIRED: i16 = ResponseError::MemberIdRequired.code();
pub const FENCED_INSTANCE_ID: i16 = ResponseError::FencedInstanceId.code();
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = ResponseError::GroupSubscribedToTopic.code();

/// Test only: `RINGTAIL_TEST_PANIC_ON_CREATE=<topic>` makes creating that topic panic on the
/// shard that handles it (how a test shows what a shard panic does to the process).
pub fn failpoint_panic_on_create(topic: &str) {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let name = NAME.get_or_init(|| std::env::var("RINGTAIL_TEST_PANIC_ON_CREATE").ok());
    if name.as_deref() == Some(topic) {
        panic!("RINGTAIL_TEST_PANIC_ON_CREATE: creating topic {topic:?}");
    }
}

/// Set once a WAL write failed anywhere in the process: the broker hands its slots over (what
/// is durable is uploaded first) and stops with exit code 1, so that a supervisor or another
/// broker takes over from a disk that is no longer trusted.
pub static WAL_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kafka() {
        assert_eq!(
            batch_error_code(&BatchError::Crc {
                expected: 1,
                actual: 2
            }),
            2
        );
        assert_eq!(batch_error_code(&BatchError::Magic(1)), 87);
        assert_eq!(
            batch_error_code(&BatchError::TooLarge {
                size_bytes: 2,
                max_bytes: 1
            }),
            10
        );
        assert_eq!(catalog_error_code(&CatalogError::Exists("t".into())), 36);
        assert_eq!(
            catalog_error_code(&CatalogError::InvalidName("t".into(), "x")),
            17
        );
        assert_eq!(
            catalog_error_code(&CatalogError::InvalidConfig("x".into())),
            40
        );
        assert_eq!(
            catalog_error_code(&CatalogError::InvalidPartitions("x".into())),
            37
        );
    }

    #[test]
    fn group_codes_are_kafkas_numbers() {
        let codes = [
            COORDINATOR_LOAD_IN_PROGRESS,
            COORDINATOR_NOT_AVAILABLE,
            ILLEGAL_GENERATION,
            INCONSISTENT_GROUP_PROTOCOL,
            INVALID_GROUP_ID,
            UNKNOWN_MEMBER_ID,
            INVALID_SESSION_TIMEOUT,
            REBALANCE_IN_PROGRESS,
            NON_EMPTY_GROUP,
            GROUP_ID_NOT_FOUND,
            MEMBER_ID_REQUIRED,
            FENCED_INSTANCE_ID,
            GROUP_SUBSCRIBED_TO_TOPIC,
        ];
        assert_eq!(codes, [14, 15, 22, 23, 24, 25, 26, 27, 68, 69, 79, 82, 86]);
    }
}
