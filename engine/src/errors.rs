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
        | BatchError::Sequence { .. } => ResponseError::InvalidRecord.code(),
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
        BatchError::Records(RecordsError::Codec(_) | RecordsError::Corrupt(_)) => {
            ResponseError::CorruptMessage.code()
        }
        BatchError::Records(
            RecordsError::TooLarge { .. }
            | RecordsError::Count { .. }
            | RecordsError::OffsetDelta { .. },
        ) => ResponseError::InvalidRecord.code(),
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
    }
}

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
}
