"""A small mirror for the mirror audit's tests (DESIGN §11), with
confluent-kafka: it copies a topic of one cluster to a topic of another, as
MirrorMaker 2 does (same partition, key, value and timestamp), and can lose
or duplicate records of chosen event-time buckets on purpose.

  python mirror_copy.py --from HOST:PORT --topic T --to HOST:PORT --dest-topic T2 \
      --width-ms W [--drop BUCKET_MS:N] [--duplicate BUCKET_MS:N] \
      [--max-records N] [--group G] [--timeout SECS]

1. Creates T2 on the destination with T's partition count unless it exists.
2. Reads T from the group G's committed offsets (default group
   "mirror-copy"; from the start where it has none) up to the end offsets
   seen at the start, or until N records were read (--max-records).
3. Produces each record to T2 (acks=all), in its partition, with its key,
   value and CreateTime timestamp. A record whose timestamp falls in bucket
   BUCKET_MS (the bucket's start, epoch ms, of width W) is:
     --drop BUCKET_MS:N       not copied, for the first N such records;
     --duplicate BUCKET_MS:N  copied twice, for the first N such records.
   Both repeat for more buckets.
4. Commits what it read for G, so that the next run goes on from there.
5. Prints one JSON line: {"event": "mirror", "read", "copied", "dropped",
   "duplicated", "per_bucket": {BUCKET_MS: records read}}.

Every step is bounded by --timeout (seconds, default 60); a failure prints
"mirror_copy: <step>: <why>" on stderr and exits 1.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def fail(step, why):
    print(f"mirror_copy: {step}: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


def bucket_counts(specs, flag):
    out = {}
    for spec in specs:
        try:
            bucket, n = spec.split(":")
            out[int(bucket)] = out.get(int(bucket), 0) + int(n)
        except ValueError:
            fail("arguments", f'{flag} "{spec}": expected BUCKET_MS:N')
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--to", dest="dest", required=True)
    p.add_argument("--dest-topic", required=True)
    p.add_argument("--width-ms", type=int, required=True)
    p.add_argument("--drop", action="append", default=[])
    p.add_argument("--duplicate", action="append", default=[])
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--group", default="mirror-copy")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    drop = bucket_counts(args.drop, "--drop")
    duplicate = bucket_counts(args.duplicate, "--duplicate")
    deadline = time.monotonic() + args.timeout

    # 1. The source's partitions, and the destination topic.
    src_admin = AdminClient({"bootstrap.servers": args.source})
    meta = src_admin.list_topics(args.topic, timeout=args.timeout)
    topic = meta.topics.get(args.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        fail("source topic", f"{args.topic}: {topic.error if topic else 'absent'}")
    partitions = sorted(topic.partitions)
    dst_admin = AdminClient({"bootstrap.servers": args.dest})
    existing = dst_admin.list_topics(timeout=args.timeout).topics
    if args.dest_topic not in existing or existing[args.dest_topic].error is not None:
        futures = dst_admin.create_topics(
            [NewTopic(args.dest_topic, num_partitions=len(partitions), replication_factor=1)]
        )
        for f in futures.values():
            try:
                f.result(timeout=args.timeout)
            except KafkaException as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    fail("create destination topic", e)
    while True:
        t = dst_admin.list_topics(args.dest_topic, timeout=args.timeout).topics.get(args.dest_topic)
        if t is not None and t.error is None and len(t.partitions) == len(partitions) and all(
            pm.leader >= 0 for pm in t.partitions.values()
        ):
            break
        if time.monotonic() > deadline:
            fail("destination topic", "no leader for every partition")
        time.sleep(0.1)

    # 2. Where to read from, and up to where.
    consumer = Consumer(
        {
            "bootstrap.servers": args.source,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    committed = consumer.committed(
        [TopicPartition(args.topic, q) for q in partitions], timeout=args.timeout
    )
    ends = {}
    starts = {}
    for tp in committed:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(args.topic, tp.partition), timeout=args.timeout
        )
        starts[tp.partition] = tp.offset if tp.offset >= 0 else low
        ends[tp.partition] = high
    todo = {q for q in partitions if starts[q] < ends[q]}
    consumer.assign([TopicPartition(args.topic, q, starts[q]) for q in partitions])
    producer = Producer({"bootstrap.servers": args.dest, "acks": "all", "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    # 3. Copy.
    read = copied = dropped = duplicated = 0
    per_bucket = {}
    position = dict(starts)
    while todo and (args.max_records is None or read < args.max_records):
        if time.monotonic() > deadline:
            fail("copy", f"partitions {sorted(todo)} not read to their end in time")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            fail("copy", msg.error())
        q = msg.partition()
        if msg.offset() >= ends[q]:
            todo.discard(q)
            continue
        read += 1
        position[q] = msg.offset() + 1
        if position[q] >= ends[q]:
            todo.discard(q)
        _, ts = msg.timestamp()
        bucket = ts // args.width_ms * args.width_ms
        per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
        if drop.get(bucket, 0) > 0:
            drop[bucket] -= 1
            dropped += 1
            continue
        times = 1
        if duplicate.get(bucket, 0) > 0:
            duplicate[bucket] -= 1
            duplicated += 1
            times = 2
        for _ in range(times):
            producer.produce(
                args.dest_topic,
                key=msg.key(),
                value=msg.value(),
                partition=q,
                timestamp=ts,
                on_delivery=delivered,
            )
            copied += 1
        producer.poll(0)
    if producer.flush(max(0.0, deadline - time.monotonic())) != 0:
        fail("produce", "records still unsent at the timeout")
    if failures:
        fail("produce", failures[0])

    # 4. Commit what was read.
    offsets = [TopicPartition(args.topic, q, position[q]) for q in partitions]
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as e:
        fail("commit", e)
    consumer.close()
    print(
        json.dumps(
            {
                "event": "mirror",
                "read": read,
                "copied": copied,
                "dropped": dropped,
                "duplicated": duplicated,
                "per_bucket": {str(b): n for b, n in sorted(per_bucket.items())},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
