"""Reads whole partitions back with confluent-kafka, by partition assignment,
from their first offset up to their high watermark, for clients that cannot
consume without consumer groups (kafkajs). Prints {"read": [records...]}
ordered by partition and offset; exits 1 when a partition cannot be read to
its end within 20 s.

usage: read_back.py BOOTSTRAP TOPIC PARTITION...
"""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from records import finish, record

bootstrap, topic = sys.argv[1], sys.argv[2]
partitions = [int(p) for p in sys.argv[3:]]
mismatches = []

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        # Set but never used: the reader neither subscribes nor commits.
        "group.id": "tally-compat-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
)
ends = {
    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    for p in partitions
}
consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
got = {p: [] for p in partitions}
deadline = time.monotonic() + 20
while time.monotonic() < deadline and any(
    (got[p][-1]["offset"] + 1 if got[p] else 0) < ends[p] for p in partitions
):
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        if msg.error().code() != KafkaError._PARTITION_EOF:
            mismatches.append(f"consumer error: {msg.error()}")
            break
        continue
    _, ts = msg.timestamp()
    got[msg.partition()].append(
        record(msg.topic(), msg.partition(), msg.key(), msg.value(), msg.headers(), ts, msg.offset())
    )
consumer.close()
for p in partitions:
    last = got[p][-1]["offset"] + 1 if got[p] else 0
    if last < ends[p]:
        mismatches.append(f"partition {p}: read up to offset {last}, high watermark {ends[p]}")

finish({"topic": topic, "ends": ends, "read": [r for p in partitions for r in got[p]], "mismatches": mismatches})
