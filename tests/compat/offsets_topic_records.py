"""Writes records in the exact binary layout of Kafka's `__consumer_offsets`
to a topic of that name, for the collector's test of commit times read from
it (tests/collect_offsets_topic.rs), on a cluster that keeps no such topic of
its own (tansu accepts the name as any other).

  python offsets_topic_records.py --bootstrap HOST:PORT [--create N] < records.json

With --create, the topic is created first with N partitions (replication 1)
unless it exists. stdin holds a JSON list; each item is one record, produced
in order to partition "p" (default 0), uncompressed (as Kafka writes the topic):

  {"commit": [group, topic, partition], "offset": O, "commit_ms": T,
   "value_version": 0..4 (default 3), "key_version": 0 or 1 (default 1)}
      an offset commit; value v1 also carries an expire time (T + 1 day)
  {"tombstone": [group, topic, partition]}   a commit deleted (null value)
  {"group_metadata": group}                  key version 2, value not parsed
  {"raw_key_hex": "...", "raw_value_hex": "..."}   anything else

Layouts (Kafka's OffsetCommitKey/OffsetCommitValue and their Legacy forms):
big-endian; a string is an int16 length then UTF-8; value v0 and v2: offset
int64, metadata string, commit timestamp int64; v1: the same then the expire
timestamp int64; v3: offset, leader epoch int32, metadata, commit timestamp;
v4 (flexible): as v3 with the metadata a compact string (unsigned varint of
length + 1) and an empty tagged-field section at the end.

Prints {"produced": N} on success; a failure prints
"offsets_topic_records: <step>: <why>" on stderr and exits 1.
"""

import argparse
import json
import struct
import sys

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "__consumer_offsets"


def fail(step, why):
    print(f"offsets_topic_records: {step}: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def commit_key(version, group, topic, partition):
    return struct.pack(">h", version) + string(group) + string(topic) + struct.pack(">i", partition)


def commit_value(version, offset, commit_ms, metadata="m"):
    if version in (0, 2):
        return struct.pack(">hq", version, offset) + string(metadata) + struct.pack(">q", commit_ms)
    if version == 1:
        return (
            struct.pack(">hq", 1, offset)
            + string(metadata)
            + struct.pack(">qq", commit_ms, commit_ms + 86_400_000)
        )
    if version == 3:
        return struct.pack(">hqi", 3, offset, 7) + string(metadata) + struct.pack(">q", commit_ms)
    if version == 4:
        meta = metadata.encode()
        assert len(meta) < 127
        return (
            struct.pack(">hqi", 4, offset, 7)
            + bytes([len(meta) + 1])
            + meta
            + struct.pack(">q", commit_ms)
            + bytes([0])
        )
    fail("value", f"no value version {version}")


def record(item):
    if "commit" in item:
        group, topic, partition = item["commit"]
        key = commit_key(item.get("key_version", 1), group, topic, partition)
        return key, commit_value(item.get("value_version", 3), item["offset"], item["commit_ms"])
    if "tombstone" in item:
        group, topic, partition = item["tombstone"]
        return commit_key(1, group, topic, partition), None
    if "group_metadata" in item:
        return struct.pack(">h", 2) + string(item["group_metadata"]), struct.pack(">h", 3) + b"\xff" * 8
    return bytes.fromhex(item["raw_key_hex"]), bytes.fromhex(item.get("raw_value_hex", ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--create", type=int)
    args = ap.parse_args()
    items = json.load(sys.stdin)
    if args.create:
        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        if TOPIC not in admin.list_topics(timeout=20).topics:
            try:
                admin.create_topics([NewTopic(TOPIC, args.create, 1)])[TOPIC].result(20)
            except Exception as e:  # noqa: BLE001 - the message is what matters
                fail("create", e)
    errors = []
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "compression.type": "none",
            "acks": "all",
            "enable.idempotence": False,
        }
    )

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))

    for item in items:
        key, value = record(item)
        producer.produce(TOPIC, key=key, value=value, partition=item.get("p", 0), on_delivery=report)
        # One batch per record, in order.
        producer.flush(20)
    left = producer.flush(20)
    if left or errors:
        fail("produce", f"{left} left, errors {errors}")
    print(json.dumps({"produced": len(items)}), flush=True)


if __name__ == "__main__":
    main()
