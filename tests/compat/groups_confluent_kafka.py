"""confluent-kafka (librdkafka) as a consumer-group member of `tally broker`,
driven by tests/compat_groups.rs. Every consumer uses subscribe().

usage:
  groups_confluent_kafka.py produce BOOTSTRAP TOPIC PER_PARTITION
      creates TOPIC with 3 partitions and writes PER_PARTITION records
      "p<partition>-<i>" to each; prints {"produced": n}.
  groups_confluent_kafka.py member BOOTSTRAP TOPIC GROUP NAME
      a long-lived member: prints its assignment on every change (see
      groups_events.py) until told to close.
  groups_confluent_kafka.py consume BOOTSTRAP TOPIC GROUP TAKE COMMIT EXTRA_MS
      processes TAKE records, commits (COMMIT: "processed" = the offset after
      the last processed record of each partition, "none", or explicit
      "0:4,1:7") with commit(asynchronous=False), keeps polling EXTRA_MS more
      and reports what else arrived, then closes. Prints {"read", "extra",
      "committed", "mismatches"}.
  groups_confluent_kafka.py offsets BOOTSTRAP TOPIC GROUP
      prints {"committed": {partition: offset}} as committed() returns them,
      for the partitions of TOPIC that have a committed offset.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from groups_events import (
    HEARTBEAT_INTERVAL_MS,
    LIFETIME_S,
    MAX_POLL_INTERVAL_MS,
    SESSION_TIMEOUT_MS,
    Commands,
    emit,
    log,
    offsets_to_commit,
    parse_commits,
)

mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]


def consumer(group, name):
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "error_cb": lambda e: log("librdkafka error:", e),
        }
    )


def produce(per_partition):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=20)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    for p in range(3):
        for i in range(per_partition):
            producer.produce(topic, value=f"p{p}-{i}".encode(), partition=p, on_delivery=delivered)
    left = producer.flush(20)
    emit({"produced": 3 * per_partition - left - len(failures), "failures": failures})


def member(group, name):
    commands = Commands()
    c = consumer(group, name)
    start = time.monotonic()
    c.subscribe([topic])
    last = None
    while not commands.closing.is_set() and time.monotonic() < start + LIFETIME_S:
        msg = c.poll(0.1)
        if msg is not None and msg.error() and msg.error().code() != KafkaError._PARTITION_EOF:
            log("consumer error:", msg.error())
        now = sorted(tp.partition for tp in c.assignment() if tp.topic == topic)
        if now != last:
            emit({"assigned": now, "ms": int((time.monotonic() - start) * 1000)})
            last = now
    c.close()
    emit({"closed": True})


def consume(group, take, commit, extra_ms):
    mismatches = []
    c = consumer(group, "tally-compat-consume")
    c.subscribe([topic])
    read, extra = [], []
    deadline = time.monotonic() + 40
    while len(read) < take and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            mismatches.append(f"consumer error: {msg.error()}")
            continue
        read.append([msg.partition(), msg.offset(), msg.value().decode()])
    if len(read) < take:
        mismatches.append(f"read {len(read)} records within 40 s, want {take}")
    to_commit = offsets_to_commit(commit, read)
    committed = {}
    if to_commit:
        answer = c.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in sorted(to_commit.items())],
            asynchronous=False,
        )
        for tp in answer:
            if tp.error:
                mismatches.append(f"commit of partition {tp.partition}: {tp.error}")
            else:
                committed[tp.partition] = tp.offset
    until = time.monotonic() + extra_ms / 1000
    while time.monotonic() < until:
        msg = c.poll(0.1)
        if msg is not None and not msg.error():
            extra.append([msg.partition(), msg.offset(), msg.value().decode()])
    c.close()
    emit({"read": read, "extra": extra, "committed": committed, "mismatches": mismatches})


def offsets(group):
    c = consumer(group, "tally-compat-committed")
    answer = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=20)
    c.close()
    emit(
        {
            # OFFSET_INVALID (-1001) where the group committed nothing.
            "committed": {tp.partition: tp.offset for tp in answer if not tp.error and tp.offset >= 0},
            "errors": [f"partition {tp.partition}: {tp.error}" for tp in answer if tp.error],
        }
    )


if mode == "produce":
    produce(int(sys.argv[4]))
elif mode == "member":
    member(sys.argv[4], sys.argv[5])
elif mode == "consume":
    consume(sys.argv[4], int(sys.argv[5]), parse_commits(sys.argv[6]), int(sys.argv[7]))
elif mode == "offsets":
    offsets(sys.argv[4])
else:
    sys.exit(f"unknown mode {mode!r}: produce, member, consume or offsets")
