"""Set-up of the collector's lag-poll benchmark (bench/collect.sh), against a broker
on 127.0.0.1: one topic of PARTITIONS partitions, RECORDS records in each with known
timestamps, and GROUPS consumer groups without members, each with a committed offset
on every partition, all below the end.

Record i of every partition is stamped T0 + i seconds (T0 = RECORDS + 3,600 s before
the start), so the lag seconds of a commit at offset c are now - T0 - c. Group g
commits (g * 37 + p * 11) mod RECORDS on partition p: 37 is prime to RECORDS when
RECORDS is 200, so over 1,000 groups every offset 0..RECORDS-1 of every partition is
some group's commit, and a first poll must read PARTITIONS x RECORDS distinct
(partition, offset) pairs (20,000 at the defaults); every commit is below the end, so
every group lags.

Prints progress to stderr and one JSON line with what it made to stdout. Gives up
(exit 1) when DEADLINE seconds have passed.
"""

import argparse
import json
import sys
import time

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# How many OffsetCommit requests (one group each: librdkafka's limit) are in flight.
IN_FLIGHT = 32


def log(msg):
    print(f"collect-setup: {msg}", file=sys.stderr, flush=True)


def committed_offset(group, partition, records):
    return (group * 37 + partition * 11) % records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="bench-lag")
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--deadline", type=float, default=300.0)
    args = ap.parse_args()
    started = time.monotonic()

    def check_time(what):
        if time.monotonic() - started > args.deadline:
            log(f"gave up after {args.deadline:.0f}s while {what}")
            sys.exit(1)

    conf = {"bootstrap.servers": args.bootstrap, "client.id": "tally-collect-bench"}
    admin = AdminClient(conf)

    futures = admin.create_topics(
        [NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
        operation_timeout=30,
        request_timeout=30,
    )
    futures[args.topic].result(timeout=60)
    log(f"topic {args.topic!r} created with {args.partitions} partitions")

    t0_ms = (int(time.time()) - args.records - 3600) * 1000
    producer = Producer({**conf, "linger.ms": 5, "acks": "all", "enable.idempotence": False})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    for p in range(args.partitions):
        for i in range(args.records):
            while True:
                try:
                    producer.produce(
                        args.topic,
                        value=b"v" * 100,
                        key=f"{p}-{i}".encode(),
                        partition=p,
                        timestamp=t0_ms + i * 1000,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        check_time("producing")
    left = producer.flush(60)
    if left or failures:
        log(f"produce failed: {left} not delivered, errors {failures[:3]}")
        sys.exit(1)
    log(f"produced {args.partitions * args.records} records ({args.records} per partition)")

    # One OffsetCommit per group, IN_FLIGHT at a time.
    pending = []
    done = 0
    last_report = time.monotonic()
    for g in range(args.groups):
        group = f"bench-g{g:04d}"
        tps = [
            TopicPartition(args.topic, p, committed_offset(g, p, args.records))
            for p in range(args.partitions)
        ]
        fs = admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)], request_timeout=30
        )
        pending.append((group, fs[group]))
        while len(pending) >= IN_FLIGHT or (g == args.groups - 1 and pending):
            name, f = pending.pop(0)
            try:
                result = f.result(timeout=60)
            except KafkaException as e:
                log(f"commit of {name} failed: {e}")
                sys.exit(1)
            bad = [tp for tp in result.topic_partitions if tp.error is not None]
            if bad:
                log(f"commit of {name} failed on {len(bad)} partitions: {bad[0].error}")
                sys.exit(1)
            done += 1
            if done % 100 == 0 or time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                log(f"{done}/{args.groups} groups committed ({time.monotonic() - started:.1f}s)")
            check_time(f"committing ({done}/{args.groups} groups done)")

    # Read two groups back: what the collector will read.
    for g in (0, args.groups - 1):
        group = f"bench-g{g:04d}"
        fs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        got = {tp.partition: tp.offset for tp in fs[group].result(timeout=30).topic_partitions}
        want = {p: committed_offset(g, p, args.records) for p in range(args.partitions)}
        if got != want:
            log(f"{group} reads back {len(got)} offsets, not the {len(want)} committed")
            sys.exit(1)

    pairs = len(
        {(p, committed_offset(g, p, args.records)) for g in range(args.groups) for p in range(args.partitions)}
    )
    print(
        json.dumps(
            {
                "topic": args.topic,
                "partitions": args.partitions,
                "records_per_partition": args.records,
                "groups": args.groups,
                "committed_offsets": args.groups * args.partitions,
                "distinct_partition_offsets": pairs,
                "t0_ms": t0_ms,
                "setup_seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
