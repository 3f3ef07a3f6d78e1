"""confluent-kafka groups for tests/start_rules.rs: where a group starts on a
partition decides what it skipped, so each mode makes a group start in one
known way (from the beginning, at the end of a backlog, with no fetch at all,
through a static rejoin or a rebalance) and reports what it read and the
offsets it committed, from which the test computes the books.

usage: start_confluent_kafka.py MODE BOOTSTRAP TOPIC < ARGS (JSON)
  produce   {"create": PARTITIONS (optional), "records": {P: [ts, ...]}}
      writes the records (value "p<P>-<i>", explicit timestamps); prints
      {"records": [{"partition", "offset", "timestamp"}]}.
  read      {"members": [{"group", "client_id", "topic"}], "reset": "earliest|latest",
             "commit": "auto|end|none", "hold": bool, "more": {P: [ts, ...]}}
      every member (the only one of its group) subscribes to its topic (TOPIC
      unless it names another), with its client id (librdkafka's default
      unless it names one); once each is assigned and fetching (librdkafka's
      statistics say "active"), MORE is produced to each topic; each group
      then reads to the end of every partition and commits: "auto" waits for
      auto-commit (every second) to reach the end, "end" commits the end
      once, "none" never commits. "hold" pauses every member's partitions on
      assignment until all members are assigned, so that no fetch goes out
      before then.
  commit    {"group", "offsets": {P: offset}}
      assign() and commit(offsets=...) with no poll: no fetch at all.
  alter     {"group", "offsets": {P: offset}}
      AdminClient.alter_consumer_group_offsets.
  static    {"group", "instance_id", "client_id", "first": {P: offset}, "more": {P: [ts, ...]}}
      a member with group.instance.id reads from the beginning up to FIRST,
      commits it and closes (a static member sends no LeaveGroup); a new
      consumer with the same instance id rejoins, MORE is produced, and it
      reads to the end and commits the end.
  rebalance {"group", "half": {P: offset}, "more": {P: [ts, ...]}}
      member "a" reads from the beginning (auto-commit every second, offsets
      stored only for records it processed) up to HALF; member "b" joins;
      after the rebalance MORE is produced and both read to the end; done
      when auto-commit reached the end.

Each mode prints {"produced": [{"topic", "partition", "offset", "timestamp"}],
"groups": {group: {"read": [{"partition", "offset", "timestamp"}],
"committed": {P: offset}}}, "mismatches"} (produce: {"records",
"mismatches"}) and exits 1 when something went wrong.
"""

import json
import sys
import time

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from records import finish

mode, bootstrap, topic = sys.argv[1:4]
args = json.load(sys.stdin)
mismatches = []
result = {"mode": mode, "mismatches": mismatches, "produced": [], "groups": {}}
# Every wait is bounded: the test kills a run after 90 s.
WAIT_S = 30


class Failed(Exception):
    """A step that did not happen in time; the JSON result says which."""


def produce(plan, to=None):
    """Writes {P: [ts, ...]} to TOPIC (or `to`) and returns the records with
    their topics and offsets."""
    to = to or topic
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    out = []

    def report(err, msg):
        if err is not None:
            mismatches.append(f"produce to partition {msg.partition()}: {err}")
        else:
            out.append(
                {"topic": to, "partition": msg.partition(), "offset": msg.offset(), "timestamp": msg.timestamp()[1]}
            )

    for p, stamps in plan.items():
        for i, ts in enumerate(stamps):
            producer.produce(to, value=f"p{p}-{i}".encode(), partition=int(p), timestamp=ts, on_delivery=report)
            producer.poll(0)
    left = producer.flush(20)
    if left:
        raise Failed(f"{left} records undelivered after 20 s")
    out.sort(key=lambda r: (r["partition"], r["offset"]))
    return out


def high_watermarks(member):
    """{partition: high watermark} of the member's assigned partitions."""
    return {
        p: member.consumer.get_watermark_offsets(TopicPartition(member.topic, p), timeout=10)[1]
        for p in member.assigned
    }


class Member:
    """One consumer of a group, with what librdkafka's statistics say about
    its partitions."""

    def __init__(self, group, client_id, reset, auto_commit, hold=False, instance_id=None, store=True, of=None):
        self.group = group
        self.topic = of or topic
        self.hold = hold
        self.assigned = []
        self.assignments = 0
        self.fetch_state = {}
        config = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": reset,
            "enable.auto.commit": auto_commit,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": store,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "statistics.interval.ms": 100,
            "stats_cb": self.on_stats,
        }
        # None keeps librdkafka's default client id, "rdkafka", which every
        # librdkafka application on a host shares.
        if client_id is not None:
            config["client.id"] = client_id
        if instance_id is not None:
            config["group.instance.id"] = instance_id
        self.consumer = Consumer(config)
        self.consumer.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke)

    def on_assign(self, consumer, partitions):
        consumer.assign(partitions)
        if self.hold:
            consumer.pause(partitions)
        self.assigned = sorted(p.partition for p in partitions)
        self.assignments += 1

    def on_revoke(self, consumer, partitions):
        self.assigned = []

    def on_stats(self, text):
        parts = json.loads(text).get("topics", {}).get(self.topic, {}).get("partitions", {})
        self.fetch_state = {int(p): s.get("fetch_state") for p, s in parts.items() if int(p) >= 0}

    def fetching(self):
        return bool(self.assigned) and all(self.fetch_state.get(p) == "active" for p in self.assigned)

    def release(self):
        self.hold = False
        self.consumer.resume([TopicPartition(self.topic, p) for p in self.assigned])

    def committed(self, partitions):
        answer = self.consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in answer}


def poll_until(members, done, what, on_message=None):
    """Polls every member in turn until `done()`; each record goes to
    `on_message(member, msg)`."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {WAIT_S} s")
        for m in members:
            msg = m.consumer.poll(0.05)
            if msg is None:
                continue
            if msg.error():
                mismatches.append(f"{m.group}: consumer error: {msg.error()}")
                continue
            if on_message is not None:
                on_message(m, msg)


class Reads:
    """What each group read: every record once, and per partition the offset
    after the last one processed."""

    def __init__(self):
        self.groups = {}

    def add(self, group, msg):
        g = self.groups.setdefault(group, {"read": {}, "next": {}})
        key = (msg.partition(), msg.offset())
        g["read"].setdefault(key, msg.timestamp()[1])
        g["next"][msg.partition()] = max(g["next"].get(msg.partition(), 0), msg.offset() + 1)

    def next(self, group, partition):
        return self.groups.get(group, {"next": {}})["next"].get(partition, -1)

    def reached(self, group, targets):
        return all(self.next(group, p) >= o for p, o in targets.items())

    def report(self, committed):
        for group, g in self.groups.items():
            result["groups"].setdefault(group, {"committed": {}})["read"] = [
                {"partition": p, "offset": o, "timestamp": ts} for (p, o), ts in sorted(g["read"].items())
            ]
        for group, offsets in committed.items():
            result["groups"].setdefault(group, {"read": []})["committed"] = {str(p): o for p, o in offsets.items()}


def wait_committed(member, targets):
    """Waits until the group's committed offsets equal `targets` (auto-commit)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = member.committed(list(targets))
        if got == targets:
            return got
        if time.monotonic() > deadline:
            raise Failed(f"{member.group}: committed {got}, expected {targets} within {WAIT_S} s")
        member.consumer.poll(0.1)


def commit_end(member, targets):
    parts = [TopicPartition(member.topic, p, o) for p, o in targets.items()]
    for answer in member.consumer.commit(offsets=parts, asynchronous=False):
        if answer.error is not None:
            mismatches.append(
                f"{member.group}: commit of partition {answer.partition} at {answer.offset}: {answer.error}"
            )
    return dict(targets)


def read(a):
    members = [
        Member(
            m["group"],
            m.get("client_id"),
            a["reset"],
            a["commit"] == "auto",
            hold=a.get("hold", False),
            of=m.get("topic"),
        )
        for m in a["members"]
    ]
    reads = Reads()

    def record(m, msg):
        reads.add(m.group, msg)

    if a.get("hold"):
        poll_until(members, lambda: all(m.assigned for m in members), "every member assigned", record)
        for m in members:
            m.release()
    poll_until(members, lambda: all(m.fetching() for m in members), "every member fetching", record)
    for t in sorted({m.topic for m in members}):
        result["produced"].extend(produce(a.get("more", {}), t))
    # One member per group here: its partitions are the group's.
    targets = {m.group: high_watermarks(m) for m in members}
    poll_until(
        members, lambda: all(reads.reached(g, t) for g, t in targets.items()), f"every group read to {targets}", record
    )
    committed = {}
    for m in members:
        if a["commit"] == "auto":
            committed[m.group] = wait_committed(m, targets[m.group])
        elif a["commit"] == "end":
            committed[m.group] = commit_end(m, targets[m.group])
    for m in members:
        m.consumer.close()
    reads.report(committed)


def commit(a):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": a["group"], "enable.auto.commit": False})
    targets = {int(p): o for p, o in a["offsets"].items()}
    consumer.assign([TopicPartition(topic, p, o) for p, o in targets.items()])
    parts = [TopicPartition(topic, p, o) for p, o in targets.items()]
    for answer in consumer.commit(offsets=parts, asynchronous=False):
        if answer.error is not None:
            mismatches.append(f"commit of partition {answer.partition} at {answer.offset}: {answer.error}")
    consumer.close()
    result["groups"][a["group"]] = {"read": [], "committed": {str(p): o for p, o in targets.items()}}


def alter(a):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    targets = {int(p): o for p, o in a["offsets"].items()}
    request = ConsumerGroupTopicPartitions(a["group"], [TopicPartition(topic, p, o) for p, o in targets.items()])
    answer = admin.alter_consumer_group_offsets([request], request_timeout=15)[a["group"]].result(timeout=20)
    for tp in answer.topic_partitions:
        if tp.error is not None:
            mismatches.append(f"alter of partition {tp.partition} at {tp.offset}: {tp.error}")
    result["groups"][a["group"]] = {"read": [], "committed": {str(p): o for p, o in targets.items()}}


def static(a):
    group = a["group"]
    first = {int(p): o for p, o in a["first"].items()}
    reads = Reads()

    def up_to_first(m, msg):
        if msg.offset() < first[msg.partition()]:
            reads.add(group, msg)

    one = Member(group, a["client_id"], "earliest", False, instance_id=a["instance_id"])
    poll_until([one], lambda: reads.reached(group, first), f"the first incarnation read to {first}", up_to_first)
    commit_end(one, first)
    one.consumer.close()
    two = Member(group, a["client_id"], "earliest", False, instance_id=a["instance_id"])

    def record(m, msg):
        reads.add(group, msg)

    poll_until([two], two.fetching, "the rejoined member fetching", record)
    result["produced"] = produce(a.get("more", {}))
    targets = high_watermarks(two)
    poll_until([two], lambda: reads.reached(group, targets), f"the rejoined member read to {targets}", record)
    committed = commit_end(two, targets)
    two.consumer.close()
    reads.report({group: committed})


def rebalance(a):
    group = a["group"]
    half = {int(p): o for p, o in a["half"].items()}
    reads = Reads()

    def process(m, msg):
        # Before the rebalance "a" processes (and stores the offset of) only
        # the records below HALF; it drops the rest, which the partitions'
        # owners after the rebalance fetch again from the committed offsets.
        if m.assignments == 1 and m is a_ and msg.offset() >= half[msg.partition()]:
            return
        reads.add(group, msg)
        m.consumer.store_offsets(message=msg)

    a_ = Member(group, "member-a", "earliest", True, store=False)
    poll_until([a_], lambda: reads.reached(group, half), f"member a read to {half}", process)
    b_ = Member(group, "member-b", "earliest", True, store=False)
    both = [a_, b_]
    poll_until(
        both,
        lambda: a_.assignments > 1 and b_.assigned and a_.fetching() and b_.fetching(),
        "the rebalance gave both members a partition",
        process,
    )
    result["produced"] = produce(a.get("more", {}))
    targets = {p: a_.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in sorted(half)}
    poll_until(both, lambda: reads.reached(group, targets), f"the group read to {targets}", process)
    deadline = time.monotonic() + WAIT_S
    while True:
        got = a_.committed(list(targets))
        if got == targets:
            break
        if time.monotonic() > deadline:
            raise Failed(f"committed {got}, expected {targets} within {WAIT_S} s")
        for m in both:
            m.consumer.poll(0.05)
    for m in both:
        m.consumer.close()
    reads.report({group: got})


def create(partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1)
    admin.create_topics([new], operation_timeout=10)[topic].result(timeout=20)


try:
    if mode == "produce":
        if args.get("create"):
            create(args["create"])
        result = {"mode": mode, "mismatches": mismatches, "records": produce(args["records"])}
    elif mode in ("read", "commit", "alter", "static", "rebalance"):
        {"read": read, "commit": commit, "alter": alter, "static": static, "rebalance": rebalance}[mode](args)
    else:
        mismatches.append(f'unknown mode "{mode}": accepted are produce, read, commit, alter, static and rebalance')
except Exception as e:  # noqa: BLE001 - the JSON result says what failed
    mismatches.append(f"{mode} failed: {type(e).__name__}: {e}")
finish(result)
