"""What the Python consumer-group scripts share with tests/compat_groups.rs:
one JSON object per line on stdout (the test reads them as they come), the
commands the test sends a long-lived member on stdin, and the settings that
keep takeovers quick.

A member prints {"assigned": [partitions], "ms": since subscribe} whenever
its assignment changes and {"closed": true} once it has left the group. It
leaves when it reads "close" on stdin, when stdin ends (the test is gone),
or after LIFETIME_S at the latest, so that no stray consumer outlives a test.
"""

import json
import sys
import threading

# Short enough that a killed member is noticed quickly, at least the
# broker's minimum (GroupsConfig::min_session_timeout, 500 ms).
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
# The rebalance timeout of the Java-style clients: how long a rebalance
# waits for a member that does not rejoin.
MAX_POLL_INTERVAL_MS = 10000
LIFETIME_S = 150


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Commands:
    """Watches stdin for "close" (or its end) on a thread of its own."""

    def __init__(self):
        self.closing = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in sys.stdin:
            if line.strip() == "close":
                break
        self.closing.set()


def parse_commits(spec):
    """"processed", "none", or explicit offsets "0:4,1:7" (partition:offset)."""
    if spec in ("processed", "none"):
        return spec
    return {int(p): int(o) for p, o in (pair.split(":") for pair in spec.split(","))}


def offsets_to_commit(spec, read):
    """{partition: offset} to commit after processing `read` ([p, offset, value])."""
    if spec == "none":
        return {}
    if spec == "processed":
        out = {}
        for p, offset, _ in read:
            out[p] = max(out.get(p, 0), offset + 1)
        return out
    return spec
