"""kafka-python against a `tally broker` with TLS and/or SASL.

usage: security_kafka_python.py BOOTSTRAP CASES_JSON

CASES_JSON is a list of cases, each {"name", "topic", "config": {kafka-python
keyword arguments}}. Each case produces 5 records with acks=all and reads them
back by assignment. Prints a JSON result; exits 1 on any mismatch.
"""

import json
import sys
import time

import kafka
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, cases = sys.argv[1], json.loads(sys.argv[2])
mismatches = []
result = {"client": "kafka-python " + kafka.__version__, "cases": {}, "mismatches": mismatches}


def run(case):
    name, topic, conf = case["name"], case["topic"], case["config"]
    values = [f"{name}-{i}" for i in range(5)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=15_000, **conf)
    futures = [producer.send(topic, key=b"k", value=v.encode()) for v in values]
    producer.flush(30)
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close()
    if offsets != list(range(5)):
        mismatches.append(f"{name}: offsets {offsets}")
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=15_000,
        **conf,
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    read = []
    deadline = time.time() + 30
    while len(read) < len(values) and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            read.extend(r.value.decode() for r in records)
    consumer.close()
    if read != values:
        mismatches.append(f"{name}: read {read}, want {values}")
    result["cases"][name] = {"sent": len(values), "read": len(read)}


for case in cases:
    try:
        run(case)
    except Exception as e:  # noqa: BLE001 - the JSON result says what failed
        mismatches.append(f"{case['name']}: {type(e).__name__}: {e}")
print(json.dumps(result, indent=1))
sys.exit(1 if mismatches else 0)
