"""Feeds a running `tally agent` a large deployment over POST /api/v1/ingest, for
bench/agent-cpu.sh.

The deployment is the one of agent/benches/metrics.rs: TOPICS topics of PARTITIONS
partitions, and GROUPS consumer groups of which group g reads topics g .. g + 9
(wrapping), so that there are GROUPS x 10 x PARTITIONS lag partitions (100,000 at
the defaults). The topics are shared out among SOURCES sources of one cluster (topic
t belongs to source t mod SOURCES), each reporting the `broker` and `group:` tiers and
the lag of its own topics, as an instrumented broker would: DESIGN section 5 allows
one source per (cluster, topic) for those tiers, and one source cannot hold 100,000
lag series plus their counts under the agent's default --max-series-per-source.

Every INTERVAL seconds each source sends every one of its lag partitions (one sample
each, with the end offset moved on) and the counts of every (tier, topic, partition,
bucket) whose value changed since its last round, as cumulative values. Production
started HISTORY buckets before the feeder did, so the first round also sends that
history (closed buckets, which the completeness rule reads).

Each partition of topic t gets 5 + t mod 10 records a second. Most groups consume
1 to 3 s behind the end; LAGGING groups consume at half the rate (their lag grows,
so lag and completeness alerts fire), and STOPPED groups committed once, a minute
into the history, and never again (Burrow's `stop`). Group tiers count what lies
below the committed offset, so the books and the lag agree.

Messages are cut at MESSAGE_BYTES of JSON (at most half the agent's
--max-message-bytes) and a POST carries at most POST_MESSAGES of them after its
hello (its body stays far under the agent's 16 x --max-message-bytes). Every reply
is checked: anything but a `welcome` for the hello and an `ack` for each message
stops the feeder with exit code 3 and the agent's answer on stderr.

After every round the feeder replaces --stats (JSON): rounds, how long each took
(from its start to the last ack of every source), rounds that overran INTERVAL, and
what was sent. It runs until SIGTERM or SIGINT.
"""

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time

TOPICS_PER_GROUP = 10


def log(msg):
    print(f"agent-cpu feeder: {msg}", file=sys.stderr, flush=True)


def now_ms():
    return time.time_ns() // 1_000_000


class Refused(Exception):
    pass


class Deployment:
    """Who reads what, and where every count and offset stands at a given time."""

    def __init__(self, args, t_start_ms):
        self.args = args
        self.width = args.width_ms
        self.t_start = t_start_ms  # production began (aligned to a bucket)
        self.topic_names = [f"orders-{t:04d}" for t in range(args.topics)]
        self.group_names = [f"service-{g:04d}" for g in range(args.groups)]
        self.readers = [[] for _ in range(args.topics)]
        for g in range(args.groups):
            for k in range(TOPICS_PER_GROUP):
                self.readers[(g + k) % args.topics].append(g)
        # Spread the unhealthy groups over the range so that every source has some.
        self.kind = ["ok"] * args.groups
        step = max(1, args.groups // max(1, args.lagging + args.stopped))
        picks = list(range(0, args.groups, step))
        for g in picks[: args.lagging]:
            self.kind[g] = "lagging"
        for g in picks[args.lagging : args.lagging + args.stopped]:
            self.kind[g] = "stopped"

    def rate(self, t):
        """Records per second on each partition of topic t."""
        return 5 + t % 10

    def produced_by(self, t, at_ms):
        """Records appended to one partition of topic t before at_ms."""
        if at_ms <= self.t_start:
            return 0
        return self.rate(t) * (at_ms - self.t_start) // 1000

    def consumed_until(self, g, now):
        """The append time below which group g has consumed (its frontier)."""
        kind = self.kind[g]
        if kind == "lagging":
            return self.t_start + (now - self.t_start) // 2
        if kind == "stopped":
            return min(now, self.t_start + 60_000)
        return now - 1000 - (g % 5) * 500

    def commit_at(self, g, now):
        if self.kind[g] == "stopped":
            return min(now, self.t_start + 60_000)
        return now - 200 - (g % 7) * 100

    def bucket_of(self, at_ms):
        return at_ms - at_ms % self.width

    def counts_between(self, t, frontier_from, frontier_to):
        """(bucket, records) for every bucket whose count moved when a tier's
        frontier went from frontier_from to frontier_to (first round: from the
        start of production)."""
        out = []
        if frontier_to <= frontier_from:
            return out
        b = self.bucket_of(max(frontier_from, self.t_start))
        last = self.bucket_of(frontier_to - 1) if frontier_to > self.t_start else b - self.width
        while b <= last:
            records = self.produced_by(t, min(frontier_to, b + self.width)) - self.produced_by(t, b)
            out.append((b, max(0, records)))
            b += self.width
        return out


class Source:
    """One emitter: its topics' broker and group tiers, and their lag."""

    def __init__(self, index, dep, args, epoch_ms):
        self.index = index
        self.dep = dep
        self.args = args
        self.name_id = f"{args.source_prefix}-{index}"
        self.epoch = epoch_ms
        self.seq = 0
        self.topics = [t for t in range(args.topics) if t % args.sources == index]
        # Static prefixes of every entry, built once.
        self.lag_prefix = []  # (t, g, p, prefix)
        for t in self.topics:
            topic = dep.topic_names[t]
            for g in dep.readers[t]:
                group = dep.group_names[g]
                for p in range(args.partitions):
                    self.lag_prefix.append(
                        (t, g, p, f'{{"group":"{group}","topic":"{topic}","partition":{p},')
                    )
        self.lag_partitions = len(self.lag_prefix)
        # Count frontiers: what each tier's counts were last sent up to.
        self.sent_broker = {t: dep.t_start for t in self.topics}
        self.sent_group = {(t, g): dep.t_start for t in self.topics for g in dep.readers[t]}
        self.count_series = len(self.topics) * args.partitions + len(self.sent_group) * args.partitions
        self.conn = None
        self.error = None
        self.sent = {"messages": 0, "posts": 0, "bytes": 0, "lag_samples": 0, "count_entries": 0}

    def hello(self):
        return json.dumps(
            {
                "v": 1,
                "type": "hello",
                "source": self.name_id,
                "cluster": self.args.cluster,
                "tier_kinds": ["broker", "group"],
                "bucket_width_ms": self.args.width_ms,
                "started_at_ms": self.epoch,
            },
            separators=(",", ":"),
        )

    def next_seq(self):
        self.seq += 1
        return self.seq

    def messages(self, kind, entries, head):
        """Cuts entries (JSON texts) into messages of at most MESSAGE_BYTES."""
        budget = self.args.message_bytes
        out, chunk, size = [], [], 0
        for e in entries:
            if chunk and size + len(e) + 1 + 100 > budget:
                out.append(chunk)
                chunk, size = [], 0
            chunk.append(e)
            size += len(e) + 1
        if chunk:
            out.append(chunk)
        texts = []
        for chunk in out:
            seq = self.next_seq()
            text = f'{{"v":1,"type":"{kind}","seq":{seq},{head}"{"partitions" if kind == "lag" else "counts"}":[' + ",".join(chunk) + "]}"
            if len(text) > self.args.message_bytes:
                raise Refused(f"a {kind} message of {len(text)} bytes is over the budget")
            texts.append((seq, text))
        return texts

    def lag_entries(self, now):
        dep = self.dep
        out = []
        append = out.append
        start = 1000
        for t, g, p, prefix in self.lag_prefix:
            end = start + dep.produced_by(t, now)
            frontier = dep.consumed_until(g, now)
            committed = start + dep.produced_by(t, frontier)
            lag = end - committed
            lag_s = (now - frontier) / 1000 if lag > 0 else 0
            append(
                f'{prefix}"committed":{committed},"end_offset":{end},"start_offset":{start},'
                f'"lag_records":{lag},"lag_seconds":{lag_s:.3f},"commit_at_ms":{dep.commit_at(g, now)}}}'
            )
        return out

    def count_entries(self, now):
        dep = self.dep
        parts = self.args.partitions
        out = []
        append = out.append
        for t in self.topics:
            topic = dep.topic_names[t]
            moved = dep.counts_between(t, self.sent_broker[t], now)
            self.sent_broker[t] = max(self.sent_broker[t], now)
            for b, records in moved:
                for p in range(parts):
                    append(
                        f'{{"tier":"broker","topic":"{topic}","partition":{p},"bucket":{b},'
                        f'"records":{records},"bytes":{records * 100}}}'
                    )
            for g in dep.readers[t]:
                frontier = dep.consumed_until(g, now)
                moved = dep.counts_between(t, self.sent_group[(t, g)], frontier)
                self.sent_group[(t, g)] = max(self.sent_group[(t, g)], frontier)
                tier = f"group:{dep.group_names[g]}"
                for b, records in moved:
                    for p in range(parts):
                        append(
                            f'{{"tier":"{tier}","topic":"{topic}","partition":{p},"bucket":{b},'
                            f'"records":{records},"bytes":{records * 100}}}'
                        )
        return out

    def post(self, batch):
        body = ("[" + self.hello() + "," + ",".join(text for _, text in batch) + "]").encode()
        if self.conn is None:
            host, port = self.args.agent.rsplit(":", 1)
            self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.request(
            "POST", "/api/v1/ingest", body=body, headers={"Content-Type": "application/json"}
        )
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise Refused(f"POST answered {resp.status}: {data[:500]!r}")
        replies = json.loads(data)
        if len(replies) != len(batch) + 1:
            raise Refused(f"{len(replies)} replies to {len(batch) + 1} messages: {data[:500]!r}")
        if replies[0].get("type") != "welcome":
            raise Refused(f"the hello was answered {replies[0]}")
        for (seq, _), reply in zip(batch, replies[1:]):
            if reply.get("type") != "ack" or reply.get("seq") != seq:
                raise Refused(f"message seq {seq} was answered {reply}")
        self.sent["posts"] += 1
        self.sent["messages"] += len(batch)
        self.sent["bytes"] += len(body)

    def one_round(self, now):
        lag = self.lag_entries(now)
        counts = self.count_entries(now)
        msgs = self.messages("lag", lag, f'"at_ms":{now},') + self.messages("counts", counts, "")
        per_post = self.args.post_messages
        # One connection per round: the agent closes keep-alive connections
        # idle for --header-read-timeout (10 s), the gap between rounds.
        try:
            for i in range(0, len(msgs), per_post):
                self.post(msgs[i : i + per_post])
        finally:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        self.sent["lag_samples"] += len(lag)
        self.sent["count_entries"] += len(counts)

    def run_round(self, now):
        try:
            self.one_round(now)
        except Exception as e:  # noqa: BLE001 - any failure stops the bench
            self.error = f"{type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True, help="HOST:PORT of the agent")
    ap.add_argument("--cluster", default="local")
    ap.add_argument("--source-prefix", default="agent-cpu-bench", help="sources are named PREFIX-0, PREFIX-1, ...")
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between lag rounds")
    ap.add_argument("--history", type=int, default=5, help="buckets of production before the start")
    ap.add_argument("--width-ms", type=int, default=60_000)
    ap.add_argument("--lagging", type=int, default=10)
    ap.add_argument("--stopped", type=int, default=2)
    ap.add_argument("--max-message-bytes", type=int, default=1 << 20, help="the agent's limit")
    ap.add_argument("--post-messages", type=int, default=8)
    ap.add_argument("--stats", required=True)
    args = ap.parse_args()
    args.message_bytes = args.max_message_bytes // 2

    started = now_ms()
    t_start = started - started % args.width_ms - args.history * args.width_ms
    dep = Deployment(args, t_start)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sources = [Source(i, dep, args, started) for i in range(args.sources)]
    lag_total = sum(s.lag_partitions for s in sources)
    log(
        f"{args.topics} topics x {args.partitions} partitions, {args.groups} groups "
        f"({dep.kind.count('lagging')} lagging, {dep.kind.count('stopped')} stopped): "
        f"{lag_total} lag partitions and {sum(s.count_series for s in sources)} count series "
        f"from {args.sources} sources, every {args.interval:g} s"
    )

    rounds = []
    overran = 0
    next_at = time.monotonic()
    while not stop.is_set():
        begin = time.monotonic()
        now = now_ms()
        threads = [threading.Thread(target=s.run_round, args=(now,)) for s in sources]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.monotonic() - begin
        failed = [s for s in sources if s.error]
        if failed:
            for s in failed:
                log(f"source {s.name_id}: {s.error}")
            log("stopping: the agent refused or could not take a message")
            sys.exit(3)
        rounds.append({"at_ms": now, "seconds": round(took, 3)})
        if took > args.interval:
            overran += 1
            log(f"round {len(rounds)} took {took:.2f} s, over the {args.interval:g} s interval")
        sent = {k: sum(s.sent[k] for s in sources) for k in sources[0].sent}
        stats = {
            "lag_partitions": lag_total,
            "count_series": sum(s.count_series for s in sources),
            "sources": args.sources,
            "interval_s": args.interval,
            "rounds": rounds,
            "overran": overran,
            "sent": sent,
        }
        tmp = args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, args.stats)
        log(
            f"round {len(rounds)}: {took:.2f} s, {sent['lag_samples']} lag samples and "
            f"{sent['count_entries']} counts sent so far"
        )
        next_at += args.interval
        delay = next_at - time.monotonic()
        if delay < 0:
            next_at = time.monotonic()
        else:
            stop.wait(delay)


if __name__ == "__main__":
    main()
