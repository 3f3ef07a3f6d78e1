"""Produces a planned set of batches with confluent-kafka or kafka-python, for
tests/reconcile.rs, and reports the offset every record got, from which the
test computes what the audit books must say.

usage: reconcile_produce.py CLIENT BOOTSTRAP TOPIC < PLAN
  CLIENT is "confluent-kafka" or "kafka-python". PLAN is JSON:
  {"create": {"partitions": N, "configs": {name: value}} (optional),
   "value_bytes": N,
   "batches": [{"partition": P, "codec": "none|gzip|snappy|lz4|zstd",
                "timestamps": [ms, ...]}]}
  Each planned batch is sent as one record batch: its records are queued
  with a long linger and then flushed, so none leaves before the last is
  queued. Values repeat a short text, so that every codec really shrinks them
  (a client sends a batch uncompressed when compressing does not pay).

Prints {"records": [{"partition", "offset", "timestamp"}], "mismatches"};
exits 1 when a record was not acknowledged.
"""

import json
import sys

from records import finish

client, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
plan = json.load(sys.stdin)
value_bytes = plan.get("value_bytes", 200)
mismatches = []
result = {"client": client, "topic": topic, "mismatches": mismatches, "records": []}


def value(batch, i):
    text = f"batch {batch} record {i} "
    return (text * (value_bytes // len(text) + 1))[:value_bytes].encode()


def with_confluent_kafka():
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    create = plan.get("create")
    if create:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        new = NewTopic(
            topic,
            num_partitions=create["partitions"],
            replication_factor=1,
            config=create.get("configs", {}),
        )
        admin.create_topics([new], operation_timeout=10)[topic].result(timeout=20)
    producers = {}
    for n, batch in enumerate(plan["batches"]):
        codec = batch["codec"]
        if codec not in producers:
            producers[codec] = Producer(
                {
                    "bootstrap.servers": bootstrap,
                    "acks": "all",
                    "enable.idempotence": True,
                    "compression.codec": codec,
                    "linger.ms": 5000,
                    "batch.num.messages": 100000,
                }
            )
        producer = producers[codec]
        reports = []
        for i, ts in enumerate(batch["timestamps"]):
            producer.produce(
                topic,
                value=value(n, i),
                partition=batch["partition"],
                timestamp=ts,
                on_delivery=lambda err, msg, reports=reports: reports.append((err, msg)),
            )
        left = producer.flush(20)
        if left:
            mismatches.append(f"batch {n}: {left} records undelivered after flush")
        for err, msg in reports:
            if err is not None:
                mismatches.append(f"batch {n}: delivery error {err}")
                continue
            result["records"].append(
                {"partition": msg.partition(), "offset": msg.offset(), "timestamp": msg.timestamp()[1]}
            )


def with_kafka_python():
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    create = plan.get("create")
    if create:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
        admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=create["partitions"],
                    replication_factor=1,
                    topic_configs=create.get("configs", {}),
                )
            ],
            timeout_ms=15_000,
        )
        admin.close()
    producers = {}
    for n, batch in enumerate(plan["batches"]):
        codec = batch["codec"]
        if codec not in producers:
            producers[codec] = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                compression_type=None if codec == "none" else codec,
                linger_ms=5000,
                batch_size=1 << 20,
                request_timeout_ms=15_000,
            )
        producer = producers[codec]
        futures = [
            (ts, producer.send(topic, value=value(n, i), partition=batch["partition"], timestamp_ms=ts))
            for i, ts in enumerate(batch["timestamps"])
        ]
        producer.flush(20)
        for ts, f in futures:
            try:
                meta = f.get(timeout=20)
            except Exception as e:  # noqa: BLE001 - the JSON result says what failed
                mismatches.append(f"batch {n}: {type(e).__name__}: {e}")
                continue
            result["records"].append({"partition": meta.partition, "offset": meta.offset, "timestamp": ts})
    for producer in producers.values():
        producer.close(5)


try:
    {"confluent-kafka": with_confluent_kafka, "kafka-python": with_kafka_python}[client]()
except Exception as e:  # noqa: BLE001 - the JSON result says what failed
    mismatches.append(f"{client} failed: {type(e).__name__}: {e}")
finish(result)
