"""confluent-kafka (librdkafka) against `tally broker`: creates a topic of 3
partitions, produces with acks=all and idempotence, uncompressed and with each
codec, reads everything back by partition assignment, and checks watermarks,
offsets by timestamp and metadata. Prints a JSON result; exits 1 on any
mismatch.

usage: with_confluent_kafka.py BOOTSTRAP TOPIC
"""

import sys
import time

import confluent_kafka
from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from records import compare, finish, record, recent_base, workload

bootstrap, topic = sys.argv[1], sys.argv[2]
mismatches = []
result = {
    "client": "confluent-kafka " + confluent_kafka.version()[0],
    "librdkafka": confluent_kafka.libversion()[0],
    "topic": topic,
    "mismatches": mismatches,
}


def check(what, got, want):
    result.setdefault("checks", {})[what] = {"got": got, "want": want}
    if got != want:
        mismatches.append(f"{what}: got {got!r}, want {want!r}")


# Topic and metadata.
admin = AdminClient({"bootstrap.servers": bootstrap})
created = admin.create_topics(
    [NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=10
)
created[topic].result(timeout=20)
# All topics: librdkafka >= 2.3 pads this request with 3 bytes that Kafka
# ignores (librdkafka issue 5049), so a broker must accept them.
try:
    every = admin.list_topics(timeout=10)
    check("topic listed among all topics", topic in every.topics, True)
except Exception as e:  # noqa: BLE001 - the JSON result says what failed
    mismatches.append(f"list_topics() of all topics failed: {e}")
meta = admin.list_topics(topic=topic, timeout=10)
check("partitions", sorted(meta.topics[topic].partitions), [0, 1, 2])
check(
    "brokers",
    [(b.id, b.host, b.port) for b in meta.brokers.values()],
    [(0, bootstrap.split(":")[0], int(bootstrap.split(":")[1]))],
)
check(
    "partition leaders",
    [p.leader for _, p in sorted(meta.topics[topic].partitions.items())],
    [0, 0, 0],
)

# Produce: partition 0 uncompressed, 1 gzip then snappy, 2 lz4 then zstd.
base = recent_base()
plan = [
    ("none", workload(20, 0, base, "plain")),
    ("gzip", workload(10, 1, base, "gzip")),
    ("snappy", workload(10, 1, base + 10_000, "snappy")),
    ("lz4", workload(10, 2, base, "lz4")),
    ("zstd", workload(10, 2, base + 10_000, "zstd")),
]
sent = []
for codec, records in plan:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.codec": codec,
            # Several records per batch, so codecs and in-batch offsets matter.
            "linger.ms": 50,
        }
    )
    reports = []

    def delivered(err, msg, reports=reports):
        reports.append((err, msg))

    for r in records:
        producer.produce(
            topic,
            key=r["key"],
            value=r["value"],
            partition=r["partition"],
            timestamp=r["timestamp"],
            headers=r["headers"],
            on_delivery=delivered,
        )
    left = producer.flush(20)
    check(f"{codec}: undelivered after flush", left, 0)
    errors = [str(err) for err, _ in reports if err is not None]
    check(f"{codec}: delivery errors", errors, [])
    for r, (err, msg) in zip(records, reports):
        if err is None:
            sent.append(
                record(
                    topic,
                    msg.partition(),
                    r["key"],
                    r["value"],
                    r["headers"],
                    r["timestamp"],
                    msg.offset(),
                )
            )

by_partition = {p: [r for r in sent if r["partition"] == p] for p in range(3)}
for p, records in by_partition.items():
    check(
        f"partition {p}: offsets acknowledged",
        [r["offset"] for r in records],
        list(range(len(records))),
    )
result["sent"] = sent


def read(assignments, want_counts):
    """Reads from explicit (partition, offset) assignments until every
    partition reaches its end (partition EOF) or 20 s pass."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Set but never used: the reader neither subscribes nor commits.
            "group.id": "tally-compat-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, o) for p, o in assignments])
    got = {p: [] for p, _ in assignments}
    at_end = set()
    deadline = time.monotonic() + 20
    while len(at_end) < len(assignments) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                if len(got[msg.partition()]) >= want_counts[msg.partition()]:
                    at_end.add(msg.partition())
                continue
            mismatches.append(f"consumer error: {msg.error()}")
            break
        ts_type, ts = msg.timestamp()
        if ts_type != TIMESTAMP_CREATE_TIME:
            mismatches.append(f"offset {msg.offset()}: timestamp type {ts_type}")
        got[msg.partition()].append(
            record(
                msg.topic(),
                msg.partition(),
                msg.key(),
                msg.value(),
                msg.headers(),
                ts,
                msg.offset(),
            )
        )
    consumer.close()
    return got


# Everything, from the beginning of each partition.
got = read([(0, 0), (1, 0), (2, 0)], {p: len(r) for p, r in by_partition.items()})
result["read"] = [r for p in range(3) for r in got[p]]
for p in range(3):
    compare(f"partition {p} from offset 0", by_partition[p], got[p], mismatches)

# From the middle of a batch: the broker returns whole batches, the client
# must drop the records before the asked offset.
middle = read([(0, 7), (1, 15), (2, 3)], {0: 13, 1: 5, 2: 17})
compare("partition 0 from offset 7", by_partition[0][7:], middle[0], mismatches)
compare("partition 1 from offset 15", by_partition[1][15:], middle[1], mismatches)
compare("partition 2 from offset 3", by_partition[2][3:], middle[2], mismatches)

# Watermarks.
probe = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": "tally-compat-reader",
        "enable.auto.commit": False,
    }
)
for p in range(3):
    low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    check(f"partition {p}: watermarks", [low, high], [0, len(by_partition[p])])

# Offsets by timestamp: the first offset whose timestamp is at or after the
# one asked; past the last record, the end (-1).
queries = [
    (0, base - 60_000, 0),
    (0, base + 5_000, 5),
    (0, base + 5_500, 6),
    (0, base + 19_000, 19),
    (0, base + 19_001, OFFSET_END),
    (1, base + 12_000, 12),
    (2, base + 9_999, 10),
]
for p, ts, want in queries:
    # One query per partition per request: Kafka refuses a partition twice.
    [answer] = probe.offsets_for_times([TopicPartition(topic, p, ts)], timeout=10)
    check(f"partition {p}: offset for time {ts - base:+d} ms", answer.offset, want)
    if answer.error is not None:
        mismatches.append(f"offsets_for_times partition {p}: {answer.error}")
probe.close()

finish(result)
