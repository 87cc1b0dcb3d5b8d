//! The error codes in an answer, wherever the API puts them (top level, per topic, partition,
//! group or resource), for the request-error metrics.

use kafka_protocol::messages::*;

pub trait ErrorCodes {
    /// Calls `f` with every error code in the answer (0s included; the caller skips them).
    fn each_error(&self, f: &mut dyn FnMut(i16));
}

/// `each_error` from a list of paths to `error_code` fields: `self.error_code`, or through
/// nested vectors.
macro_rules! error_codes {
    ($t:ty, |$r:ident, $f:ident| $body:block) => {
        impl ErrorCodes for $t {
            fn each_error(&self, $f: &mut dyn FnMut(i16)) {
                let $r = self;
                $body
            }
        }
    };
}

error_codes!(ProduceResponse, |r, f| {
    r.responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .for_each(|p| f(p.error_code))
});
error_codes!(MetadataResponse, |r, f| {
    f(r.error_code);
    for t in &r.topics {
        f(t.error_code);
        t.partitions.iter().for_each(|p| f(p.error_code));
    }
});
error_codes!(DescribeClusterResponse, |r, f| { f(r.error_code) });
error_codes!(ListOffsetsResponse, |r, f| {
    r.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code))
});
error_codes!(OffsetForLeaderEpochResponse, |r, f| {
    r.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code))
});
error_codes!(CreateTopicsResponse, |r, f| {
    r.topics.iter().for_each(|t| f(t.error_code))
});
error_codes!(DeleteTopicsResponse, |r, f| {
    r.responses.iter().for_each(|t| f(t.error_code))
});
error_codes!(DeleteRecordsResponse, |r, f| {
    r.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code))
});
error_codes!(CreatePartitionsResponse, |r, f| {
    r.results.iter().for_each(|t| f(t.error_code))
});
error_codes!(DescribeConfigsResponse, |r, f| {
    r.results.iter().for_each(|t| f(t.error_code))
});
error_codes!(AlterConfigsResponse, |r, f| {
    r.responses.iter().for_each(|t| f(t.error_code))
});
error_codes!(IncrementalAlterConfigsResponse, |r, f| {
    r.responses.iter().for_each(|t| f(t.error_code))
});
error_codes!(FindCoordinatorResponse, |r, f| {
    f(r.error_code);
    r.coordinators.iter().for_each(|c| f(c.error_code));
});
error_codes!(JoinGroupResponse, |r, f| { f(r.error_code) });
error_codes!(SyncGroupResponse, |r, f| { f(r.error_code) });
error_codes!(HeartbeatResponse, |r, f| { f(r.error_code) });
error_codes!(LeaveGroupResponse, |r, f| {
    f(r.error_code);
    r.members.iter().for_each(|m| f(m.error_code));
});
error_codes!(OffsetCommitResponse, |r, f| {
    r.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code))
});
error_codes!(OffsetFetchResponse, |r, f| {
    f(r.error_code);
    r.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code));
    for g in &r.groups {
        f(g.error_code);
        g.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code));
    }
});
error_codes!(DescribeGroupsResponse, |r, f| {
    r.groups.iter().for_each(|g| f(g.error_code))
});
error_codes!(ListGroupsResponse, |r, f| { f(r.error_code) });
error_codes!(OffsetDeleteResponse, |r, f| {
    f(r.error_code);
    r.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code));
});
error_codes!(InitProducerIdResponse, |r, f| { f(r.error_code) });
error_codes!(DeleteGroupsResponse, |r, f| {
    r.results.iter().for_each(|g| f(g.error_code))
});
error_codes!(DescribeTopicPartitionsResponse, |r, f| {
    for t in &r.topics {
        f(t.error_code);
        t.partitions.iter().for_each(|p| f(p.error_code));
    }
});
error_codes!(DescribeLogDirsResponse, |r, f| {
    f(r.error_code);
    r.results.iter().for_each(|d| f(d.error_code));
});
error_codes!(ElectLeadersResponse, |r, f| {
    f(r.error_code);
    r.replica_election_results
        .iter()
        .flat_map(|t| &t.partition_result)
        .for_each(|p| f(p.error_code));
});
error_codes!(AlterPartitionReassignmentsResponse, |r, f| {
    f(r.error_code);
    r.responses
        .iter()
        .flat_map(|t| &t.partitions)
        .for_each(|p| f(p.error_code));
});
error_codes!(ListPartitionReassignmentsResponse, |r, f| {
    f(r.error_code)
});

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
    };

    #[test]
    fn nested_codes_are_found() {
        let r =
            OffsetFetchResponse::default().with_groups(vec![OffsetFetchResponseGroup::default()
                .with_error_code(16)
                .with_topics(vec![OffsetFetchResponseTopics::default().with_partitions(
                    vec![
                        OffsetFetchResponsePartitions::default().with_error_code(3),
                        OffsetFetchResponsePartitions::default(),
                    ],
                )])]);
        let mut seen = Vec::new();
        r.each_error(&mut |c| seen.push(c));
        assert_eq!(seen, vec![0, 16, 3, 0]);
    }
}
