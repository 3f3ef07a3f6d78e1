"""confluent-kafka's AdminClient (and kafka-python's for DescribeLogDirs) on
the admin APIs of `tally broker`, driven by tests/admin.rs.

usage: admin_confluent_kafka.py BOOTSTRAP NODE_ID

Grows a topic of 2 partitions holding records to 4, produces to a new
partition, reads the old ones back, and tries what must be refused: fewer
partitions, an unknown topic, an assignment to another broker. Then the
ACL calls, which answer SECURITY_DISABLED, DescribeLogDirs and OffsetDelete. Prints one
JSON object of what each call gave.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

bootstrap, node_id = sys.argv[1], int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": bootstrap})
out = {}


def error_of(future):
    """None, or {"code", "name", "message"} of what the future raised."""
    try:
        future.result(timeout=15)
        return None
    except KafkaException as e:
        err = e.args[0]
        return {"code": err.code(), "name": err.name(), "message": err.str()}


def partitions(topic):
    md = admin.list_topics(topic=topic, timeout=10)
    return sorted(md.topics[topic].partitions.keys())


topic = "grown"
error = error_of(admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic])
assert error is None, error
producer = Producer({"bootstrap.servers": bootstrap})
for p in (0, 1):
    for i in range(10):
        producer.produce(topic, value=f"p{p}-{i}".encode(), partition=p)
producer.flush(15)
out["before"] = partitions(topic)

out["grow"] = error_of(admin.create_partitions([NewPartitions(topic, 4)])[topic])
out["validate_only"] = error_of(admin.create_partitions([NewPartitions(topic, 9)], validate_only=True)[topic])
out["fewer"] = error_of(admin.create_partitions([NewPartitions(topic, 3)])[topic])
out["unknown"] = error_of(admin.create_partitions([NewPartitions("no-such-topic", 3)])["no-such-topic"])
out["assigned_here"] = error_of(
    admin.create_partitions([NewPartitions(topic, 5, replica_assignment=[[node_id]])])[topic]
)
out["assigned_elsewhere"] = error_of(
    admin.create_partitions([NewPartitions(topic, 6, replica_assignment=[[node_id + 7]])])[topic]
)
# The producer learns of the new partitions from its next metadata.
deadline = time.monotonic() + 15
after = partitions(topic)
while len(after) < 5 and time.monotonic() < deadline:
    time.sleep(0.2)
    after = partitions(topic)
out["after"] = after
delivered = []
# A producer that started before learns of new partitions at its next
# metadata refresh; a new one knows them at once.
producer.flush(15)
producer = Producer({"bootstrap.servers": bootstrap})
producer.produce(topic, value=b"new-partition", partition=4, on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
producer.flush(15)
out["delivered_to_new"] = [[str(e) if e else None, p, o] for e, p, o in delivered]

# The old partitions' records, read back whole.
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "admin-read-back", "enable.auto.commit": False})
read = {}
for p in range(5):
    consumer.assign([TopicPartition(topic, p, 0)])
    got = []
    deadline = time.monotonic() + 10
    want = {0: 10, 1: 10, 4: 1}.get(p, 0)
    while len(got) < want and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value().decode())
    read[str(p)] = got
consumer.close()
out["read"] = read

# CreateTopics with a replica assignment naming this broker only.
out["create_assigned_here"] = error_of(
    admin.create_topics([NewTopic("assigned", num_partitions=3, replica_assignment=[[node_id], [node_id], [node_id]])])["assigned"]
)
out["assigned_partitions"] = partitions("assigned")
out["create_assigned_elsewhere"] = error_of(
    admin.create_topics([NewTopic("elsewhere", num_partitions=2, replica_assignment=[[node_id], [node_id + 1]])])["elsewhere"]
)

# Topic configs: those Kafka tools set at creation are accepted; the log's
# take effect, the others are stored; all are described; an unknown name is
# refused, naming it; AlterConfigs and IncrementalAlterConfigs change them.
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource  # noqa: E402

wanted = {
    "compression.type": "zstd",
    "max.message.bytes": "2000000",
    "delete.retention.ms": "1000",
    "min.insync.replicas": "1",
    "retention.ms": "3600000",
}
out["create_configured"] = error_of(
    admin.create_topics([NewTopic("configured", num_partitions=1, config=wanted)])["configured"]
)
out["create_bogus_config"] = error_of(
    admin.create_topics([NewTopic("bogus", num_partitions=1, config={"no.such.config": "1"})])["bogus"]
)


def described(name):
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([res])[res].result(timeout=15)
    return {k: e.value for k, e in entries.items()}


out["described_at_creation"] = {k: described("configured").get(k) for k in wanted}

# max.message.bytes is enforced per batch.
error = error_of(
    admin.create_topics([NewTopic("small-messages", num_partitions=1, config={"max.message.bytes": "1000"})])[
        "small-messages"
    ]
)
assert error is None, error
sized = []
small_producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "retries": 0})
for size in (100, 5000):
    small_producer.produce(
        "small-messages",
        value=b"x" * size,
        on_delivery=lambda err, msg: sized.append([len(msg.value()), err.name() if err else None]),
    )
    small_producer.flush(15)
out["max_message_bytes"] = sized
res = ConfigResource(
    ConfigResource.Type.TOPIC,
    "configured",
    incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("compression.type", None, incremental_operation=AlterConfigOpType.DELETE),
    ],
)
out["incremental"] = error_of(admin.incremental_alter_configs([res])[res])
after = described("configured")
out["after_incremental"] = {k: after.get(k) for k in ("retention.ms", "compression.type", "max.message.bytes")}
res = ConfigResource(
    ConfigResource.Type.TOPIC,
    "configured",
    incremental_configs=[ConfigEntry("bogus.config", "1", incremental_operation=AlterConfigOpType.SET)],
)
out["incremental_bogus"] = error_of(admin.incremental_alter_configs([res])[res])
res = ConfigResource(
    ConfigResource.Type.TOPIC,
    "configured",
    incremental_configs=[ConfigEntry("compression.type", "brotli", incremental_operation=AlterConfigOpType.SET)],
)
out["incremental_bad_value"] = error_of(admin.incremental_alter_configs([res])[res])
res = ConfigResource(
    ConfigResource.Type.BROKER,
    str(node_id),
    incremental_configs=[ConfigEntry("log.retention.ms", "1", incremental_operation=AlterConfigOpType.SET)],
)
out["incremental_broker"] = error_of(admin.incremental_alter_configs([res])[res])
res = ConfigResource(ConfigResource.Type.TOPIC, "configured", set_config={"segment.ms": "60000"})
out["alter"] = error_of(admin.alter_configs([res])[res])
after = described("configured")
out["after_alter"] = {k: after.get(k) for k in ("segment.ms", "retention.ms", "max.message.bytes")}

# DeleteRecords: the log start moves; readers see only what is after it.
error = error_of(admin.create_topics([NewTopic("trimmed", num_partitions=1)])["trimmed"])
assert error is None, error
for i in range(10):
    producer.produce("trimmed", value=f"t-{i}".encode(), partition=0)
producer.flush(15)


def delete_records(offset):
    tp = TopicPartition("trimmed", 0, offset)
    try:
        return {"low_watermark": admin.delete_records([tp])[tp].result(timeout=15).low_watermark}
    except KafkaException as e:
        return {"name": e.args[0].name()}


out["delete_records"] = delete_records(6)
out["delete_records_again_lower"] = delete_records(3)
out["delete_records_past_end"] = delete_records(99)
reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "trimmed-reader", "auto.offset.reset": "earliest"})
reader.assign([TopicPartition("trimmed", 0, 0)])
got = []
deadline = time.monotonic() + 10
while len(got) < 4 and time.monotonic() < deadline:
    m = reader.poll(0.5)
    if m is not None and not m.error():
        got.append(m.value().decode())
low, high = reader.get_watermark_offsets(TopicPartition("trimmed", 0), timeout=10)
reader.close()
out["trimmed_read"] = got
out["trimmed_watermarks"] = [low, high]

# DescribeCluster and DescribeTopics with authorized operations: every one,
# since no authorizer limits any.
from confluent_kafka import TopicCollection  # noqa: E402

cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout=15)
out["cluster"] = {
    "controller": cluster.controller.id,
    "nodes": [n.id for n in cluster.nodes],
    "operations": sorted(op.name for op in (cluster.authorized_operations or [])),
}
described_topics = admin.describe_topics(TopicCollection(["grown"]), include_authorized_operations=True)
topic_description = described_topics["grown"].result(timeout=15)
out["topic_operations"] = sorted(op.name for op in (topic_description.authorized_operations or []))
out["topic_partitions"] = len(topic_description.partitions)

# ACLs: no authorizer runs.
anything = AclBindingFilter(
    ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
)
# librdkafka reads DescribeAcls' top-level error but answers an empty list
# without it; kafka-python hands the error over (below).
try:
    out["describe_acls_confluent"] = [str(b) for b in admin.describe_acls(anything).result(timeout=15)]
except KafkaException as e:
    out["describe_acls_confluent"] = e.args[0].name()
binding = AclBinding(
    ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW
)
out["create_acls"] = error_of(admin.create_acls([binding])[binding])
out["delete_acls"] = error_of(admin.delete_acls([anything])[anything])

# DescribeLogDirs, through kafka-python (confluent-kafka has no call for it).
from kafka import KafkaAdminClient  # noqa: E402

kp = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tally-compat-admin")
dirs = kp.describe_log_dirs()
out["log_dirs"] = repr(dirs)

from kafka.admin import (  # noqa: E402
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
)
from kafka.admin import ResourceType as KResourceType  # noqa: E402
from kafka.errors import KafkaError as KafkaPythonError  # noqa: E402

acl_filter = ACLFilter(
    principal=None,
    host="*",
    operation=ACLOperation.ANY,
    permission_type=ACLPermissionType.ANY,
    resource_pattern=ResourcePatternFilter(KResourceType.TOPIC, None, ACLResourcePatternType.ANY),
)
try:
    acls, error = kp.describe_acls(acl_filter)
    out["describe_acls"] = {"name": error.__name__, "acls": len(acls)}
except KafkaPythonError as e:
    out["describe_acls"] = {"name": type(e).__name__, "message": str(e)}

# OffsetDelete, through kafka-python: an empty group's offsets go; a live
# group keeps those of the topic it subscribes to; no group, no offsets.
from kafka import TopicPartition as KTP  # noqa: E402
from kafka.errors import KafkaError as KErr  # noqa: E402

idle = Consumer({"bootstrap.servers": bootstrap, "group.id": "idle-group", "enable.auto.commit": False})
idle.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 9)], asynchronous=False)
idle.close()
answer = kp.delete_group_offsets("idle-group", [KTP(topic, 0)])
out["offset_delete_idle"] = {f"{tp.topic}/{tp.partition}": e.__name__ for tp, e in answer.items()}
left = kp.list_group_offsets("idle-group")
left = left.get("idle-group", left)  # kafka-python 3 answers per group
out["idle_left"] = sorted(f"{tp.topic}/{tp.partition}={om.offset}" for tp, om in left.items())

live = Consumer({"bootstrap.servers": bootstrap, "group.id": "live-group", "enable.auto.commit": False, "auto.offset.reset": "earliest"})
live.subscribe([topic])
deadline = time.monotonic() + 20
while not live.assignment() and time.monotonic() < deadline:
    live.poll(0.2)
live.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
answer = kp.delete_group_offsets("live-group", [KTP(topic, 0)])
out["offset_delete_live"] = {f"{tp.topic}/{tp.partition}": e.__name__ for tp, e in answer.items()}
live.close()
try:
    kp.delete_group_offsets("no-such-group", [KTP(topic, 0)])
    out["offset_delete_unknown"] = None
except KErr as e:
    out["offset_delete_unknown"] = type(e).__name__
kp.close()

print(json.dumps(out))
