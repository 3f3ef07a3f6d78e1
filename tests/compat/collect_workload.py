"""A known workload for the collector's tests (`tally collect`), on any
Kafka-compatible cluster, with confluent-kafka.

  python collect_workload.py --bootstrap HOST:PORT --topic T --partitions N \
      --records-per-partition K --base-ts-ms TS [--group-suffix S] \
      [--live-seconds SECS] [--timeout SECS] [security flags] [-X key=value ...]

1. Creates T with N partitions (replication 1) unless it exists with N
   partitions already (fewer is an error), and waits until every partition
   has a leader.
2. Produces K records to every partition, in order, acks=all, each with an
   explicit CreateTime timestamp: record i of partition p gets
   TS + i*1000 + p. Key "p<p>-<i>", value "v<p>-<i>".
3. Commits, without consuming (assign + synchronous commit of explicit
   offsets, then close: groups with commits and no members), where
   first[p] is the offset of record 0 of partition p:
     committed-S   first[p] + min(K, K//2 + p)
     caughtup-S    first[p] + K   (the end offset)
4. Prints one JSON line (event "workload"):
     {"event": "workload", "topic", "partitions", "records_per_partition",
      "base_ts_ms", "timestamp_scheme",
      "offsets": [{"partition", "first", "end",
                   "records": [[offset, timestamp_ms], ...]}, ...],
      "groups": {"committed-S": [offset per partition], "caughtup-S": [...]},
      "seconds"}
   Offsets come from the delivery reports, not from a guess.
5. With --live-seconds: a consumer of group live-S subscribes to T, reads
   from its committed offset, else from first[p], and commits what it read after every poll that
   returned records; once it has joined and committed the end offset of
   every partition it prints {"event": "live", "group", "committed": [...],
   "member_id"} and stays a member for SECS seconds in all (reading and
   committing whatever else arrives), then leaves the group and prints
   {"event": "left", "group", "committed": [...]}.

Without --live-seconds stdout is exactly one JSON object. Every step is
bounded by --timeout (seconds, default 60, each); a failure prints
"collect_workload: <step>: <why>" on stderr and exits 1.

Security: --security-protocol, --sasl-mechanism, --sasl-username,
--sasl-password, --ssl-ca are shorthands for librdkafka's security.protocol,
sasl.mechanisms, sasl.username, sasl.password and ssl.ca.location; -X
key=value passes any librdkafka setting (as kcat and bench/broker/client.py
take them) to every client the script makes.
"""

import argparse
import json
import sys
import time

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def fail(step, why):
    print(f"collect_workload: {step}: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


def emit(obj):
    print(json.dumps(obj), flush=True)


def client_settings(args):
    settings = {"bootstrap.servers": args.bootstrap}
    shorthands = {
        "security.protocol": args.security_protocol,
        "sasl.mechanisms": args.sasl_mechanism,
        "sasl.username": args.sasl_username,
        "sasl.password": args.sasl_password,
        "ssl.ca.location": args.ssl_ca,
    }
    settings.update({k: v for k, v in shorthands.items() if v is not None})
    for pair in args.X:
        key, sep, value = pair.partition("=")
        if not sep:
            fail("arguments", f'-X "{pair}" is not key=value')
        settings[key] = value
    return settings


def timestamp(args, partition, i):
    return args.base_ts_ms + i * 1000 + partition


def ensure_topic(args, settings):
    admin = AdminClient(settings)
    deadline = time.monotonic() + args.timeout
    futures = admin.create_topics(
        [NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
        operation_timeout=args.timeout,
        request_timeout=args.timeout,
    )
    try:
        futures[args.topic].result(timeout=args.timeout)
    except KafkaException as err:
        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            fail("create topic", f'"{args.topic}": {err}')
    except Exception as err:  # a timeout of the future
        fail("create topic", f'"{args.topic}": {err!r}')
    # Until the metadata shows every partition with a leader.
    while True:
        try:
            meta = admin.list_topics(topic=args.topic, timeout=5)
            topic = meta.topics.get(args.topic)
            if topic is not None and topic.error is None:
                have = len(topic.partitions)
                if have < args.partitions:
                    fail(
                        "create topic",
                        f'"{args.topic}" exists with {have} partitions, '
                        f"fewer than the {args.partitions} asked for",
                    )
                if have >= args.partitions and all(
                    topic.partitions[p].leader >= 0 for p in range(args.partitions)
                ):
                    return
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            fail("create topic", f'"{args.topic}" has no leader for every partition '
                 f"within {args.timeout}s")
        time.sleep(0.1)


def produce(args, settings):
    producer = Producer({
        **settings,
        "acks": "all",
        "linger.ms": 5,
        "enable.idempotence": False,
        "message.timeout.ms": int(args.timeout * 1000),
    })
    delivered = {p: [] for p in range(args.partitions)}
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(f"partition {msg.partition()}: {err}")
        else:
            delivered[msg.partition()].append((msg.offset(), msg.timestamp()[1]))

    for p in range(args.partitions):
        for i in range(args.records_per_partition):
            while True:
                try:
                    producer.produce(
                        args.topic, key=f"p{p}-{i}", value=f"v{p}-{i}", partition=p,
                        timestamp=timestamp(args, p, i), on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.05)
    left = producer.flush(args.timeout)
    if left:
        fail("produce", f"{left} records not delivered within {args.timeout}s")
    if errors:
        fail("produce", "; ".join(errors[:5]))
    offsets = []
    for p in range(args.partitions):
        records = sorted(delivered[p])
        if len(records) != args.records_per_partition:
            fail("produce", f"partition {p}: {len(records)} delivery reports, "
                 f"not {args.records_per_partition}")
        first = records[0][0] if records else -1
        # The broker's offsets must be consecutive: the scheme below relies on it.
        if any(o != first + i for i, (o, _) in enumerate(records)):
            fail("produce", f"partition {p}: offsets not consecutive: {records[:10]}")
        offsets.append({
            "partition": p,
            "first": first,
            "end": first + len(records),
            # The timestamp the script asked for (the delivery report echoes
            # the broker's, which is the same for CreateTime topics).
            "records": [[o, timestamp(args, p, i)] for i, (o, _) in enumerate(records)],
        })
    return offsets


def commit(args, settings, group, offsets):
    consumer = Consumer({
        **settings,
        "group.id": group,
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
    })
    tps = [TopicPartition(args.topic, p, off) for p, off in enumerate(offsets)]
    deadline = time.monotonic() + args.timeout
    try:
        consumer.assign(tps)
        while True:
            try:
                result = consumer.commit(offsets=tps, asynchronous=False)
                bad = [tp for tp in result if tp.error is not None]
                if not bad:
                    break
                why = "; ".join(f"partition {tp.partition}: {tp.error}" for tp in bad)
            except KafkaException as err:
                why = str(err)
            # The group coordinator may still be loading right after start.
            if time.monotonic() > deadline:
                fail("commit", f'group "{group}": {why}')
            time.sleep(0.2)
    finally:
        consumer.close()


def live(args, settings, group, firsts, ends):
    consumer = Consumer({
        **settings,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    committed = [None] * args.partitions
    started = time.monotonic()
    announced = False
    def start_at_first(consumer, partitions):
        # Where nothing is committed, from the first record produced here:
        # "earliest" goes through ListOffsets, which a peer may answer wrongly.
        stored = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        for tp in partitions:
            known = stored.get(tp.partition, -1)
            if known >= 0:
                tp.offset = known
            elif tp.partition < len(firsts):
                tp.offset = firsts[tp.partition]
        consumer.assign(partitions)

    try:
        consumer.subscribe([args.topic], on_assign=start_at_first)
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= args.live_seconds and announced:
                break
            if not announced and elapsed > args.timeout:
                fail("live", f'group "{group}" did not join and commit every partition '
                     f"within {args.timeout}s (committed {committed})")
            msgs = consumer.consume(num_messages=1000, timeout=0.2)
            latest = {}
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        print(f"collect_workload: live: {m.error()}", file=sys.stderr)
                    continue
                latest[m.partition()] = m.offset() + 1
            if latest:
                tps = [TopicPartition(args.topic, p, o) for p, o in latest.items()]
                try:
                    consumer.commit(offsets=tps, asynchronous=False)
                    for p, o in latest.items():
                        if p < args.partitions:
                            committed[p] = o
                except KafkaException as err:
                    print(f"collect_workload: live: commit: {err}", file=sys.stderr)
            if not announced and all(
                c is not None and c >= e for c, e in zip(committed, ends)
            ):
                announced = True
                emit({"event": "live", "group": group, "committed": committed,
                      "member_id": consumer.memberid()})
    finally:
        consumer.close()
    emit({"event": "left", "group": group, "committed": committed})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--records-per-partition", type=int, required=True)
    parser.add_argument("--base-ts-ms", type=int, required=True)
    parser.add_argument("--group-suffix", help="default: the topic's name")
    parser.add_argument("--live-seconds", type=float)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each step may take")
    parser.add_argument("--security-protocol")
    parser.add_argument("--sasl-mechanism")
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password")
    parser.add_argument("--ssl-ca")
    parser.add_argument("-X", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.partitions < 1 or args.records_per_partition < 1:
        # At least one record: its delivery report tells where the log starts.
        fail("arguments", "--partitions and --records-per-partition must be at least 1")
    suffix = args.group_suffix or args.topic
    settings = client_settings(args)
    start = time.monotonic()

    ensure_topic(args, settings)
    offsets = produce(args, settings)
    k = args.records_per_partition
    groups = {
        f"committed-{suffix}": [o["first"] + min(k, k // 2 + o["partition"]) for o in offsets],
        f"caughtup-{suffix}": [o["end"] for o in offsets],
    }
    for group, committed in groups.items():
        commit(args, settings, group, committed)
    emit({
        "event": "workload",
        "topic": args.topic,
        "partitions": args.partitions,
        "records_per_partition": k,
        "base_ts_ms": args.base_ts_ms,
        "timestamp_scheme": "base_ts_ms + i*1000 + partition for record i of a partition",
        "offsets": offsets,
        "groups": groups,
        "seconds": round(time.monotonic() - start, 3),
    })
    if args.live_seconds is not None:
        live(args, settings, f"live-{suffix}", [o["first"] for o in offsets],
             [o["end"] for o in offsets])
    return 0


if __name__ == "__main__":
    sys.exit(main())
