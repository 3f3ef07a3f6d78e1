"""What the Python client scripts share: the records they send, how a record
is written as JSON, and how a script reports its result.

A record is a dict with topic, partition, key, value, headers (a list of
[name, value] pairs, in order, duplicates kept), timestamp and offset. Bytes
are written as a string when they are UTF-8 and as {"hex": ...} otherwise, so
that two different byte strings never look alike in the JSON.
"""

import json
import sys
import time


def as_json(b):
    if b is None:
        return None
    if isinstance(b, str):
        return b
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": bytes(b).hex()}


def record(topic, partition, key, value, headers, timestamp, offset):
    return {
        "topic": topic,
        "partition": partition,
        "key": as_json(key),
        "value": as_json(value),
        "headers": [[name, as_json(v)] for name, v in (headers or [])],
        "timestamp": timestamp,
        "offset": offset,
    }


def workload(n, partition, base_ts, tag, null_header=True):
    """`n` records for one partition: keys, values and headers that exercise
    what a broker must keep byte for byte (binary, empty, null, duplicate
    header names), with strictly rising explicit timestamps. `null_header`
    adds a header whose value is null, for clients that can send one."""
    out = []
    for i in range(n):
        key = f"{tag}-key-{i}".encode()
        value = (f"{tag} value {i} " * 8).encode()
        headers = [("trace", f"{tag}-{i}".encode()), ("seq", str(i).encode())]
        if i % 5 == 1:
            key = None
        if i % 5 == 2:
            value = None
        if i % 5 == 3:
            key = bytes([0, 1, 2, 255, 254]) + str(i).encode()
            value = b""
            headers.append(("dup", b"first"))
            headers.append(("dup", b"second"))
            headers.append(("empty", b""))
            if null_header:
                headers.append(("null", None))
        if i % 5 == 4:
            headers = []
        out.append(
            {
                "partition": partition,
                "key": key,
                "value": value,
                "headers": headers,
                "timestamp": base_ts + 1000 * i,
            }
        )
    return out


def recent_base():
    """A timestamp an hour ago, on a whole second: recent enough for any
    retention, and clearly not the append time."""
    return (int(time.time()) - 3600) * 1000


def compare(label, sent, read, mismatches):
    """Appends to `mismatches` every difference between the records sent and
    read (both lists of `record` dicts, in the order expected)."""
    if len(sent) != len(read):
        mismatches.append(f"{label}: sent {len(sent)} records, read {len(read)}")
    for i, (s, r) in enumerate(zip(sent, read)):
        if s != r:
            mismatches.append(f"{label}: record {i} differs: sent {s}, read {r}")


def finish(result):
    """Prints the result as JSON on stdout and exits 1 when it lists mismatches."""
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    sys.exit(1 if result.get("mismatches") else 0)
