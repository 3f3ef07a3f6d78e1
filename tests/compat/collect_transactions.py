"""Transactions for the collector's tests (tests/collect_transactions.rs), on
any Kafka-compatible cluster, with confluent-kafka: a plain (idempotent)
producer and transactional producers, then a read_committed consumer group.

  python collect_transactions.py --bootstrap HOST:PORT --topic T < PLAN

PLAN (JSON on stdin):
  {"partitions": N, "group": G,
   "config": {PRODUCER: {librdkafka setting: value, ...}, ...},
   "steps": [STEP, ...]}
where a PRODUCER is "plain" or the name of a transactional producer
(transactional.id "tally-txn-<T>-<name>"), and a STEP is one of
  {"produce": PRODUCER, "records": [[partition, timestamp_ms], ...]}
      produces the records in order and flushes: every record's offset is
      known before the next step;
  {"begin": PRODUCER}, {"commit": PRODUCER}, {"abort": PRODUCER}
      begin_transaction, commit_transaction, abort_transaction.
A transactional producer is made (init_transactions) at its first step.

1. Creates T with N partitions (replication 1) unless it exists, and waits
   until every partition has a leader.
2. Runs the steps. A record of "plain" is "plain"; a record of a transaction
   is "committed" or "aborted" by how its transaction ended (a transaction
   still open at the end is an error).
3. A consumer of group G, isolation.level=read_committed, subscribes to T
   from the earliest offset, reads until it has read every plain and
   committed record, and commits synchronously after every poll that
   returned records (the offset after the last record read); then leaves.
   What it read that it should not have (an aborted record, a record read
   twice, an offset never produced) is a mismatch.
4. Prints one JSON object:
     {"topic", "partitions",
      "records": [{"partition", "offset", "timestamp", "producer", "fate"}, ...],
      "group", "read": [[partition, offset], ...],
      "committed": {partition: offset}, "mismatches": [...], "seconds"}
   Offsets come from the delivery reports.

Every step is bounded by --timeout (seconds, default 60, each). A client error
exits 1 with "collect_transactions: <step>: <why>" on stderr; what the group
read wrongly is reported in "mismatches" (exit 0), so that the caller says
what the cluster did.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def fail(step, why):
    print(f"collect_transactions: {step}: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


def ensure_topic(args, partitions):
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    futures = admin.create_topics(
        [NewTopic(args.topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=args.timeout,
        request_timeout=args.timeout,
    )
    try:
        futures[args.topic].result(timeout=args.timeout)
    except KafkaException as err:
        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            fail("create topic", f'"{args.topic}": {err}')
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            topic = admin.list_topics(topic=args.topic, timeout=5).topics.get(args.topic)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) >= partitions
                and all(topic.partitions[p].leader >= 0 for p in range(partitions))
            ):
                return
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            fail("create topic", f'"{args.topic}": no leader for every partition '
                 f"within {args.timeout}s")
        time.sleep(0.1)


class Producers:
    """The plan's producers, made at their first step, and every record they
    delivered."""

    def __init__(self, args, config):
        self.args = args
        self.config = config
        self.made = {}
        self.records = []
        # Per transactional producer: the indices in `records` of its open transaction.
        self.open = {}

    def get(self, name):
        if name in self.made:
            return self.made[name]
        settings = {
            "bootstrap.servers": self.args.bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "message.timeout.ms": int(self.args.timeout * 1000),
        }
        if name == "plain":
            settings["enable.idempotence"] = True
        else:
            settings["transactional.id"] = f"tally-txn-{self.args.topic}-{name}"
            settings["transaction.timeout.ms"] = 60000
        settings.update(self.config.get(name, {}))
        producer = Producer(settings)
        if name != "plain":
            try:
                producer.init_transactions(self.args.timeout)
            except KafkaException as err:
                fail(f"init_transactions of {name}", err.args[0])
        self.made[name] = producer
        return producer

    def produce(self, name, records):
        producer = self.get(name)
        errors = []
        delivered = []

        def report(err, msg):
            if err is not None:
                errors.append(f"partition {msg.partition()}: {err}")
            else:
                delivered.append((msg.partition(), msg.offset(), msg.value().decode()))

        first = len(self.records)
        for i, (partition, ts) in enumerate(records):
            producer.produce(
                self.args.topic,
                key=f"{name}-{first + i}",
                value=str(first + i),
                partition=partition,
                timestamp=ts,
                on_delivery=report,
            )
            self.records.append({
                "partition": partition,
                "offset": None,
                "timestamp": ts,
                "producer": name,
                "fate": "plain" if name == "plain" else "open",
            })
        left = producer.flush(self.args.timeout)
        if left:
            fail(f"produce of {name}", f"{left} records not delivered within {self.args.timeout}s")
        if errors:
            fail(f"produce of {name}", "; ".join(errors[:5]))
        for partition, offset, index in delivered:
            self.records[int(index)]["offset"] = offset
        if name != "plain":
            if name not in self.open:
                fail(f"produce of {name}", "outside a transaction (no begin step)")
            self.open[name].extend(range(first, len(self.records)))

    def begin(self, name):
        try:
            self.get(name).begin_transaction()
        except KafkaException as err:
            fail(f"begin_transaction of {name}", err.args[0])
        self.open[name] = []

    def end(self, name, commit):
        producer = self.get(name)
        what = "commit_transaction" if commit else "abort_transaction"
        try:
            if commit:
                producer.commit_transaction(self.args.timeout)
            else:
                producer.abort_transaction(self.args.timeout)
        except KafkaException as err:
            fail(f"{what} of {name}", err.args[0])
        for i in self.open.pop(name, []):
            self.records[i]["fate"] = "committed" if commit else "aborted"


def consume(args, group, partitions, want):
    """Group `group` reads `args.topic` read_committed until it has read every
    (partition, offset) of `want`; what it read, committed and got wrong."""
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": group,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    read = []
    seen = set()
    committed = {}
    mismatches = []
    deadline = time.monotonic() + args.timeout
    try:
        consumer.subscribe([args.topic])
        while not want <= seen:
            if time.monotonic() > deadline:
                missing = sorted(want - seen)
                mismatches.append(
                    f"group {group} did not read {len(missing)} committed or plain records "
                    f"within {args.timeout}s, first {missing[:10]}")
                break
            latest = {}
            for m in consumer.consume(num_messages=1000, timeout=0.2):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        mismatches.append(f"group {group}: {m.error()}")
                    continue
                key = (m.partition(), m.offset())
                if key in seen:
                    mismatches.append(f"group {group} read partition {key[0]} offset {key[1]} twice")
                seen.add(key)
                read.append(list(key))
                latest[m.partition()] = m.offset() + 1
            if latest:
                tps = [TopicPartition(args.topic, p, o) for p, o in latest.items()]
                try:
                    for tp in consumer.commit(offsets=tps, asynchronous=False):
                        if tp.error is not None:
                            mismatches.append(f"commit of partition {tp.partition}: {tp.error}")
                        else:
                            committed[tp.partition] = tp.offset
                except KafkaException as err:
                    mismatches.append(f"commit: {err}")
    finally:
        consumer.close()
    for key in sorted(seen - want):
        mismatches.append(
            f"group {group} (read_committed) read partition {key[0]} offset {key[1]}, "
            "which is not a plain or committed record")
    return read, committed, mismatches


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each step may take")
    args = parser.parse_args()
    plan = json.load(sys.stdin)
    started = time.monotonic()
    partitions = int(plan["partitions"])
    ensure_topic(args, partitions)
    producers = Producers(args, plan.get("config", {}))
    for i, step in enumerate(plan["steps"]):
        if "produce" in step:
            producers.produce(step["produce"], step["records"])
        elif "begin" in step:
            producers.begin(step["begin"])
        elif "commit" in step:
            producers.end(step["commit"], True)
        elif "abort" in step:
            producers.end(step["abort"], False)
        else:
            fail("plan", f"step {i} {json.dumps(step)}: accepted are produce, begin, commit, abort")
    if producers.open:
        fail("plan", f"transactions left open: {sorted(producers.open)}")
    records = producers.records
    want = {(r["partition"], r["offset"]) for r in records if r["fate"] != "aborted"}
    read, committed, mismatches = consume(args, plan["group"], partitions, want)
    print(json.dumps({
        "topic": args.topic,
        "partitions": partitions,
        "records": records,
        "group": plan["group"],
        "read": read,
        "committed": {str(p): o for p, o in sorted(committed.items())},
        "mismatches": mismatches,
        "seconds": round(time.monotonic() - started, 3),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
