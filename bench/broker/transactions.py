"""Transactional against idempotent produce throughput on one broker, for
bench/transactions.sh.

usage: transactions.py BOOTSTRAP COUNT REPS TXN_SIZE [LINGER_MS]

Per repetition, on a fresh topic of one partition each: an idempotent
producer (enable.idempotence, acks=all, linger.ms=LINGER_MS, default 5:
librdkafka's) writes COUNT records of
100 B and flushes; a transactional producer (the same settings and a
transactional.id) writes COUNT records in transactions of TXN_SIZE records
(begin, produce, commit). The order of the two alternates between
repetitions. Prints one JSON line per phase: records/s from the first produce
to the flush or the last commit.
"""

import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, count, reps, txn_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
linger_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 5
value = b"x" * 100
common = {
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": linger_ms,
    "queue.buffering.max.messages": 1_000_000,
}


def topic(name):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)]).values():
        f.result(timeout=30)
    return name


def send(p, name):
    """One record, waiting while the client's queue is full."""
    while True:
        try:
            p.produce(name, value, partition=0)
            return
        except BufferError:
            p.poll(0.001)


def idempotent(name):
    p = Producer(common)
    start = time.perf_counter()
    for _ in range(count):
        send(p, name)
    p.flush(120)
    return time.perf_counter() - start


def transactional(name, rep):
    p = Producer({**common, "transactional.id": f"bench-{rep}"})
    p.init_transactions(30)
    start = time.perf_counter()
    left = count
    while left > 0:
        n = min(txn_size, left)
        p.begin_transaction()
        for _ in range(n):
            send(p, name)
        p.commit_transaction(60)
        left -= n
    return time.perf_counter() - start


for rep in range(reps):
    phases = ["idempotent", "transactional"]
    if rep % 2:
        phases.reverse()
    for phase in phases:
        name = topic(f"{phase}-{rep}")
        seconds = idempotent(name) if phase == "idempotent" else transactional(name, rep)
        print(json.dumps({"rep": rep, "phase": phase, "records": count, "seconds": seconds,
                          "records_per_s": count / seconds}), flush=True)
