"""confluent-kafka's transactional producer and read_committed consumers
against `tally broker`, driven by tests/transactions.rs.

usage:
  transactions_confluent_kafka.py basic BOOTSTRAP TOPIC TS_MS
      Creates TOPIC (2 partitions); commits a transaction of 10 records,
      aborts one of 5, writes 3 plain records, commits one of 7 (all stamped
      TS_MS); reads the topic back read_committed and read_uncommitted; a
      read_committed group "committed-reader" consumes and commits; then a
      transaction of 4 records is left open (flushed, not committed). Prints
      one JSON object.
  transactions_confluent_kafka.py hold BOOTSTRAP TOPIC TXN_ID TIMEOUT_MS
      Writes one plain record to TOPIC (1 partition), then opens a
      transaction of 5 records on it, flushes, prints "open", then
      reads a line from stdin: "commit" commits (retrying through a broker
      restart), "exit" leaves without ending it. Prints a JSON result last.
  transactions_confluent_kafka.py read BOOTSTRAP TOPIC ISOLATION [GROUP]
      Prints the values of every record of TOPIC readable at ISOLATION
      (read_committed or read_uncommitted) and the positions reached, as JSON;
      with GROUP, as a subscribed member of it that commits them.
  transactions_confluent_kafka.py fill BOOTSTRAP TOPIC N
      Creates TOPIC (2 partitions) and writes N plain records "r-0".. to it.
  transactions_confluent_kafka.py eos BOOTSTRAP IN OUT N [PAUSE_AT]
      A consume-transform-produce loop: reads IN in group "eos" (read_committed),
      writes each value upper-cased to OUT and commits its offsets with
      send_offsets_to_transaction, in transactions of up to 7 records, until N
      records of IN were committed. With PAUSE_AT, the first transaction after
      PAUSE_AT records were committed stops once its records are written,
      prints "open" and waits for a line on stdin (the broker is killed and
      restarted meanwhile). Prints progress lines "done K" and recovers
      from a broker that goes away (aborts, rewinds, or starts over with a new
      producer) as an exactly-once application must.
"""

import json
import os
import sys
import threading
import time

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


class Stuck(Exception):
    """A librdkafka call that did not return within its timeout."""


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in fs.values():
        try:
            f.result(timeout=15)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def read_all(bootstrap, topic, isolation, group=None, commit=False):
    """Values of every record of `topic` readable at `isolation`, per
    partition, reading until each partition's end."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group or f"reader-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
    }
    c = Consumer(conf)
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions.keys())
    if group:
        c.subscribe([topic])
    else:
        c.assign([TopicPartition(topic, p, 0) for p in parts])
    values = {str(p): [] for p in parts}
    at_eof = set()
    deadline = time.time() + 30
    while len(at_eof) < len(parts) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                at_eof.add(m.partition())
                continue
            raise KafkaException(m.error())
        values[str(m.partition())].append(m.value().decode())
    if commit:
        c.commit(asynchronous=False)
    positions = {
        str(tp.partition): tp.offset
        for tp in c.position([TopicPartition(topic, p) for p in parts])
    }
    c.close()
    return values, positions


def basic(bootstrap, topic, ts):
    create(bootstrap, topic, 2)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "basic-1", "linger.ms": 5})
    p.init_transactions(15)
    out = {}

    def txn(prefix, n, commit):
        p.begin_transaction()
        for i in range(n):
            p.produce(topic, value=f"{prefix}-{i}".encode(), partition=i % 2, timestamp=ts)
        if commit:
            p.commit_transaction(15)
        else:
            p.flush(15)
            p.abort_transaction(15)

    txn("c1", 10, True)
    txn("a1", 5, False)
    plain = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        plain.produce(topic, value=f"plain-{i}".encode(), partition=i % 2, timestamp=ts)
    plain.flush(15)
    txn("c2", 7, True)
    out["committed"], out["committed_positions"] = read_all(bootstrap, topic, "read_committed")
    out["uncommitted"], _ = read_all(bootstrap, topic, "read_uncommitted")
    # A read_committed group consumes everything and commits.
    read_all(bootstrap, topic, "read_committed", group="committed-reader", commit=True)
    # A transaction left open: a read_committed reader stops before it.
    p.begin_transaction()
    for i in range(4):
        p.produce(topic, value=f"open-{i}".encode(), partition=i % 2, timestamp=ts)
    p.flush(15)
    out["while_open"], out["open_positions"] = read_all(bootstrap, topic, "read_committed")
    out["open_uncommitted"], _ = read_all(bootstrap, topic, "read_uncommitted")
    # A second producer with the same transactional id fences the first and
    # aborts what it left open.
    zombie = p
    fresh = Producer({"bootstrap.servers": bootstrap, "transactional.id": "basic-1"})
    fresh.init_transactions(15)
    try:
        zombie.commit_transaction(10)
        out["zombie_commit"] = None
    except KafkaException as e:
        out["zombie_commit"] = {"name": e.args[0].name(), "fatal": e.args[0].fatal()}
    out["after_fence"], _ = read_all(bootstrap, topic, "read_committed")
    print(json.dumps(out))


def hold(bootstrap, topic, txn_id, timeout_ms):
    create(bootstrap, topic, 1)
    plain = Producer({"bootstrap.servers": bootstrap})
    plain.produce(topic, value=b"before", partition=0)
    plain.flush(15)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "transaction.timeout.ms": timeout_ms,
            "message.timeout.ms": min(timeout_ms, 60000),
        }
    )
    p.init_transactions(15)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"{txn_id}-{i}".encode(), partition=0)
    p.flush(15)
    print("open", flush=True)
    command = sys.stdin.readline().strip()
    result = {"command": command}
    if command == "commit":
        deadline = time.time() + 60
        while True:
            try:
                p.commit_transaction(15)
                result["committed"] = True
                break
            except KafkaException as e:
                err = e.args[0]
                if err.retriable() and time.time() < deadline:
                    continue
                result["committed"] = False
                result["error"] = err.name()
                break
    print(json.dumps(result), flush=True)


def eos(bootstrap, topic_in, topic_out, n, pause_at=None):
    """The classic exactly-once loop, recovering as the documentation says."""

    def consumer():
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "eos",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        c.subscribe([topic_in])
        return c

    def producer():
        p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": "eos-app",
                "transaction.timeout.ms": 20000,
                **({"debug": "eos,protocol"} if os.environ.get("TALLY_CLIENT_DEBUG") else {}),
            }
        )
        deadline = time.time() + 90
        while True:
            try:
                p.init_transactions(15)
                return p
            except KafkaException as e:
                if e.args[0].retriable() and time.time() < deadline:
                    time.sleep(0.2)
                    continue
                raise

    def send_offsets(p, positions, metadata):
        # librdkafka 2.12's send_offsets_to_transaction can block past its
        # timeout when the group coordinator it cached went away (librdkafka
        # issues 5456 and 5511): a watchdog gives up on such a producer,
        # which the next one fences.
        outcome = {}

        def call():
            try:
                p.send_offsets_to_transaction(positions, metadata, 15)
                outcome["ok"] = True
            except KafkaException as e:
                outcome["error"] = e

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(20)
        if "error" in outcome:
            raise outcome["error"]
        if "ok" not in outcome:
            raise Stuck()

    def report(err, msg):
        if err is not None:
            print(f"delivery failed: {err}", file=sys.stderr, flush=True)

    def committed_count(c):
        parts = c.committed([TopicPartition(topic_in, p) for p in range(2)], timeout=15)
        return sum(max(tp.offset, 0) for tp in parts)

    create(bootstrap, topic_out, 2)
    c, p = consumer(), producer()
    done = 0
    deadline = time.time() + 240
    restarts = 0
    while done < n and time.time() < deadline:
        msgs = c.consume(7, 0.5)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            try:
                done = committed_count(c)
            except KafkaException:
                pass
            continue
        try:
            p.begin_transaction()
            for m in msgs:
                p.produce(
                    topic_out,
                    value=m.value().upper(),
                    key=m.key(),
                    partition=m.partition(),
                    on_delivery=report,
                )
            if pause_at is not None and done >= pause_at:
                # Mid-transaction: its records are in the log, uncommitted.
                pause_at = None
                p.flush(15)
                print("open", flush=True)
                sys.stdin.readline()
            send_offsets(p, c.position(c.assignment()), c.consumer_group_metadata())
            p.commit_transaction(15)
            done = committed_count(c)
            print(f"done {done}", flush=True)
            time.sleep(0.05)
        except Stuck:
            restarts += 1
            print("send_offsets_to_transaction is stuck: a new producer", file=sys.stderr, flush=True)
            p = producer()
            c.close()
            c = consumer()
        except KafkaException as e:
            err = e.args[0]
            restarts += 1
            # Whatever went wrong, what this transaction read is read again.
            if err.txn_requires_abort():
                try:
                    p.abort_transaction(15)
                except KafkaException:
                    p = producer()
            else:
                # Fatal (fenced) or unknown outcome: start over with a new
                # producer, which aborts whatever is left open.
                p = producer()
            c.close()
            c = consumer()
    print(json.dumps({"done": done, "restarts": restarts}), flush=True)
    # A producer left stuck in librdkafka would hold the exit.
    os._exit(0)


mode = sys.argv[1]
if mode == "basic":
    basic(sys.argv[2], sys.argv[3], int(sys.argv[4]))
elif mode == "hold":
    hold(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
elif mode == "read":
    group = sys.argv[5] if len(sys.argv) > 5 else None
    values, positions = read_all(sys.argv[2], sys.argv[3], sys.argv[4], group=group, commit=bool(group))
    print(json.dumps({"values": values, "positions": positions}))
elif mode == "fill":
    create(sys.argv[2], sys.argv[3], 2)
    p = Producer({"bootstrap.servers": sys.argv[2]})
    for i in range(int(sys.argv[4])):
        p.produce(sys.argv[3], value=f"r-{i}".encode(), key=str(i).encode(), partition=i % 2)
    p.flush(15)
    print(json.dumps({"written": int(sys.argv[4])}))
elif mode == "eos":
    eos(
        sys.argv[2],
        sys.argv[3],
        sys.argv[4],
        int(sys.argv[5]),
        int(sys.argv[6]) if len(sys.argv) > 6 else None,
    )
else:
    sys.exit(f"unknown mode {mode!r}")
