"""kafka-python against `tally broker`: creates a topic of 3 partitions with
KafkaAdminClient, produces with acks='all' and idempotence, uncompressed and
with each codec, reads everything back by assign() and seek(), and checks
beginning/end offsets, offsets by timestamp and the topic's partitions. Prints
a JSON result; exits 1 on any mismatch.

usage: with_kafka_python.py BOOTSTRAP TOPIC
"""

import sys
import time

import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from records import compare, finish, record, recent_base, workload

bootstrap, topic = sys.argv[1], sys.argv[2]
mismatches = []
result = {"client": "kafka-python " + kafka.__version__, "topic": topic, "mismatches": mismatches}


def check(what, got, want):
    result.setdefault("checks", {})[what] = {"got": got, "want": want}
    if got != want:
        mismatches.append(f"{what}: got {got!r}, want {want!r}")


def attempt(what, action):
    """Runs `action`; an exception becomes a mismatch, so that the steps after
    it still run and the result shows every failure at once."""
    try:
        return action()
    except Exception as e:  # noqa: BLE001 - the JSON result says what failed
        mismatches.append(f"{what} failed: {type(e).__name__}: {e}")
        return None


admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
created = admin.create_topics(
    [NewTopic(topic, num_partitions=3, replication_factor=1)], timeout_ms=15_000
)
errors = [
    (t[0], t[1]) for t in getattr(created, "topic_errors", []) if t[1] != 0
]
check("create_topics errors", errors, [])
listed = attempt("list_topics", admin.list_topics)
if listed is not None:
    check("topic listed by the admin client", topic in listed, True)
admin.close()

base = recent_base()
# kafka-python cannot send a header whose value is null.
plan = [
    (None, workload(20, 0, base, "plain", null_header=False)),
    ("gzip", workload(10, 1, base, "gzip", null_header=False)),
    ("snappy", workload(10, 1, base + 10_000, "snappy", null_header=False)),
    ("lz4", workload(10, 2, base, "lz4", null_header=False)),
    ("zstd", workload(10, 2, base + 10_000, "zstd", null_header=False)),
]
sent = []
for codec, records in plan:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=codec,
        # Several records per batch, so codecs and in-batch offsets matter.
        linger_ms=50,
        request_timeout_ms=15_000,
    )
    futures = [
        producer.send(
            topic,
            key=r["key"],
            value=r["value"],
            headers=r["headers"],
            partition=r["partition"],
            timestamp_ms=r["timestamp"],
        )
        for r in records
    ]
    producer.flush(timeout=20)
    for r, future in zip(records, futures):
        meta = attempt(f"{codec or 'uncompressed'} send", lambda f=future: f.get(timeout=20))
        if meta is not None:
            sent.append(
                record(
                    topic,
                    meta.partition,
                    r["key"],
                    r["value"],
                    r["headers"],
                    r["timestamp"],
                    meta.offset,
                )
            )
    producer.close(timeout=10)

by_partition = {p: [r for r in sent if r["partition"] == p] for p in range(3)}
for p, records in by_partition.items():
    check(
        f"partition {p}: offsets acknowledged",
        [r["offset"] for r in records],
        list(range(len(records))),
    )
result["sent"] = sent

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=None,
    enable_auto_commit=False,
    request_timeout_ms=15_000,
)
tps = [TopicPartition(topic, p) for p in range(3)]
check(
    "partitions_for_topic",
    sorted(attempt("partitions_for_topic", lambda: consumer.partitions_for_topic(topic)) or []),
    [0, 1, 2],
)


def read(starts, want_counts):
    """Reads from explicit {partition: offset} positions (assign + seek) until
    each partition has its count or 20 s pass."""
    consumer.assign([TopicPartition(topic, p) for p in starts])
    for p, offset in starts.items():
        consumer.seek(TopicPartition(topic, p), offset)
    got = {p: [] for p in starts}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        len(got[p]) < want_counts[p] for p in starts
    ):
        for tp, messages in consumer.poll(timeout_ms=500).items():
            for m in messages:
                if m.timestamp_type != 0:
                    mismatches.append(f"offset {m.offset}: timestamp type {m.timestamp_type}")
                got[tp.partition].append(
                    record(m.topic, m.partition, m.key, m.value, m.headers, m.timestamp, m.offset)
                )
    return got


got = attempt("read from offset 0", lambda: read({0: 0, 1: 0, 2: 0}, {p: len(r) for p, r in by_partition.items()}))
if got is not None:
    result["read"] = [r for p in range(3) for r in got[p]]
    for p in range(3):
        compare(f"partition {p} from offset 0", by_partition[p], got[p], mismatches)

middle = attempt("read from mid-batch offsets", lambda: read({0: 7, 1: 15, 2: 3}, {0: 13, 1: 5, 2: 17}))
if middle is not None:
    compare("partition 0 from offset 7", by_partition[0][7:], middle[0], mismatches)
    compare("partition 1 from offset 15", by_partition[1][15:], middle[1], mismatches)
    compare("partition 2 from offset 3", by_partition[2][3:], middle[2], mismatches)

begin = attempt("beginning_offsets", lambda: consumer.beginning_offsets(tps, timeout_ms=10_000))
end = attempt("end_offsets", lambda: consumer.end_offsets(tps, timeout_ms=10_000))
for tp in tps:
    if begin is not None:
        check(f"partition {tp.partition}: beginning offset", begin.get(tp), 0)
    if end is not None:
        check(f"partition {tp.partition}: end offset", end.get(tp), len(by_partition[tp.partition]))

queries = [
    (0, base - 60_000, (0, base)),
    (0, base + 5_000, (5, base + 5_000)),
    (0, base + 5_500, (6, base + 6_000)),
    (0, base + 19_001, None),
    (1, base + 12_000, (12, base + 12_000)),
    (2, base + 9_999, (10, base + 10_000)),
]
for p, ts, want in queries:
    # One query per partition per request: Kafka refuses a partition twice.
    tp = TopicPartition(topic, p)
    answer = attempt(
        f"offsets_for_times partition {p}",
        lambda tp=tp, ts=ts: consumer.offsets_for_times({tp: ts}, timeout_ms=10_000),
    )
    if answer is not None:
        found = answer.get(tp)
        check(
            f"partition {p}: offset and timestamp for time {ts - base:+d} ms",
            None if found is None else [found.offset, found.timestamp],
            None if want is None else list(want),
        )
consumer.close()

finish(result)
