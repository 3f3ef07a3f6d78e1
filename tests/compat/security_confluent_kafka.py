"""confluent-kafka (librdkafka) against a `tally broker` with TLS and/or SASL.

usage: security_confluent_kafka.py BOOTSTRAP CASES_JSON

CASES_JSON is a list of cases, each {"name", "topic", "config": {librdkafka
settings}}, with "group": true to read through a consumer group (subscribe and
commit) instead of by assignment, or "refused": true (and optionally
"error_contains") when the broker must refuse the client. Each accepted case
produces 5 records and reads them back; refused cases run at the same time.
Prints a JSON result; exits 1 on any mismatch.
"""

import json
import sys
import threading
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

bootstrap, cases = sys.argv[1], json.loads(sys.argv[2])
mismatches = []
result = {
    "client": "confluent-kafka " + confluent_kafka.version()[0],
    "librdkafka": confluent_kafka.libversion()[0],
    "cases": {},
    "mismatches": mismatches,
}


def refused(case):
    name = case["name"]
    errors = []
    conf = dict(case["config"], **{"bootstrap.servers": bootstrap})
    conf["error_cb"] = lambda e: errors.append(str(e))
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=6)
        mismatches.append(f"{name}: the broker answered, but should have refused the client")
    except KafkaException:
        pass
    # Errors reach error_cb only from poll().
    admin.poll(1)
    result["cases"][name] = {"errors": errors[:4]}
    want = case.get("error_contains")
    if want and not any(want in e for e in errors):
        mismatches.append(f"{name}: no error says {want!r}: {errors[:4]}")


def accepted(case):
    name, topic = case["name"], case["topic"]
    conf = dict(case["config"], **{"bootstrap.servers": bootstrap})
    values = [f"{name}-{i}" for i in range(5)]
    reports = []
    producer = Producer(dict(conf, **{"acks": "all", "enable.idempotence": True}))
    for v in values:
        producer.produce(topic, key=b"k", value=v.encode(), on_delivery=lambda err, _m: reports.append(err))
    left = producer.flush(30)
    if left or len(reports) != 5 or any(reports):
        mismatches.append(f"{name}: produce: {left} left, reports {[str(r) for r in reports]}")
    consumer = Consumer(
        dict(
            conf,
            **{
                "group.id": f"{name}-group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    if case.get("group"):
        consumer.subscribe([topic])
    else:
        consumer.assign([TopicPartition(topic, 0, 0)])
    read = []
    deadline = time.time() + 30
    while len(read) < len(values) and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            mismatches.append(f"{name}: consume: {m.error()}")
            continue
        read.append(m.value().decode())
    committed = None
    if case.get("group") and read:
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
        if committed != len(values):
            mismatches.append(f"{name}: committed offset {committed}, want {len(values)}")
    consumer.close()
    if read != values:
        mismatches.append(f"{name}: read {read}, want {values}")
    result["cases"][name] = {"sent": len(values), "read": len(read), "committed": committed}


def run(case):
    try:
        (refused if case.get("refused") else accepted)(case)
    except Exception as e:  # noqa: BLE001 - the JSON result says what failed
        mismatches.append(f"{case['name']}: {type(e).__name__}: {e}")


threads = [threading.Thread(target=run, args=(c,)) for c in cases if c.get("refused")]
for t in threads:
    t.start()
for c in cases:
    if not c.get("refused"):
        run(c)
for t in threads:
    t.join()
print(json.dumps(result, indent=1))
sys.exit(1 if mismatches else 0)
