"""kafka-python 3.x's admin client on the groups of `tally broker`, driven by
tests/compat_groups.rs. (kafka-python 3 names what 2.x called
describe_consumer_groups, list_consumer_groups and
list_consumer_group_offsets describe_groups, list_groups and
list_group_offsets.)

usage:
  groups_admin.py describe BOOTSTRAP TOPIC GROUP MEMBERS
      describe_groups and list_groups, once the group has MEMBERS members and
      is Stable (Empty for 0) or after 15 s: prints {"group", "listed"}, with each member's
      assignment decoded to its partitions of TOPIC.
  groups_admin.py offsets BOOTSTRAP TOPIC GROUP
      list_group_offsets: prints {"committed": {partition: offset}} for TOPIC.
"""

import sys
import time

from kafka import KafkaAdminClient

from groups_events import emit

mode, bootstrap, topic, group = sys.argv[1:5]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tally-compat-admin")


def partitions_of(assignment):
    """The partitions of `topic` in a member assignment as describe_groups
    decodes it: {"assigned_partitions": [{"topic", "partitions"}]}."""
    entries = (assignment or {}).get("assigned_partitions", [])
    return sorted(p for e in entries if e["topic"] == topic for p in e["partitions"])


def describe(members):
    deadline = time.monotonic() + 15
    while True:
        described = admin.describe_groups([group])[group]
        settled = "Stable" if members else "Empty"
        if (described["group_state"] == settled and len(described["members"]) == members) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    listed = admin.list_groups()
    emit(
        {
            "group": {
                "group_id": described["group_id"],
                "state": described["group_state"],
                "protocol_type": described["protocol_type"],
                "protocol": described["protocol_data"],
                "error": described["error"],
                "members": [
                    {
                        "member_id": m["member_id"],
                        "client_id": m["client_id"],
                        "client_host": m["client_host"],
                        "assigned": partitions_of(m["member_assignment"]),
                    }
                    for m in described["members"]
                ],
            },
            "listed": [
                {"group_id": g["group_id"], "protocol_type": g["protocol_type"], "state": g.get("group_state")}
                for g in listed
            ],
        }
    )


def offsets():
    answer = admin.list_group_offsets({group: None})[group]
    emit({"committed": {tp.partition: om.offset for tp, om in sorted(answer.items()) if tp.topic == topic and om.offset >= 0}})


if mode == "describe":
    describe(int(sys.argv[5]))
elif mode == "offsets":
    offsets()
else:
    sys.exit(f"unknown mode {mode!r}: describe or offsets")
admin.close()
