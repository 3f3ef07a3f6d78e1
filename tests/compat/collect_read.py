"""Reads back, with confluent-kafka, what collect_workload.py left on a
cluster: a second opinion for tests/peers.rs, independent of the script that
wrote it and of tally's own Kafka client.

  python collect_read.py --bootstrap HOST:PORT --topic T --partitions N \
      --group G [--group G2 ...] [--timeout SECS] [security flags] [-X key=value ...]

Prints one JSON object:
  {"committed": {"G": [offset or null per partition], ...},   Consumer.committed (OffsetFetch)
   "earliest": [...], "latest": [...],                        AdminClient.list_offsets (ListOffsets)
   "watermarks": [[low, high], ...],                          Consumer.get_watermark_offsets
   "first_records": [[offset, timestamp_ms] or null, ...],    a Fetch from the start of each partition
   "listed_groups": [...] or {"error": ...},                  AdminClient.list_consumer_groups (ListGroups)
   "described": {"G": {"state", "members"}} or {"error": ...}, describe_consumer_groups (DescribeGroups)
   "errors": [...]}
Each read that fails is reported in place (or in "errors") rather than ending
the run: the point is to see what a peer answers. Exits 1 only when it cannot
talk to the cluster at all. The security flags are collect_workload.py's.
"""

import argparse
import json
import sys

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec


def settings_from(args):
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
        key, _, value = pair.partition("=")
        settings[key] = value
    return settings


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--group", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--security-protocol")
    parser.add_argument("--sasl-mechanism")
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password")
    parser.add_argument("--ssl-ca")
    parser.add_argument("-X", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = settings_from(args)
    t = args.timeout
    parts = range(args.partitions)
    out = {"errors": []}

    admin = AdminClient(settings)
    try:
        admin.list_topics(timeout=t)
    except KafkaException as err:
        print(f"collect_read: metadata: {err}", file=sys.stderr)
        return 1

    out["committed"] = {}
    for group in args.group:
        consumer = Consumer({**settings, "group.id": group, "enable.auto.commit": False})
        try:
            got = consumer.committed([TopicPartition(args.topic, p) for p in parts], timeout=t)
            out["committed"][group] = [
                tp.offset if tp.offset >= 0 and tp.error is None else None
                for tp in sorted(got, key=lambda tp: tp.partition)
            ]
        except KafkaException as err:
            out["committed"][group] = None
            out["errors"].append(f'committed "{group}": {err}')
        finally:
            consumer.close()

    for name, spec in (("earliest", OffsetSpec.earliest()), ("latest", OffsetSpec.latest())):
        try:
            futures = admin.list_offsets(
                {TopicPartition(args.topic, p): spec for p in parts}, request_timeout=t)
            out[name] = [None] * args.partitions
            for tp, fut in futures.items():
                out[name][tp.partition] = fut.result(timeout=t).offset
        except KafkaException as err:
            out[name] = None
            out["errors"].append(f"list_offsets {name}: {err}")

    reader = Consumer({**settings, "group.id": "collect-read-unused",
                       "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        out["watermarks"] = []
        for p in parts:
            try:
                out["watermarks"].append(list(reader.get_watermark_offsets(
                    TopicPartition(args.topic, p), timeout=t)))
            except KafkaException as err:
                out["watermarks"].append(None)
                out["errors"].append(f"watermarks {p}: {err}")
        # The first record of each partition, read from offset 0 (a logical
        # "beginning" goes through ListOffsets, which a peer may answer wrongly).
        out["first_records"] = []
        for p in parts:
            reader.assign([TopicPartition(args.topic, p, 0)])
            msg = reader.poll(t)
            if msg is None or msg.error() is not None:
                out["first_records"].append(None)
                if msg is not None:
                    out["errors"].append(f"fetch {p}: {msg.error()}")
            else:
                out["first_records"].append([msg.offset(), msg.timestamp()[1]])
    finally:
        reader.close()

    try:
        listed = admin.list_consumer_groups(request_timeout=t).result(timeout=t)
        out["listed_groups"] = sorted(g.group_id for g in listed.valid)
        if listed.errors:
            out["errors"].extend(f"list_consumer_groups: {e}" for e in listed.errors)
    except KafkaException as err:
        out["listed_groups"] = {"error": str(err)}
    if args.group:
        try:
            futures = admin.describe_consumer_groups(args.group, request_timeout=t)
            out["described"] = {}
            for group, fut in futures.items():
                try:
                    d = fut.result(timeout=t)
                    out["described"][group] = {"state": str(d.state).split(".")[-1],
                                               "members": len(d.members)}
                except KafkaException as err:
                    out["described"][group] = {"error": str(err)}
        except KafkaException as err:
            out["described"] = {"error": str(err)}
        # OffsetFetch through the admin API as well (librdkafka: one group a request).
        try:
            request = [ConsumerGroupTopicPartitions(
                args.group[0], [TopicPartition(args.topic, p) for p in parts])]
            fut = admin.list_consumer_group_offsets(request, request_timeout=t)
            got = fut[args.group[0]].result(timeout=t)
            out["admin_committed"] = {args.group[0]: [
                tp.offset if tp.offset >= 0 else None
                for tp in sorted(got.topic_partitions, key=lambda tp: tp.partition)]}
        except KafkaException as err:
            out["errors"].append(f"list_consumer_group_offsets: {err}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
