//! The request guard against kafka-protocol 0.18, the decoder it protects.
//!
//! Every request the guard knows is built with kafka-protocol's own builders and
//! encoder, in every version: the guard must accept each one, which shows its
//! schemas match the real layouts. Requests that would make kafka-protocol
//! abort must be refused, and anything the guard accepts, however mangled, must
//! decode to `Ok` or `Err` without taking the process down.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchTopic, ForgottenTopic, ReplicaState,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ConsumerGroupDescribeRequest,
    ConsumerGroupHeartbeatRequest, DescribeTransactionsRequest, EndTxnRequest,
    ListTransactionsRequest, TxnOffsetCommitRequest,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, BrokerId, CreateAclsRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteAclsRequest, DeleteGroupsRequest,
    DeleteRecordsRequest, DeleteTopicsRequest, DescribeAclsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, DescribeLogDirsRequest, FetchRequest,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, ProduceRequest, RequestHeader, SyncGroupRequest, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use tally_broker::guard::{
    GuardError, MAX_ELEMENTS, Problem, check_request_body, check_request_header, guarded_apis,
    request_header_version,
};
use uuid::Uuid;

const TOPIC_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

fn text(s: &'static str) -> StrBytes {
    StrBytes::from_static_str(s)
}

fn topic(s: &'static str) -> TopicName {
    TopicName(text(s))
}

fn group(s: &'static str) -> GroupId {
    GroupId(text(s))
}

/// Unknown tagged fields for flexible versions: one small tag, one whose
/// number takes a two-byte varint, one empty.
fn tags(flexible: bool) -> BTreeMap<i32, Bytes> {
    if !flexible {
        return BTreeMap::new();
    }
    BTreeMap::from([
        (7, Bytes::from_static(b"seven")),
        (300, Bytes::from_static(&[0xff; 3])),
        (301, Bytes::new()),
    ])
}

// ---------------------------------------------------------------------------
// Populated requests, one builder per API, setting each field only in the
// versions that carry it (kafka-protocol refuses to encode the others).

fn produce(v: i16) -> ProduceRequest {
    let f = v >= 9;
    let partition = |index, records: Option<&'static [u8]>| {
        PartitionProduceData::default()
            .with_index(index)
            .with_records(records.map(Bytes::from_static))
            .with_unknown_tagged_fields(tags(f))
    };
    let topic_data = |name| {
        let t = TopicProduceData::default()
            .with_partition_data(vec![partition(0, Some(b"batch bytes")), partition(1, None)])
            .with_unknown_tagged_fields(tags(f));
        if v <= 12 {
            t.with_name(topic(name))
        } else {
            t.with_topic_id(TOPIC_ID)
        }
    };
    ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(text("txn-1"))))
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![topic_data("orders"), topic_data("payments")])
        .with_unknown_tagged_fields(tags(f))
}

fn fetch(v: i16) -> FetchRequest {
    let f = v >= 12;
    let partition = |index| {
        let mut p = FetchPartition::default()
            .with_partition(index)
            .with_fetch_offset(42)
            .with_partition_max_bytes(1 << 20)
            .with_unknown_tagged_fields(tags(f));
        if v >= 9 {
            p = p.with_current_leader_epoch(3);
        }
        if v >= 12 {
            p = p.with_last_fetched_epoch(2);
        }
        if v >= 5 {
            p = p.with_log_start_offset(7);
        }
        if v >= 17 {
            p = p.with_replica_directory_id(TOPIC_ID);
        }
        if v >= 18 {
            p = p.with_high_watermark(99);
        }
        p
    };
    let mut t = FetchTopic::default()
        .with_partitions(vec![partition(0), partition(1)])
        .with_unknown_tagged_fields(tags(f));
    t = if v <= 12 {
        t.with_topic(topic("orders"))
    } else {
        t.with_topic_id(TOPIC_ID)
    };
    let mut r = FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_isolation_level(1)
        .with_topics(vec![t.clone(), t])
        .with_unknown_tagged_fields(tags(f));
    if v <= 14 {
        r = r.with_replica_id((-1).into());
    }
    if v >= 7 {
        let mut forgotten = ForgottenTopic::default()
            .with_partitions(vec![4, 5, 6])
            .with_unknown_tagged_fields(tags(f));
        forgotten = if v <= 12 {
            forgotten.with_topic(topic("old"))
        } else {
            forgotten.with_topic_id(TOPIC_ID)
        };
        r = r
            .with_session_id(12)
            .with_session_epoch(3)
            .with_forgotten_topics_data(vec![forgotten]);
    }
    if v >= 11 {
        r = r.with_rack_id(text("rack-a"));
    }
    if v >= 12 {
        r = r.with_cluster_id(Some(text("cluster-x")));
    }
    if v >= 15 {
        r = r.with_replica_state(
            ReplicaState::default()
                .with_replica_id(2.into())
                .with_replica_epoch(9),
        );
    }
    r
}

fn list_offsets(v: i16) -> ListOffsetsRequest {
    let f = v >= 6;
    let partition = |index| {
        let p = ListOffsetsPartition::default()
            .with_partition_index(index)
            .with_timestamp(-1)
            .with_unknown_tagged_fields(tags(f));
        if v >= 4 {
            p.with_current_leader_epoch(5)
        } else {
            p
        }
    };
    let t = ListOffsetsTopic::default()
        .with_name(topic("orders"))
        .with_partitions(vec![partition(0), partition(1)])
        .with_unknown_tagged_fields(tags(f));
    let mut r = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![t])
        .with_unknown_tagged_fields(tags(f));
    if v >= 2 {
        r = r.with_isolation_level(1);
    }
    if v >= 10 {
        r = r.with_timeout_ms(1000);
    }
    r
}

fn metadata(v: i16) -> MetadataRequest {
    let f = v >= 9;
    let mut topics = vec![
        MetadataRequestTopic::default()
            .with_name(Some(topic("orders")))
            .with_unknown_tagged_fields(tags(f)),
    ];
    if v >= 10 {
        topics.push(
            MetadataRequestTopic::default()
                .with_topic_id(TOPIC_ID)
                .with_name(None)
                .with_unknown_tagged_fields(tags(f)),
        );
    }
    let mut r = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_unknown_tagged_fields(tags(f));
    if v >= 4 {
        r = r.with_allow_auto_topic_creation(false);
    }
    if (8..=10).contains(&v) {
        r = r.with_include_cluster_authorized_operations(true);
    }
    if v >= 8 {
        r = r.with_include_topic_authorized_operations(true);
    }
    r
}

fn offset_commit(v: i16) -> OffsetCommitRequest {
    let f = v >= 8;
    let partition = |index, metadata| {
        let p = OffsetCommitRequestPartition::default()
            .with_partition_index(index)
            .with_committed_offset(1234)
            .with_committed_metadata(metadata)
            .with_unknown_tagged_fields(tags(f));
        if v >= 6 {
            p.with_committed_leader_epoch(4)
        } else {
            p
        }
    };
    let t = OffsetCommitRequestTopic::default()
        .with_name(topic("orders"))
        .with_partitions(vec![partition(0, Some(text("meta"))), partition(1, None)])
        .with_unknown_tagged_fields(tags(f));
    let mut r = OffsetCommitRequest::default()
        .with_group_id(group("billing"))
        .with_generation_id_or_member_epoch(8)
        .with_member_id(text("member-1"))
        .with_topics(vec![t])
        .with_unknown_tagged_fields(tags(f));
    if v >= 7 {
        r = r.with_group_instance_id(Some(text("instance-1")));
    }
    if v <= 4 {
        r = r.with_retention_time_ms(60_000);
    }
    r
}

fn offset_fetch(v: i16) -> OffsetFetchRequest {
    let f = v >= 6;
    let mut r = OffsetFetchRequest::default().with_unknown_tagged_fields(tags(f));
    if v <= 7 {
        let t = OffsetFetchRequestTopic::default()
            .with_name(topic("orders"))
            .with_partition_indexes(vec![0, 1, 2])
            .with_unknown_tagged_fields(tags(f));
        r = r.with_group_id(group("billing")).with_topics(Some(vec![t]));
    } else {
        let t = OffsetFetchRequestTopics::default()
            .with_name(topic("orders"))
            .with_partition_indexes(vec![0, 1, 2])
            .with_unknown_tagged_fields(tags(f));
        let mut g = OffsetFetchRequestGroup::default()
            .with_group_id(group("billing"))
            .with_topics(Some(vec![t]))
            .with_unknown_tagged_fields(tags(f));
        if v >= 9 {
            g = g
                .with_member_id(Some(text("member-1")))
                .with_member_epoch(3);
        }
        let all = OffsetFetchRequestGroup::default()
            .with_group_id(group("audit"))
            .with_topics(None)
            .with_unknown_tagged_fields(tags(f));
        r = r.with_groups(vec![g, all]);
    }
    if v >= 7 {
        r = r.with_require_stable(true);
    }
    r
}

fn find_coordinator(v: i16) -> FindCoordinatorRequest {
    let mut r = FindCoordinatorRequest::default().with_unknown_tagged_fields(tags(v >= 3));
    if v <= 3 {
        r = r.with_key(text("billing"));
    }
    if v >= 1 {
        r = r.with_key_type(0);
    }
    if v >= 4 {
        r = r.with_coordinator_keys(vec![text("billing"), text("audit")]);
    }
    r
}

fn join_group(v: i16) -> JoinGroupRequest {
    let f = v >= 6;
    let protocol = |name| {
        JoinGroupRequestProtocol::default()
            .with_name(text(name))
            .with_metadata(Bytes::from_static(b"\x00\x01subscription"))
            .with_unknown_tagged_fields(tags(f))
    };
    let mut r = JoinGroupRequest::default()
        .with_group_id(group("billing"))
        .with_session_timeout_ms(10_000)
        .with_member_id(text("member-1"))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![protocol("range"), protocol("roundrobin")])
        .with_unknown_tagged_fields(tags(f));
    if v >= 1 {
        r = r.with_rebalance_timeout_ms(30_000);
    }
    if v >= 5 {
        r = r.with_group_instance_id(Some(text("instance-1")));
    }
    if v >= 8 {
        r = r.with_reason(Some(text("rebalance")));
    }
    r
}

fn heartbeat(v: i16) -> HeartbeatRequest {
    let r = HeartbeatRequest::default()
        .with_group_id(group("billing"))
        .with_generation_id(8)
        .with_member_id(text("member-1"))
        .with_unknown_tagged_fields(tags(v >= 4));
    if v >= 3 {
        r.with_group_instance_id(Some(text("instance-1")))
    } else {
        r
    }
}

fn leave_group(v: i16) -> LeaveGroupRequest {
    let f = v >= 4;
    let r = LeaveGroupRequest::default()
        .with_group_id(group("billing"))
        .with_unknown_tagged_fields(tags(f));
    if v <= 2 {
        return r.with_member_id(text("member-1"));
    }
    let member = |id, instance| {
        let m = MemberIdentity::default()
            .with_member_id(text(id))
            .with_group_instance_id(instance)
            .with_unknown_tagged_fields(tags(f));
        if v >= 5 {
            m.with_reason(Some(text("shutdown")))
        } else {
            m
        }
    };
    r.with_members(vec![
        member("member-1", Some(text("instance-1"))),
        member("member-2", None),
    ])
}

fn sync_group(v: i16) -> SyncGroupRequest {
    let f = v >= 4;
    let assignment = |member| {
        SyncGroupRequestAssignment::default()
            .with_member_id(text(member))
            .with_assignment(Bytes::from_static(b"\x00\x01assignment"))
            .with_unknown_tagged_fields(tags(f))
    };
    let mut r = SyncGroupRequest::default()
        .with_group_id(group("billing"))
        .with_generation_id(8)
        .with_member_id(text("member-1"))
        .with_assignments(vec![assignment("member-1"), assignment("member-2")])
        .with_unknown_tagged_fields(tags(f));
    if v >= 3 {
        r = r.with_group_instance_id(Some(text("instance-1")));
    }
    if v >= 5 {
        r = r
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")));
    }
    r
}

fn describe_groups(v: i16) -> DescribeGroupsRequest {
    let r = DescribeGroupsRequest::default()
        .with_groups(vec![group("billing"), group("audit")])
        .with_unknown_tagged_fields(tags(v >= 5));
    if v >= 3 {
        r.with_include_authorized_operations(true)
    } else {
        r
    }
}

fn list_groups(v: i16) -> ListGroupsRequest {
    let mut r = ListGroupsRequest::default().with_unknown_tagged_fields(tags(v >= 3));
    if v >= 4 {
        r = r.with_states_filter(vec![text("Stable"), text("Empty")]);
    }
    if v >= 5 {
        r = r.with_types_filter(vec![text("classic")]);
    }
    r
}

fn api_versions(v: i16) -> ApiVersionsRequest {
    let r = ApiVersionsRequest::default().with_unknown_tagged_fields(tags(v >= 3));
    if v >= 3 {
        r.with_client_software_name(text("tally-test"))
            .with_client_software_version(text("0.1.0"))
    } else {
        r
    }
}

fn create_topics(v: i16) -> CreateTopicsRequest {
    let f = v >= 5;
    let assignment = |index| {
        CreatableReplicaAssignment::default()
            .with_partition_index(index)
            .with_broker_ids(vec![1.into(), 2.into()])
            .with_unknown_tagged_fields(tags(f))
    };
    let config = |name, value| {
        CreatableTopicConfig::default()
            .with_name(text(name))
            .with_value(value)
            .with_unknown_tagged_fields(tags(f))
    };
    let t = CreatableTopic::default()
        .with_name(topic("orders"))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_assignments(vec![assignment(0), assignment(1)])
        .with_configs(vec![
            config("retention.ms", Some(text("60000"))),
            config("cleanup.policy", None),
        ])
        .with_unknown_tagged_fields(tags(f));
    CreateTopicsRequest::default()
        .with_topics(vec![t])
        .with_timeout_ms(5000)
        .with_validate_only(true)
        .with_unknown_tagged_fields(tags(f))
}

fn delete_topics(v: i16) -> DeleteTopicsRequest {
    let f = v >= 4;
    let r = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_unknown_tagged_fields(tags(f));
    if v >= 6 {
        r.with_topics(vec![
            DeleteTopicState::default()
                .with_name(Some(topic("orders")))
                .with_unknown_tagged_fields(tags(f)),
            DeleteTopicState::default()
                .with_name(None)
                .with_topic_id(TOPIC_ID)
                .with_unknown_tagged_fields(tags(f)),
        ])
    } else {
        r.with_topic_names(vec![topic("orders"), topic("payments")])
    }
}

fn init_producer_id(v: i16) -> InitProducerIdRequest {
    let r = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(text("txn-1"))))
        .with_transaction_timeout_ms(60_000)
        .with_unknown_tagged_fields(tags(v >= 2));
    if v >= 3 {
        r.with_producer_id(77.into()).with_producer_epoch(2)
    } else {
        r
    }
}

fn describe_configs(v: i16) -> DescribeConfigsRequest {
    let f = v >= 4;
    let resource = |name, keys| {
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(text(name))
            .with_configuration_keys(keys)
            .with_unknown_tagged_fields(tags(f))
    };
    let r = DescribeConfigsRequest::default()
        .with_resources(vec![
            resource(
                "orders",
                Some(vec![text("retention.ms"), text("cleanup.policy")]),
            ),
            resource("payments", None),
        ])
        .with_include_synonyms(true)
        .with_unknown_tagged_fields(tags(f));
    if v >= 3 {
        r.with_include_documentation(true)
    } else {
        r
    }
}

fn delete_groups(v: i16) -> DeleteGroupsRequest {
    DeleteGroupsRequest::default()
        .with_groups_names(vec![group("billing"), group("audit")])
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn describe_acls(v: i16) -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_type_filter(2)
        .with_resource_name_filter(Some(text("orders")))
        .with_pattern_type_filter(3)
        .with_principal_filter(Some(text("User:alice")))
        .with_host_filter(None)
        .with_operation(3)
        .with_permission_type(3)
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn acl_creation(v: i16) -> AclCreation {
    AclCreation::default()
        .with_resource_type(2)
        .with_resource_name(text("orders"))
        .with_resource_pattern_type(3)
        .with_principal(text("User:alice"))
        .with_host(text("*"))
        .with_operation(3)
        .with_permission_type(3)
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn create_acls(v: i16) -> CreateAclsRequest {
    CreateAclsRequest::default()
        .with_creations(vec![acl_creation(v), acl_creation(v)])
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn delete_acls(v: i16) -> DeleteAclsRequest {
    let filter = DeleteAclsFilter::default()
        .with_resource_type_filter(1)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(1)
        .with_principal_filter(Some(text("User:bob")))
        .with_host_filter(Some(text("10.0.0.1")))
        .with_operation(1)
        .with_permission_type(1)
        .with_unknown_tagged_fields(tags(v >= 2));
    DeleteAclsRequest::default()
        .with_filters(vec![filter.clone(), filter])
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn describe_log_dirs(v: i16) -> DescribeLogDirsRequest {
    DescribeLogDirsRequest::default()
        .with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(topic("orders"))
                .with_partitions(vec![0, 1, 2])
                .with_unknown_tagged_fields(tags(v >= 2)),
        ]))
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn create_partitions(v: i16) -> CreatePartitionsRequest {
    let assignment = CreatePartitionsAssignment::default()
        .with_broker_ids(vec![BrokerId(0)])
        .with_unknown_tagged_fields(tags(v >= 2));
    CreatePartitionsRequest::default()
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(topic("orders"))
                .with_count(5)
                .with_assignments(Some(vec![assignment.clone(), assignment]))
                .with_unknown_tagged_fields(tags(v >= 2)),
            CreatePartitionsTopic::default()
                .with_name(topic("billing"))
                .with_count(2)
                .with_assignments(None)
                .with_unknown_tagged_fields(tags(v >= 2)),
        ])
        .with_timeout_ms(30_000)
        .with_validate_only(true)
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn offset_delete(_v: i16) -> OffsetDeleteRequest {
    OffsetDeleteRequest::default()
        .with_group_id(group("billing"))
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0),
                    OffsetDeleteRequestPartition::default().with_partition_index(2),
                ]),
        ])
}

fn alter_configs(v: i16) -> AlterConfigsRequest {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let config = |name: &'static str, value: Option<&'static str>| {
        AlterableConfig::default()
            .with_name(text(name))
            .with_value(value.map(text))
            .with_unknown_tagged_fields(tags(v >= 2))
    };
    AlterConfigsRequest::default()
        .with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(text("orders"))
                .with_configs(vec![
                    config("retention.ms", Some("60000")),
                    config("compression.type", None),
                ])
                .with_unknown_tagged_fields(tags(v >= 2)),
        ])
        .with_validate_only(true)
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn incremental_alter_configs(v: i16) -> IncrementalAlterConfigsRequest {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    let config = |name: &'static str, op: i8, value: Option<&'static str>| {
        AlterableConfig::default()
            .with_name(text(name))
            .with_config_operation(op)
            .with_value(value.map(text))
            .with_unknown_tagged_fields(tags(v >= 1))
    };
    IncrementalAlterConfigsRequest::default()
        .with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(text("orders"))
                .with_configs(vec![
                    config("retention.ms", 0, Some("60000")),
                    config("segment.ms", 1, None),
                ])
                .with_unknown_tagged_fields(tags(v >= 1)),
        ])
        .with_validate_only(false)
        .with_unknown_tagged_fields(tags(v >= 1))
}

fn add_partitions_to_txn(v: i16) -> AddPartitionsToTxnRequest {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    let f = v >= 4;
    let topics = vec![
        AddPartitionsToTxnTopic::default()
            .with_name(topic("orders"))
            .with_partitions(vec![0, 3])
            .with_unknown_tagged_fields(tags(f)),
    ];
    let r = AddPartitionsToTxnRequest::default().with_unknown_tagged_fields(tags(f));
    if v >= 4 {
        r.with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(text("txn-1")))
                .with_producer_id(7.into())
                .with_producer_epoch(1)
                .with_verify_only(true)
                .with_topics(topics)
                .with_unknown_tagged_fields(tags(f)),
        ])
    } else {
        r.with_v3_and_below_transactional_id(TransactionalId(text("txn-1")))
            .with_v3_and_below_producer_id(7.into())
            .with_v3_and_below_producer_epoch(1)
            .with_v3_and_below_topics(topics)
    }
}

fn add_offsets_to_txn(v: i16) -> AddOffsetsToTxnRequest {
    AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(text("txn-1")))
        .with_producer_id(7.into())
        .with_producer_epoch(1)
        .with_group_id(group("billing"))
        .with_unknown_tagged_fields(tags(v >= 3))
}

fn end_txn(v: i16) -> EndTxnRequest {
    EndTxnRequest::default()
        .with_transactional_id(TransactionalId(text("txn-1")))
        .with_producer_id(7.into())
        .with_producer_epoch(1)
        .with_committed(true)
        .with_unknown_tagged_fields(tags(v >= 3))
}

fn txn_offset_commit(v: i16) -> TxnOffsetCommitRequest {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let f = v >= 3;
    let r = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(text("txn-1")))
        .with_group_id(group("billing"))
        .with_producer_id(7.into())
        .with_producer_epoch(1)
        .with_topics(vec![
            TxnOffsetCommitRequestTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![
                    TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(2)
                        .with_committed_offset(99)
                        .with_committed_leader_epoch(if v >= 2 { 4 } else { -1 })
                        .with_committed_metadata(Some(text("m")))
                        .with_unknown_tagged_fields(tags(f)),
                ])
                .with_unknown_tagged_fields(tags(f)),
        ])
        .with_unknown_tagged_fields(tags(f));
    if v >= 3 {
        r.with_generation_id(5)
            .with_member_id(text("member-1"))
            .with_group_instance_id(Some(text("static-1")))
    } else {
        r
    }
}

fn describe_transactions(_v: i16) -> DescribeTransactionsRequest {
    DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![
            TransactionalId(text("txn-1")),
            TransactionalId(text("txn-2")),
        ])
        .with_unknown_tagged_fields(tags(true))
}

fn list_transactions(v: i16) -> ListTransactionsRequest {
    let r = ListTransactionsRequest::default()
        .with_state_filters(vec![text("Ongoing")])
        .with_producer_id_filters(vec![7.into(), 9.into()])
        .with_unknown_tagged_fields(tags(true));
    let r = if v >= 1 {
        r.with_duration_filter(5_000)
    } else {
        r
    };
    if v >= 2 {
        r.with_transactional_id_pattern(Some(text("txn-.*")))
    } else {
        r
    }
}

fn consumer_group_heartbeat(v: i16) -> ConsumerGroupHeartbeatRequest {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    let r = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(group("billing"))
        .with_member_id(text("member-1"))
        .with_member_epoch(3)
        .with_instance_id(Some(text("static-1")))
        .with_rack_id(Some(text("rack-a")))
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![topic("orders"), topic("audit")]))
        .with_server_assignor(Some(text("uniform")))
        .with_topic_partitions(Some(vec![
            TopicPartitions::default()
                .with_topic_id(TOPIC_ID)
                .with_partitions(vec![0, 2])
                .with_unknown_tagged_fields(tags(true)),
        ]))
        .with_unknown_tagged_fields(tags(true));
    if v >= 1 {
        r.with_subscribed_topic_regex(Some(text("ord.*")))
    } else {
        r
    }
}

fn consumer_group_describe(_v: i16) -> ConsumerGroupDescribeRequest {
    ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![group("billing"), group("audit")])
        .with_include_authorized_operations(true)
        .with_unknown_tagged_fields(tags(true))
}

fn delete_records(v: i16) -> DeleteRecordsRequest {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    DeleteRecordsRequest::default()
        .with_topics(vec![
            DeleteRecordsTopic::default()
                .with_name(topic("orders"))
                .with_partitions(vec![
                    DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(42)
                        .with_unknown_tagged_fields(tags(v >= 2)),
                    DeleteRecordsPartition::default()
                        .with_partition_index(1)
                        .with_offset(-1)
                        .with_unknown_tagged_fields(tags(v >= 2)),
                ])
                .with_unknown_tagged_fields(tags(v >= 2)),
        ])
        .with_timeout_ms(30_000)
        .with_unknown_tagged_fields(tags(v >= 2))
}

fn describe_cluster(v: i16) -> DescribeClusterRequest {
    DescribeClusterRequest::default()
        .with_include_cluster_authorized_operations(true)
        .with_endpoint_type(1)
        .with_include_fenced_brokers(v >= 2)
        .with_unknown_tagged_fields(tags(true))
}

fn encode(message: &impl Encodable, version: i16) -> Vec<u8> {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("kafka-protocol cannot encode version {version}: {e}"));
    buf.to_vec()
}

/// Dispatches on the API key to the request type, as the server does.
macro_rules! for_request_type {
    ($api_key:expr, $action:ident) => {
        match $api_key {
            0 => $action!(ProduceRequest, produce),
            1 => $action!(FetchRequest, fetch),
            2 => $action!(ListOffsetsRequest, list_offsets),
            3 => $action!(MetadataRequest, metadata),
            8 => $action!(OffsetCommitRequest, offset_commit),
            9 => $action!(OffsetFetchRequest, offset_fetch),
            10 => $action!(FindCoordinatorRequest, find_coordinator),
            11 => $action!(JoinGroupRequest, join_group),
            12 => $action!(HeartbeatRequest, heartbeat),
            13 => $action!(LeaveGroupRequest, leave_group),
            14 => $action!(SyncGroupRequest, sync_group),
            15 => $action!(DescribeGroupsRequest, describe_groups),
            16 => $action!(ListGroupsRequest, list_groups),
            18 => $action!(ApiVersionsRequest, api_versions),
            19 => $action!(CreateTopicsRequest, create_topics),
            20 => $action!(DeleteTopicsRequest, delete_topics),
            21 => $action!(DeleteRecordsRequest, delete_records),
            22 => $action!(InitProducerIdRequest, init_producer_id),
            29 => $action!(DescribeAclsRequest, describe_acls),
            30 => $action!(CreateAclsRequest, create_acls),
            31 => $action!(DeleteAclsRequest, delete_acls),
            32 => $action!(DescribeConfigsRequest, describe_configs),
            33 => $action!(AlterConfigsRequest, alter_configs),
            35 => $action!(DescribeLogDirsRequest, describe_log_dirs),
            37 => $action!(CreatePartitionsRequest, create_partitions),
            42 => $action!(DeleteGroupsRequest, delete_groups),
            44 => $action!(IncrementalAlterConfigsRequest, incremental_alter_configs),
            47 => $action!(OffsetDeleteRequest, offset_delete),
            60 => $action!(DescribeClusterRequest, describe_cluster),
            24 => $action!(AddPartitionsToTxnRequest, add_partitions_to_txn),
            25 => $action!(AddOffsetsToTxnRequest, add_offsets_to_txn),
            26 => $action!(EndTxnRequest, end_txn),
            28 => $action!(TxnOffsetCommitRequest, txn_offset_commit),
            65 => $action!(DescribeTransactionsRequest, describe_transactions),
            66 => $action!(ListTransactionsRequest, list_transactions),
            68 => $action!(ConsumerGroupHeartbeatRequest, consumer_group_heartbeat),
            69 => $action!(ConsumerGroupDescribeRequest, consumer_group_describe),
            other => panic!("no request type for api key {other}"),
        }
    };
}

/// The populated request of `api_key` in `version`, encoded.
fn populated(api_key: i16, version: i16) -> Vec<u8> {
    macro_rules! build {
        ($ty:ty, $builder:ident) => {
            encode(&$builder(version), version)
        };
    }
    for_request_type!(api_key, build)
}

/// The default (empty) request of `api_key` in `version`, encoded.
fn empty(api_key: i16, version: i16) -> Vec<u8> {
    macro_rules! build {
        ($ty:ty, $builder:ident) => {
            encode(&<$ty>::default(), version)
        };
    }
    for_request_type!(api_key, build)
}

/// kafka-protocol's decode of a body: only ever called on bodies the guard accepted.
fn decode(api_key: i16, version: i16, body: &[u8]) -> Result<(), String> {
    let mut buf = Bytes::copy_from_slice(body);
    macro_rules! decode_as {
        ($ty:ty, $builder:ident) => {
            <$ty>::decode(&mut buf, version)
                .map(drop)
                .map_err(|e| e.to_string())
        };
    }
    for_request_type!(api_key, decode_as)
}

/// kafka-protocol's supported versions of the request type.
fn message_versions(api_key: i16) -> (i16, i16) {
    macro_rules! versions {
        ($ty:ty, $builder:ident) => {
            (
                <$ty as Message>::VERSIONS.min,
                <$ty as Message>::VERSIONS.max,
            )
        };
    }
    for_request_type!(api_key, versions)
}

fn every_version() -> impl Iterator<Item = (i16, i16)> {
    guarded_apis()
        .iter()
        .flat_map(|&(key, min, max)| (min..=max).map(move |v| (key, v)))
}

/// Every populated and empty request of every guarded API and version.
fn corpus() -> Vec<(i16, i16, Vec<u8>)> {
    every_version()
        .flat_map(|(key, v)| [(key, v, populated(key, v)), (key, v, empty(key, v))])
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
fn guards_exactly_the_brokers_apis_over_what_kafka_protocol_decodes() {
    let keys: Vec<i16> = guarded_apis().iter().map(|&(key, _, _)| key).collect();
    assert_eq!(
        keys,
        [
            0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 24, 25, 26, 28, 29,
            30, 31, 32, 33, 35, 37, 42, 44, 47, 60, 65, 66, 68, 69
        ]
    );
    for &(key, min, max) in guarded_apis() {
        let api = ApiKey::try_from(key).expect("a known api key");
        let advertised = api.valid_versions();
        // The guard covers what kafka-protocol's request type decodes, which for
        // a few APIs stops short of the version range ApiKey advertises.
        assert_eq!((min, max), message_versions(key), "api key {key}");
        assert_eq!(min, advertised.min, "api key {key}");
        assert!(max <= advertised.max, "api key {key}");
        for v in min..=max {
            assert_eq!(
                request_header_version(key, v),
                Ok(api.request_header_version(v)),
                "header version of api key {key} v{v}"
            );
        }
    }
}

#[test]
fn accepts_every_request_kafka_protocol_encodes_and_it_decodes_them() {
    let mut checked = 0;
    for (key, v) in every_version() {
        for (what, body) in [("populated", populated(key, v)), ("empty", empty(key, v))] {
            if let Err(e) = check_request_body(key, v, &body) {
                panic!(
                    "api key {key} v{v} ({what}, {} bytes) refused: {e}",
                    body.len()
                );
            }
            if let Err(e) = decode(key, v, &body) {
                panic!("api key {key} v{v} ({what}) accepted but kafka-protocol fails: {e}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * every_version().count());
}

#[test]
fn populated_requests_carry_their_nested_and_tagged_parts() {
    // The agreement test is only as good as its corpus: these requests must hold
    // unknown tags and every tagged field kafka-protocol decodes by type.
    let produce_v9 = populated(0, 9);
    assert!(
        produce_v9.windows(5).any(|w| w == b"seven"),
        "unknown tagged fields present"
    );
    let body = populated(1, 18);
    assert_eq!(check_request_body(1, 18, &body), Ok(()));
    let fetch = FetchRequest::decode(&mut Bytes::from(body), 18).expect("decodes");
    assert_eq!(fetch.cluster_id, Some(text("cluster-x")));
    assert_eq!(fetch.replica_state.replica_epoch, 9);
    let partition = &fetch.topics[1].partitions[1];
    assert_eq!(partition.replica_directory_id, TOPIC_ID);
    assert_eq!(partition.high_watermark, 99);
    assert_eq!(partition.unknown_tagged_fields, tags(true));
}

#[test]
fn headers_kafka_protocol_encodes_are_accepted_with_their_length() {
    for header_version in [1, 2] {
        for client_id in [Some(text("tally-client")), None] {
            let mut header = RequestHeader::default()
                .with_request_api_key(3)
                .with_request_api_version(12)
                .with_correlation_id(77)
                .with_client_id(client_id);
            if header_version == 2 {
                header = header.with_unknown_tagged_fields(tags(true));
            }
            let mut frame = encode(&header, header_version);
            let header_len = frame.len();
            frame.extend(populated(3, 12));
            assert_eq!(check_request_header(&frame, header_version), Ok(header_len));
            assert_eq!(check_request_body(3, 12, &frame[header_len..]), Ok(()));
            for cut in 0..header_len {
                assert!(
                    check_request_header(&frame[..cut], header_version).is_err(),
                    "header v{header_version} cut at {cut} accepted"
                );
            }
        }
    }
}

#[test]
fn header_with_a_client_id_longer_than_the_frame_is_refused() {
    let frame = [0, 0, 0, 3, 0, 0, 0, 1, 0x7f, 0xff, b'a'];
    let err = check_request_header(&frame, 1).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "client_id: string length 32767 exceeds the 1 bytes left"
    );
    assert_eq!(
        check_request_header(&frame, 0),
        Err(GuardError::UnsupportedHeaderVersion(0))
    );
}

// Regression: these bodies abort a process that hands them to kafka-protocol
// 0.18, so they are only ever given to the guard here.

#[test]
fn refuses_the_produce_v3_body_that_aborts_kafka_protocol() {
    let body: [u8; 14] = [
        0xff, 0xff, // transactional_id: null
        0x00, 0x01, // acks
        0x00, 0x00, 0x75, 0x30, // timeout_ms
        0x7f, 0xff, 0xff, 0xff, // topic_data: 2147483647 topics
        0x00, 0x00,
    ];
    let err = check_request_body(0, 3, &body).expect_err("refused");
    assert_eq!(
        err,
        GuardError::Malformed {
            path: "topic_data".into(),
            problem: Problem::ArrayTooLong {
                length: 0x7fff_ffff,
                left: 2,
                min_element: 6
            },
        }
    );
    assert_eq!(
        err.to_string(),
        "topic_data: array length 2147483647 exceeds the 2 bytes left (each element takes at least 6 bytes)"
    );
}

#[test]
fn refuses_the_metadata_v1_body_that_aborts_kafka_protocol() {
    let body = [0x7f, 0xff, 0xff, 0xff, 0x00, 0x00];
    let err = check_request_body(3, 1, &body).expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("topics: array length 2147483647 exceeds"),
        "{err}"
    );
}

#[test]
fn refuses_huge_compact_lengths_in_flexible_versions() {
    // Produce v9: null transactional id, acks, timeout, then a compact array
    // length of u32::MAX (4294967294 topics).
    let body = [
        0x00, 0x00, 0x01, 0x00, 0x00, 0x75, 0x30, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00,
    ];
    let err = check_request_body(0, 9, &body).expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("topic_data: array length 4294967294 exceeds"),
        "{err}"
    );

    // Metadata v12: a topics array of one element whose name claims 2^28 bytes.
    let body = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x81, 0x80, 0x80, 0x80, 0x01, 0x00, 0x00, 0x00,
    ];
    let err = check_request_body(3, 12, &body).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "topics[0].name: string length 268435456 exceeds the 3 bytes left"
    );
}

#[test]
fn refuses_a_nested_length_deep_inside_a_valid_prefix() {
    // Fetch v4 with one topic whose partition array claims a billion partitions.
    let mut body = Vec::new();
    body.extend((-1i32).to_be_bytes()); // replica_id
    body.extend(500i32.to_be_bytes()); // max_wait_ms
    body.extend(1i32.to_be_bytes()); // min_bytes
    body.extend(1024i32.to_be_bytes()); // max_bytes
    body.push(0); // isolation_level
    body.extend(1i32.to_be_bytes()); // one topic
    body.extend(6i16.to_be_bytes());
    body.extend(b"orders");
    body.extend(1_000_000_000i32.to_be_bytes());
    body.extend([0; 16]);
    let err = check_request_body(1, 4, &body).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "topics[0].partitions: array length 1000000000 exceeds the 16 bytes left (each element takes at least 16 bytes)"
    );
}

#[test]
fn refuses_unknown_apis_and_versions_by_name() {
    let err = check_request_body(99, 0, &[]).expect_err("refused");
    assert!(
        err.to_string().starts_with("api key 99 is not supported"),
        "{err}"
    );
    assert_eq!(
        check_request_body(0, 2, &[])
            .expect_err("refused")
            .to_string(),
        "Produce (api key 0) version 2 is not supported: versions 3 to 13 are"
    );
    assert!(matches!(
        check_request_body(8, 10, &[]),
        Err(GuardError::UnsupportedVersion {
            version: 10,
            min: 2,
            max: 9,
            ..
        })
    ));
    assert_eq!(
        request_header_version(18, 9),
        Ok(2),
        "future ApiVersions stays flexible"
    );
    assert!(request_header_version(99, 0).is_err());
}

#[test]
fn tolerates_trailing_bytes_as_kafka_does() {
    let mut body = populated(12, 2);
    body.push(0);
    assert_eq!(check_request_body(12, 2, &body), Ok(()));
    // librdkafka's all-topics Metadata v12: null topics, three flags/tags, then three stray bytes.
    assert_eq!(check_request_body(3, 12, &[0, 0, 0, 0, 1, 0, 0]), Ok(()));
}

#[test]
fn bounds_the_total_number_of_elements() {
    // DeleteGroups v0 with empty group names: two bytes an element.
    let names = |n: u64| {
        let mut body = Vec::with_capacity(4 + 2 * n as usize);
        body.extend(u32::try_from(n).expect("fits").to_be_bytes());
        body.resize(4 + 2 * n as usize, 0);
        body
    };
    assert_eq!(check_request_body(42, 0, &names(MAX_ELEMENTS)), Ok(()));
    let err = check_request_body(42, 0, &names(MAX_ELEMENTS + 1)).expect_err("refused");
    assert_eq!(
        err,
        GuardError::Malformed {
            path: "groups_names".into(),
            problem: Problem::TooManyElements
        }
    );
}

#[test]
fn every_truncation_of_a_valid_request_is_refused() {
    for (key, v, body) in corpus() {
        for cut in 0..body.len() {
            // The guard reads a prefix exactly as it reads the whole, so it must
            // run out of bytes before the last field.
            if check_request_body(key, v, &body[..cut]).is_ok() {
                panic!("api key {key} v{v} cut at {cut} of {} accepted", body.len());
            }
        }
    }
}

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, body: &mut Vec<u8>, corpus: &[(i16, i16, Vec<u8>)]) {
    const HUGE_I32: [[u8; 4]; 5] = [
        [0x7f, 0xff, 0xff, 0xff],
        [0xff, 0xff, 0xff, 0xff],
        [0x80, 0x00, 0x00, 0x00],
        [0xff, 0xff, 0xff, 0xfe],
        [0x00, 0x10, 0x00, 0x00],
    ];
    const HUGE_VARINTS: [&[u8]; 4] = [
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0xff, 0xff, 0xff, 0x7f],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        &[0xff, 0xff, 0xff, 0xff, 0x1f],
    ];
    let at = rng.below(body.len());
    match rng.below(9) {
        0 if !body.is_empty() => body[at] ^= 1 << rng.below(8),
        1 if !body.is_empty() => body[at] = rng.next_u64() as u8,
        2 if body.len() >= 4 => {
            let at = rng.below(body.len() - 3);
            body[at..at + 4].copy_from_slice(&HUGE_I32[rng.below(HUGE_I32.len())]);
        }
        3 if body.len() >= 2 => {
            let at = rng.below(body.len() - 1);
            let value: i16 = [-2, -1, 0x7fff, 0x100][rng.below(4)];
            body[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        4 => {
            let varint = HUGE_VARINTS[rng.below(HUGE_VARINTS.len())];
            let end = (at + varint.len()).min(body.len());
            body.splice(at..end, varint.iter().copied());
        }
        5 => {
            let (_, _, donor) = &corpus[rng.below(corpus.len())];
            let from = rng.below(donor.len());
            let len = rng.below(donor.len() - from + 1);
            let end = (at + rng.below(8)).min(body.len());
            body.splice(at..end, donor[from..from + len].iter().copied());
        }
        6 => body.truncate(at),
        7 => {
            let len = 1 + rng.below(4);
            let end = (at + len).min(body.len());
            body.drain(at..end);
        }
        _ => body.insert(at.min(body.len()), rng.next_u64() as u8),
    }
}

#[test]
fn mutated_requests_are_refused_or_decode_without_aborting() {
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused, mut decode_errors) = (0u32, 0u32, 0u32);
    for _ in 0..50_000 {
        let (key, v, original) = &corpus[rng.below(corpus.len())];
        let mut body = original.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut body, &corpus);
        }
        match check_request_body(*key, *v, &body) {
            // Reaching the next iteration at all is the test: an oversized
            // reservation would abort the whole test process here.
            Ok(()) => {
                accepted += 1;
                if decode(*key, *v, &body).is_err() {
                    decode_errors += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    println!("accepted {accepted} (kafka-protocol errors on {decode_errors}), refused {refused}");
    assert!(accepted > 1000, "only {accepted} mutants accepted");
    // The guard is at least as strict as the decoder, so the server may treat a
    // decode error after the guard as a bug rather than a client's mistake.
    assert_eq!(
        decode_errors, 0,
        "mutants the guard accepted but kafka-protocol refused"
    );
    assert!(refused > 10_000, "only {refused} mutants refused");
}
