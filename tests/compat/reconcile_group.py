"""A consumer group driven by tests/reconcile.rs with confluent-kafka: what it
reads and the offsets it commits are the ground truth of the group's books.
Every commit is commit(offsets=..., asynchronous=False).

usage:
  reconcile_group.py consume BOOTSTRAP TOPIC GROUP < {"targets": {P: [offset, ...]}}
      assigns each partition of TARGETS from offset 0, commits offset 0 on
      each first (the group's first commit: nothing before it is skipped),
      then reads, and each time a partition's next record would be at a
      target offset, commits that offset. A partition whose last target is
      reached is paused. Prints {"read": [{"partition", "offset",
      "timestamp"}] (the records below the last target, in order),
      "commits": [[partition, offset], ...], "mismatches"}.
  reconcile_group.py commit BOOTSTRAP TOPIC GROUP < {"steps": [{"offsets": {P: offset}, "pause_ms": N}]}
      commits each step's offsets in turn, pausing after each, and prints
      {"commits": [[partition, offset], ...], "mismatches"}.
  reconcile_group.py latest BOOTSTRAP TOPIC GROUP < {"targets": {P: [offset, ...]}, "ready_file": PATH}
      subscribes with auto.offset.reset=latest (so the broker ties its
      fetches to the group, and its start is the log end), polls 3 s once
      assigned (its fetches from the log end reach the broker), creates
      READY_FILE, then reads what is produced next and commits at the
      targets as consume does. Prints what consume prints.
"""

import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition

from records import finish

mode, bootstrap, topic, group = sys.argv[1:5]
args = json.load(sys.stdin)
mismatches = []
result = {"group": group, "commits": [], "mismatches": mismatches}

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "latest" if mode == "latest" else "earliest",
    }
)


def commit(offsets):
    parts = [TopicPartition(topic, int(p), o) for p, o in offsets.items()]
    for answer in consumer.commit(offsets=parts, asynchronous=False):
        if answer.error is not None:
            mismatches.append(f"commit of partition {answer.partition} at {answer.offset}: {answer.error}")
    result["commits"].extend([int(p), o] for p, o in offsets.items())


def consume(targets):
    targets = {int(p): list(offsets) for p, offsets in targets.items()}
    commit({p: 0 for p in targets})
    consumer.assign([TopicPartition(topic, p, 0) for p in targets])
    read = []
    for p, offsets in targets.items():
        while offsets and offsets[0] == 0:
            offsets.pop(0)
    active = {p for p, offsets in targets.items() if offsets}
    for p in set(targets) - active:
        consumer.pause([TopicPartition(topic, p)])
    deadline = time.monotonic() + 30
    while active and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            mismatches.append(f"consumer error: {msg.error()}")
            break
        p = msg.partition()
        if p not in active:
            continue
        read.append({"partition": p, "offset": msg.offset(), "timestamp": msg.timestamp()[1]})
        if msg.offset() + 1 == targets[p][0]:
            commit({p: targets[p].pop(0)})
            if not targets[p]:
                active.discard(p)
                consumer.pause([TopicPartition(topic, p)])
    if active:
        mismatches.append(f"partitions {sorted(active)} did not reach their targets within 30 s")
    result["read"] = read


def latest(targets, ready_file):
    targets = {int(p): list(offsets) for p, offsets in targets.items()}
    consumer.subscribe([topic])
    read = []
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.2)
    if not consumer.assignment():
        mismatches.append("no assignment within 30 s")
        result["read"] = read
        return
    active = set(targets)
    settle = time.monotonic() + 3

    def take(msg):
        p = msg.partition()
        if p not in active:
            return
        read.append({"partition": p, "offset": msg.offset(), "timestamp": msg.timestamp()[1]})
        if msg.offset() + 1 == targets[p][0]:
            commit({p: targets[p].pop(0)})
            if not targets[p]:
                active.discard(p)

    while time.monotonic() < settle:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            mismatches.append(f"read partition {msg.partition()} offset {msg.offset()} before anything new was produced")
    with open(ready_file, "w") as f:
        f.write("ready\n")
    deadline = time.monotonic() + 30
    while active and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            mismatches.append(f"consumer error: {msg.error()}")
            break
        take(msg)
    if active:
        mismatches.append(f"partitions {sorted(active)} did not reach their targets within 30 s")
    result["read"] = read


def steps(plan):
    for step in plan:
        commit(step["offsets"])
        time.sleep(step.get("pause_ms", 0) / 1000)


try:
    if mode == "consume":
        consume(args["targets"])
    elif mode == "commit":
        steps(args["steps"])
    elif mode == "latest":
        latest(args["targets"], args["ready_file"])
    else:
        mismatches.append(f'unknown mode "{mode}": accepted are consume, commit and latest')
except Exception as e:  # noqa: BLE001 - the JSON result says what failed
    mismatches.append(f"{mode} failed: {type(e).__name__}: {e}")
consumer.close()
finish(result)
