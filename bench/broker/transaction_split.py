"""Where a transaction's time goes, for BENCHMARKS.md (issue 19).

usage: transaction_split.py BOOTSTRAP [TRANSACTIONS]

A transactional producer (acks=all, linger.ms=5, as bench/transactions.sh)
runs TRANSACTIONS (default 300) transactions of 1,000 records of 100 B on
topic "split" and prints the medians of begin_transaction, the loop that
produces the records, and commit_transaction, in milliseconds. Read the
broker's share from its /metrics (tally_broker_request_duration_seconds).
"""

import statistics
import sys
import time

from confluent_kafka import Producer

bootstrap = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
p = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "transactional.id": "split",
    }
)
p.init_transactions(30)
value = b"x" * 100
begin, produce, commit = [], [], []
for _ in range(n):
    t0 = time.perf_counter()
    p.begin_transaction()
    t1 = time.perf_counter()
    for _ in range(1000):
        p.produce("split", value, partition=0)
    t2 = time.perf_counter()
    p.commit_transaction(30)
    t3 = time.perf_counter()
    begin.append(t1 - t0)
    produce.append(t2 - t1)
    commit.append(t3 - t2)
med = [statistics.median(x) * 1000 for x in (begin, produce, commit)]
print(f"begin {med[0]:.3f} ms, produce 1,000 records {med[1]:.3f} ms, commit {med[2]:.3f} ms")
