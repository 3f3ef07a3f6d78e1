"""kafka-python 3.x as a consumer-group member of `tally broker`, driven by
tests/compat_groups.rs. Every consumer uses subscribe().

usage:
  groups_kafka_python.py produce BOOTSTRAP TOPIC PER_PARTITION
      creates TOPIC with 3 partitions and writes PER_PARTITION records
      "p<partition>-<i>" to each; prints {"produced": n}.
  groups_kafka_python.py member BOOTSTRAP TOPIC GROUP NAME
      a long-lived member: prints its assignment on every change (see
      groups_events.py) until told to close.
  groups_kafka_python.py consume BOOTSTRAP TOPIC GROUP TAKE COMMIT EXTRA_MS
      processes TAKE records, commits synchronously (COMMIT: "processed" =
      the offset after the last processed record of each partition, "none",
      or explicit "0:4,1:7"), keeps polling EXTRA_MS more and reports what
      else arrived, then closes. Prints {"read", "extra", "committed",
      "mismatches"}.
"""

import logging
import os
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from groups_events import (
    HEARTBEAT_INTERVAL_MS,
    LIFETIME_S,
    MAX_POLL_INTERVAL_MS,
    SESSION_TIMEOUT_MS,
    Commands,
    emit,
    offsets_to_commit,
    parse_commits,
)

# GROUPS_LOG_LEVEL=DEBUG shows the group protocol as kafka-python sees it.
logging.basicConfig(stream=sys.stderr, level=os.environ.get("GROUPS_LOG_LEVEL", "WARNING"))
mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]


def consumer(group, name):
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=name,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


def subscribe(c):
    # kafka-python 3.0.12 can lose a rebalance: when a leader that assigned
    # before it knew the topic's partitions rejoins because they appeared,
    # performing the assignment makes need_rejoin() false while the SyncGroup
    # is in flight; if poll() times out then, the SyncGroup answer is never
    # applied, heartbeats stay off and the session expires. Knowing the
    # partitions before the first join avoids that rejoin.
    c.partitions_for_topic(topic)
    c.subscribe([topic])


def produce(per_partition):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [
        producer.send(topic, value=f"p{p}-{i}".encode(), partition=p)
        for p in range(3)
        for i in range(per_partition)
    ]
    producer.flush(20)
    failures = []
    for f in futures:
        try:
            f.get(timeout=5)
        except Exception as e:  # noqa: BLE001 - the JSON result says what failed
            failures.append(str(e))
    producer.close()
    emit({"produced": len(futures) - len(failures), "failures": failures})


def member(group, name):
    commands = Commands()
    c = consumer(group, name)
    start = time.monotonic()
    subscribe(c)
    last = None
    while not commands.closing.is_set() and time.monotonic() < start + LIFETIME_S:
        c.poll(timeout_ms=300)
        now = sorted(tp.partition for tp in c.assignment() if tp.topic == topic)
        if now != last:
            emit({"assigned": now, "ms": int((time.monotonic() - start) * 1000)})
            last = now
    c.close()
    emit({"closed": True})


def consume(group, take, commit, extra_ms):
    mismatches = []
    c = consumer(group, "tally-compat-consume")
    subscribe(c)
    read, extra = [], []
    deadline = time.monotonic() + 40
    while len(read) < take and time.monotonic() < deadline:
        for records in c.poll(timeout_ms=200).values():
            for r in records:
                if len(read) < take:
                    read.append([r.partition, r.offset, r.value.decode()])
    if len(read) < take:
        mismatches.append(f"read {len(read)} records within 40 s, want {take}")
    to_commit = offsets_to_commit(commit, read)
    committed = {}
    if to_commit:
        try:
            c.commit(
                {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in to_commit.items()}
            )
            committed = to_commit
        except Exception as e:  # noqa: BLE001 - the JSON result says what failed
            mismatches.append(f"commit failed: {type(e).__name__}: {e}")
    until = time.monotonic() + extra_ms / 1000
    while time.monotonic() < until:
        for records in c.poll(timeout_ms=100).values():
            extra.extend([r.partition, r.offset, r.value.decode()] for r in records)
    c.close(autocommit=False)
    emit({"read": read, "extra": extra, "committed": committed, "mismatches": mismatches})


if mode == "produce":
    produce(int(sys.argv[4]))
elif mode == "member":
    member(sys.argv[4], sys.argv[5])
elif mode == "consume":
    consume(sys.argv[4], int(sys.argv[5]), parse_commits(sys.argv[6]), int(sys.argv[7]))
else:
    sys.exit(f"unknown mode {mode!r}: produce, member or consume")
