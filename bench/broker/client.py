"""The librdkafka (confluent-kafka) side of bench/broker.sh.

Subcommands, each printing one JSON object on stdout:

  metadata BOOTSTRAP                    whether the broker answers Metadata
  create-topic BOOTSTRAP TOPIC          CreateTopics with 1 partition, replication 1
  produce BOOTSTRAP TOPIC COUNT SIZE    COUNT records of SIZE value bytes, acks=all
  consume BOOTSTRAP TOPIC COUNT         read partition 0 from the start until COUNT records
  payload COUNT SIZE PATH               the newline-separated file kcat -P -l reads

Each may be followed by -X KEY=VALUE pairs, as kcat takes them: librdkafka
settings every client of the broker needs (security.protocol, sasl.*, ssl.*
for tally-sasl-ssl), added to each client's configuration.

The producer and kcat get the same librdkafka settings (PRODUCER_SETTINGS,
CONSUMER_SETTINGS), so that the two clients differ only in how they feed and
drain librdkafka.
"""

import json
import sys
import time

# Shared with bench/broker.sh, which passes the same pairs to kcat with -X.
PRODUCER_SETTINGS = {
    "acks": "all",
    "linger.ms": "5",
    "compression.codec": "none",
    "enable.idempotence": "false",
}

# Shared with kcat -C as well.
# - fetch.wait.max.ms: all the records are in the log before the consumer
#   starts, so the wait only matters for the last, empty fetch that tells the
#   consumer it has reached the end: a broker that honours the default 500 ms
#   long poll (tally does) would otherwise pay half a second that a broker
#   answering at once (noida-db does) does not.
# - queued.min.messages, queued.max.messages.kbytes: librdkafka stops fetching
#   while its local queue holds 100,000 records or 64 MiB and resumes up to a
#   second later; with the defaults both consumers spent most of their time in
#   that pause (kcat: 1M records of 100 B in 1.3-2.0 s instead of 0.7 s),
#   which measures the client, not the broker.
CONSUMER_SETTINGS = {
    "fetch.wait.max.ms": "10",
    "queued.min.messages": "10000000",
    "queued.max.messages.kbytes": "2097151",
}

# confluent-kafka's librdkafka (2.4 and later) names that pause
# fetch.queue.backoff.ms (default 1 s); with it, the Python consumer was
# capped at about 140,000 records/s whatever the broker. kcat's librdkafka
# 2.0.2 does not know the setting.
PYTHON_CONSUMER_SETTINGS = {
    "fetch.queue.backoff.ms": "1",
}

# A consumer that has received nothing new for this long gives up, so that a
# broker that cannot serve the workload fails in seconds, not at the timeout.
STALL_S = 30


def value_template(size):
    """A printable, newline-free value of `size` bytes.

    Printable so that the kcat file (one record per line) and the Python
    producer send byte-identical values; the record number is written over
    the first bytes so that consecutive records differ.
    """
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return bytearray((alphabet * (size // len(alphabet) + 1))[:size])


def stamp(template, i):
    digits = b"%010d" % i
    n = min(len(digits), len(template))
    template[:n] = digits[-n:]
    return bytes(template)


def write_payload(count, size, path):
    template = value_template(size)
    with open(path, "wb", buffering=1 << 20) as out:
        for i in range(count):
            out.write(stamp(template, i))
            out.write(b"\n")
    return {"records": count, "bytes": count * (size + 1)}


def metadata(bootstrap, extra):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **extra})
    try:
        topics = admin.list_topics(timeout=5).topics
    except Exception as err:  # the broker is not answering yet
        return {"ok": False, "error": str(err)}
    return {"ok": True, "topics": len(topics)}


def create_topic(bootstrap, topic, extra):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, **extra})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)], request_timeout=15
    )
    try:
        futures[topic].result(timeout=20)
    except Exception as err:  # the broker's answer, reported to the driver
        return {"created": False, "error": str(err)}
    return {"created": True}


def produce(bootstrap, topic, count, size, extra):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_SETTINGS, **extra})
    failed = []
    delivered = [0]

    def on_delivery(err, _msg):
        if err is None:
            delivered[0] += 1
        elif len(failed) < 5:
            failed.append(str(err))
        else:
            failed.append(None)

    # Build the values before the clock starts: the bench measures the
    # broker, not Python's byte formatting.
    template = value_template(size)
    values = [stamp(template, i) for i in range(count)]

    start = time.monotonic()
    for value in values:
        while True:
            try:
                producer.produce(topic, value, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                # The local queue is full: wait for acknowledgements.
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(600)
    seconds = time.monotonic() - start
    errors = [e for e in failed if e is not None]
    return {
        "records": delivered[0],
        "seconds": seconds,
        "failed": len(failed),
        "unflushed": remaining,
        "errors": errors,
    }


def consume(bootstrap, topic, count, extra, timeout_s=600):
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    errors = []
    # The group is never joined nor committed to: the bench reads by
    # partition assignment, as kcat -C does.
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tally-bench-unused",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "error_cb": lambda err: errors.append(str(err)),
            **CONSUMER_SETTINGS,
            **PYTHON_CONSUMER_SETTINGS,
            **extra,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    received = 0
    value_bytes = 0
    start = time.monotonic()
    deadline = start + timeout_s
    progress = start
    last_offset = -1
    # Timed from the first records to the last, as kcat -C is: the start
    # (metadata, offset lookup) is left out, and so are the records that
    # arrived with the first batch.
    first_at = None
    first_batch = 0
    while received < count and time.monotonic() < deadline:
        if time.monotonic() - progress > STALL_S:
            errors.append(f"no record for {STALL_S}s after {received}: gave up")
            break
        before = received
        for msg in consumer.consume(num_messages=10000, timeout=1.0):
            err = msg.error()
            if err is not None:
                if err.code() == -191:  # _PARTITION_EOF: caught up, maybe early
                    continue
                errors.append(str(err))
                continue
            received += 1
            value_bytes += len(msg.value())
            last_offset = msg.offset()
        if received > before:
            progress = time.monotonic()
            if first_at is None:
                first_at, first_batch = progress, received
    seconds = progress - first_at if first_at is not None else time.monotonic() - start
    consumer.close()
    return {
        "records": received,
        "timed_records": received - first_batch,
        "seconds": seconds,
        "seconds_from_assign": progress - start,
        "value_bytes": value_bytes,
        "last_offset": last_offset,
        # The first errors say why; the last says whether it gave up.
        "errors": errors[:3] + errors[-1:] if len(errors) > 4 else errors,
    }


def split_settings(argv):
    """argv without its -X KEY=VALUE pairs, and those pairs as a dict."""
    rest, extra = [], {}
    i = 0
    while i < len(argv):
        if argv[i] == "-X" and i + 1 < len(argv) and "=" in argv[i + 1]:
            key, value = argv[i + 1].split("=", 1)
            extra[key] = value
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return rest, extra


def main(argv):
    argv, extra = split_settings(argv)
    command = argv[1] if len(argv) > 1 else ""
    if command == "metadata" and len(argv) == 3:
        result = metadata(argv[2], extra)
    elif command == "create-topic" and len(argv) == 4:
        result = create_topic(argv[2], argv[3], extra)
    elif command == "produce" and len(argv) == 6:
        result = produce(argv[2], argv[3], int(argv[4]), int(argv[5]), extra)
    elif command == "consume" and len(argv) == 5:
        result = consume(argv[2], argv[3], int(argv[4]), extra)
    elif command == "payload" and len(argv) == 5:
        result = write_payload(int(argv[2]), int(argv[3]), argv[4])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
