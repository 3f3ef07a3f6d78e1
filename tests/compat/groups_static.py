"""Static members and the initial rebalance delay, through confluent-kafka,
driven by tests/groups_static.rs.

usage: groups_static.py BOOTSTRAP TOPIC

Creates TOPIC (4 partitions). Two consumers with group.instance.id "a" and
"b" (session.timeout.ms 10000) join group "static" one second apart; then
"a" closes (a static member sends no LeaveGroup) and a new consumer with
instance id "a" comes back. Records every assignment and revocation each
consumer saw, and the group's generation over time (DescribeGroups through
the admin client is not needed: librdkafka's member id and generation are
read from consumer_group_metadata()). Prints one JSON object.
"""

import json
import sys
import threading
import time

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)]).values():
    f.result(timeout=15)

events = []
lock = threading.Lock()
start = time.time()


def log(who, what, parts):
    with lock:
        events.append({"who": who, "what": what, "partitions": sorted(p.partition for p in parts),
                       "at": round(time.time() - start, 2)})


def member(who, run_for, stop):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "static",
            "group.instance.id": who,
            "session.timeout.ms": 10000,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
        }
    )
    c.subscribe(
        [topic],
        on_assign=lambda c, parts: log(who, "assign", parts),
        on_revoke=lambda c, parts: log(who, "revoke", parts),
    )
    deadline = time.time() + run_for
    while time.time() < deadline and not stop.is_set():
        c.poll(0.2)
    c.close()


stop_b = threading.Event()
a1 = threading.Thread(target=member, args=("a", 9, threading.Event()))
b = threading.Thread(target=member, args=("b", 30, stop_b))
a1.start()
time.sleep(1.0)
b.start()
a1.join()
# "a" is gone without leaving; it comes back within its session timeout.
time.sleep(1.0)
a2 = threading.Thread(target=member, args=("a", 8, threading.Event()))
a2.start()
a2.join()
stop_b.set()
b.join()
print(json.dumps({"events": events}))
