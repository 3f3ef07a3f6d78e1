"""Sorts the samples of a `perf script` dump (DWARF call graphs of tally's
broker) into the stages of the data path, by the functions on each stack.

Usage: perf script -i FILE | python3 stages.py

A sample goes to the first stage, in the order below, any of whose markers
appears anywhere in its stack (inlined frames included): a record walk
under the audit instrumentation counts as audit, not as validation.
"""

import sys
from collections import Counter

STAGES = [
    ("audit: per-record timestamps and books (Instrumentation::on_append)",
     ("tally_broker::audit::",)),
    ("validation, second pass (PartitionLog::append -> validate_batches)",
     ("PartitionLog::append", "validate_batches")),
    ("validation, first pass (produce handler -> validate_batches)",
     ("validate_batches",)),
    ("segment and index writes (PartitionLog::append, page cache)",
     ("PartitionLog::append",)),
    ("response encoding and framing (copies the records again)",
     ("tally_broker::api::encode", "Encodable", "response_frame")),
    ("copy of the request's records (BytesMut::from in produce)",
     ("bytes_mut::BytesMut",)),
    ("fetch: reading the segment (Segment::read, pread into a zeroed Vec)",
     ("segment::Segment::read", "api::fetch::read_all")),
    ("fetch: counting fetched records (Broker::on_fetched)",
     ("on_fetched",)),
    ("socket reads (request frames)", ("recv", "read_exact", "poll_read")),
    ("socket writes (responses)", ("sendto", "sendmsg", "writev", "poll_write", "write_all")),
    ("fsync thread", ("log::flush::", "fdatasync", "fsync")),
    ("scheduler, wake-ups, allocation, other", ()),
]


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith((" ", "\t")):
            parts = line.split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else parts[0])
        else:
            stack = []  # the sample's header line
    if stack:
        yield stack


def stage_of(stack):
    text = " ".join(stack)
    for name, markers in STAGES:
        if not markers:
            return name
        if name.startswith("validation, second"):
            if all(m in text for m in markers):
                return name
        elif any(m in text for m in markers):
            return name
    return STAGES[-1][0]


def main():
    counts = Counter(stage_of(s) for s in samples(sys.stdin))
    total = sum(counts.values()) or 1
    for name, _ in STAGES:
        if counts[name]:
            print(f"  {100 * counts[name] / total:5.1f} %  {name}")
    print(f"  ({total} samples)")


if __name__ == "__main__":
    main()
