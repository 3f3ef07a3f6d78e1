"""A KIP-848 consumer group (librdkafka's group.protocol=consumer) against
`tally broker`, driven by tests/groups_kip848.rs.

usage: groups_kip848.py BOOTSTRAP TOPIC ASSIGNOR

Creates TOPIC (6 partitions, 60 records). Three members of group "kip848"
(server assignor ASSIGNOR) consume it while a classic-protocol consumer of
group "classic" reads it too. Records the members' assignments once the
three hold all 6 partitions between them, then closes the third and records
the two others' once they hold all 6 again. Then lists and describes the
groups through the admin client. Prints one JSON object.
"""

import json
import sys
import threading
import time

from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, assignor = sys.argv[1], sys.argv[2], sys.argv[3]
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]).values():
    f.result(timeout=15)
p = Producer({"bootstrap.servers": bootstrap})
for i in range(60):
    p.produce(topic, value=f"r-{i}".encode(), partition=i % 6)
p.flush(15)

lock = threading.Lock()
assignments = {}
consumed = {}
stops = {}


def member(name, protocol, group):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": f"client-{name}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 500,
    }
    if protocol == "consumer":
        conf["group.protocol"] = "consumer"
        conf["group.remote.assignor"] = assignor
    c = Consumer(conf)
    c.subscribe([topic])
    stop = stops[name]
    while not stop.is_set():
        m = c.poll(0.2)
        if m is not None and not m.error():
            with lock:
                consumed.setdefault(name, []).append(m.value().decode())
        with lock:
            assignments[name] = sorted(tp.partition for tp in c.assignment())
    c.close()
    with lock:
        assignments.pop(name, None)


def wait_for(names, within):
    """The assignments of `names` once they are disjoint and cover 0-5."""
    deadline = time.time() + within
    while time.time() < deadline:
        with lock:
            got = {n: list(assignments.get(n, [])) for n in names}
        flat = [p for ps in got.values() for p in ps]
        if sorted(flat) == list(range(6)) and all(got.values()):
            return got
        time.sleep(0.2)
    return {"timeout": got}


threads = {}
for name, protocol, group in [
    ("m1", "consumer", "kip848"),
    ("m2", "consumer", "kip848"),
    ("m3", "consumer", "kip848"),
    ("classic", "classic", "classic"),
]:
    stops[name] = threading.Event()
    threads[name] = threading.Thread(target=member, args=(name, protocol, group))
    threads[name].start()

out = {"three": wait_for(["m1", "m2", "m3"], 60)}
# Every record is read (by one of the three) once they settled.
deadline = time.time() + 30
while time.time() < deadline:
    with lock:
        n = sum(len(consumed.get(x, [])) for x in ("m1", "m2", "m3"))
    if n >= 60:
        break
    time.sleep(0.2)
stops["m3"].set()
threads["m3"].join()
out["two"] = wait_for(["m1", "m2"], 60)

listed = admin.list_consumer_groups().result(15)
out["listed"] = sorted(
    [g.group_id, str(getattr(g, "type", "")).split(".")[-1], g.state.name] for g in listed.valid
)
described = admin.describe_consumer_groups(["kip848", "classic"])
out["described"] = {}
for gid, f in described.items():
    d = f.result(15)
    out["described"][gid] = {
        "state": d.state.name,
        "type": str(getattr(d, "type", "")).split(".")[-1],
        "members": sorted(
            [m.client_id, sorted(tp.partition for tp in m.assignment.topic_partitions)]
            for m in d.members
        ),
    }
for name in ("m1", "m2", "classic"):
    stops[name].set()
    threads[name].join()
with lock:
    out["read"] = sorted(set(v for x in ("m1", "m2", "m3") for v in consumed.get(x, [])))
committed = admin.list_consumer_group_offsets(
    [__import__("confluent_kafka").ConsumerGroupTopicPartitions("kip848")]
)
out["committed"] = {
    str(tp.partition): tp.offset
    for tp in committed["kip848"].result(15).topic_partitions
}
print(json.dumps(out))
