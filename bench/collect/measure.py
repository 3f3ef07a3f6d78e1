"""Measures a running `tally collect` poll by poll (bench/collect.sh starts it).

Follows the collector's log for its `lag poll done` debug line; at each one it reads
the collector's CPU time (utime + stime, /proc/PID/stat) and memory (VmRSS, VmHWM,
/proc/PID/status), the broker's CPU time, and scrapes the collector's /metrics until
`tally_collect_poll_duration_seconds_count` has moved, so that the histogram's sum
and the counters give this poll's own figures by difference. The CPU between two
detections is one poll plus one scrape and the idle wait, which costs next to
nothing. What the rest of the machine used meanwhile (/proc/stat less the collector
and the broker) is reported beside each poll: the figures move with the neighbours.

Writes one JSON line per poll and one summary line to --out, and the markdown tables
to stdout.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

HZ = os.sysconf("SC_CLK_TCK")
POLL_DONE = re.compile(r"lag poll done.*\bsamples=(\d+).*\breads=(\d+)")

# Anchors (their own reports, their own machines).
KMINION_OFFSETS_PER_S = (100_000, 120_000)  # on 2 cores
KMINION_CORES = 2
BURROW_OFFSETS_PER_S = (40_000, 50_000)  # Burrow #539
TARGET_PER_CORE = 250_000
TARGET_POLL_S = 1.0
TARGET_RSS_MIB = 100.0


def log(msg):
    print(f"collect-bench: {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: fields count from after its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def machine_busy_seconds():
    """Busy CPU time of all cores since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) / HZ


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    values = {}
    requests = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        if metric == "tally_collect_requests_total":
            api = re.search(r'api="([^"]*)"', name).group(1)
            requests[api] = requests.get(api, 0) + float(value)
        elif metric in (
            "tally_collect_poll_duration_seconds_sum",
            "tally_collect_poll_duration_seconds_count",
            "tally_collect_offsets_read_total",
            "tally_collect_record_reads_total",
            "tally_collect_record_cache_hits_total",
            "tally_collect_estimated_samples_total",
            "tally_collect_groups",
            "tally_collect_partitions",
        ):
            values[metric] = float(value)
    values["requests"] = requests
    return values


def ratio_range(value, lo_hi):
    lo, hi = lo_hi
    return f"{value / hi:.2f}×–{value / lo:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, help="the collector")
    ap.add_argument("--broker-pid", type=int, required=True)
    ap.add_argument("--log", required=True, help="the collector's log file")
    ap.add_argument("--metrics", required=True, help="the collector's /metrics URL")
    ap.add_argument("--polls", type=int, default=7, help="steady-state polls to measure")
    ap.add_argument("--poll-timeout", type=float, default=120.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--setup", required=True, help="setup.py's JSON line")
    ap.add_argument("--meta", required=True, help="JSON: commit, machine, command")
    ap.add_argument("--perf", default="", help="perf.data path: profile 2 polls after the measured ones")
    ap.add_argument("--interval", type=float, default=5.0)
    args = ap.parse_args()
    setup = json.loads(args.setup)
    meta = json.loads(args.meta)

    logf = open(args.log)
    prev = {
        "cpu": cpu_seconds(args.pid),
        "broker_cpu": cpu_seconds(args.broker_pid),
        "busy": machine_busy_seconds(),
        "metrics": {"requests": {}},
        "at": time.monotonic(),
    }
    polls = []
    buffered = ""
    waiting_since = time.monotonic()
    while len(polls) < args.polls + 1:
        chunk = logf.read()
        if not chunk:
            if not alive(args.pid):
                log("the collector exited")
                sys.exit(1)
            if time.monotonic() - waiting_since > args.poll_timeout:
                log(f"no poll finished within {args.poll_timeout:.0f}s; the log ends with:")
                print(buffered[-2000:], file=sys.stderr)
                sys.exit(1)
            time.sleep(0.02)
            continue
        buffered += chunk
        *lines, buffered = buffered.split("\n")
        for line in lines:
            m = POLL_DONE.search(line)
            if not m:
                if " WARN " in line or " ERROR " in line:
                    log(f"collector: {line.strip()}")
                continue
            cpu = cpu_seconds(args.pid)
            broker_cpu = cpu_seconds(args.broker_pid)
            busy = machine_busy_seconds()
            mem = memory_kib(args.pid)
            at = time.monotonic()
            want = len(polls) + 1
            for _ in range(100):
                metrics = scrape(args.metrics)
                if metrics.get("tally_collect_poll_duration_seconds_count", 0) >= want:
                    break
                time.sleep(0.01)
            else:
                log("the poll histogram did not move after a poll")
                sys.exit(1)
            pm = prev["metrics"]

            def delta(name, metrics=metrics, pm=pm):
                return metrics.get(name, 0) - pm.get(name, 0)

            poll = {
                "kind": "poll",
                "poll": len(polls) + 1,
                "first": not polls,
                "wall_s": delta("tally_collect_poll_duration_seconds_sum"),
                "cpu_s": cpu - prev["cpu"],
                "broker_cpu_s": broker_cpu - prev["broker_cpu"],
                # What the rest of the machine used meanwhile, in cores.
                "others_cores": (busy - prev["busy"] - (cpu - prev["cpu"]) - (broker_cpu - prev["broker_cpu"]))
                / max(at - prev["at"], 1e-3),
                "offsets": int(delta("tally_collect_offsets_read_total")),
                "samples": int(m.group(1)),
                "record_reads": int(delta("tally_collect_record_reads_total")),
                "cache_hits": int(delta("tally_collect_record_cache_hits_total")),
                "estimated": int(delta("tally_collect_estimated_samples_total")),
                "requests": {
                    api: int(n - pm["requests"].get(api, 0))
                    for api, n in sorted(metrics["requests"].items())
                    if n - pm["requests"].get(api, 0)
                },
                "rss_kib": mem.get("VmRSS"),
                "hwm_kib": mem.get("VmHWM"),
            }
            polls.append(poll)
            log(
                f"poll {poll['poll']}{' (first)' if poll['first'] else ''}: "
                f"{poll['wall_s']:.3f}s wall, {poll['cpu_s']:.2f}s CPU, {poll['offsets']} offsets, "
                f"{poll['record_reads']} record reads, RSS {mem.get('VmRSS', 0) / 1024:.0f} MiB, "
                f"others {poll['others_cores']:.2f} cores"
            )
            prev = {"cpu": cpu, "broker_cpu": broker_cpu, "busy": busy, "metrics": metrics, "at": at}
            waiting_since = time.monotonic()
            if len(polls) >= args.polls + 1:
                break
    final_mem = memory_kib(args.pid)

    profile = []
    if args.perf:
        seconds = args.interval * 2
        log(f"profiling the collector for {seconds:.0f}s (perf record -g)")
        rec = subprocess.run(
            ["perf", "record", "-g", "-F", "499", "-o", args.perf, "-p", str(args.pid), "--", "sleep", str(seconds)],
            capture_output=True,
            text=True,
        )
        if rec.returncode == 0:
            rep = subprocess.run(
                ["perf", "report", "-i", args.perf, "--no-children", "--sort", "symbol", "--stdio", "-g", "none"],
                capture_output=True,
                text=True,
            )
            for line in rep.stdout.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*)", line)
                if m and len(profile) < 8:
                    profile.append((float(m.group(1)), re.split(r"\s{2,}", m.group(2).strip())[0][:110]))
        else:
            log(f"perf record failed: {rec.stderr.strip()[:300]}")

    first, steady = polls[0], polls[1:]
    med = statistics.median
    wall = med(p["wall_s"] for p in steady)
    cpu = med(p["cpu_s"] for p in steady)
    offsets = med(p["offsets"] for p in steady)
    per_wall = med(p["offsets"] / p["wall_s"] for p in steady)
    per_core = med(p["offsets"] / p["cpu_s"] for p in steady if p["cpu_s"] > 0)
    reads = max(p["record_reads"] for p in steady)
    hits = med(p["cache_hits"] for p in steady)
    broker_cpu = med(p["broker_cpu_s"] for p in steady)
    hwm_mib = final_mem["VmHWM"] / 1024
    hwm_first_mib = first["hwm_kib"] / 1024
    rss_mib = final_mem["VmRSS"] / 1024
    summary = {
        "kind": "summary",
        **meta,
        **setup,
        "steady_polls": len(steady),
        "first_wall_s": round(first["wall_s"], 3),
        "first_cpu_s": round(first["cpu_s"], 3),
        "first_record_reads": first["record_reads"],
        "steady_wall_s_median": round(wall, 3),
        "steady_cpu_s_median": round(cpu, 3),
        "steady_offsets_per_poll": offsets,
        "offsets_per_s_wall": round(per_wall),
        "offsets_per_cpu_s": round(per_core),
        "steady_record_reads_max": reads,
        "steady_cache_hits_median": hits,
        "broker_cpu_s_per_steady_poll": round(broker_cpu, 3),
        "others_cores_max": round(max(p["others_cores"] for p in polls), 2),
        "peak_rss_mib": round(hwm_mib, 1),
        "peak_rss_mib_after_first_poll": round(hwm_first_mib, 1),
        "rss_mib_at_end": round(rss_mib, 1),
        "profile": profile,
    }
    with open(args.out, "a") as f:
        for p in polls:
            f.write(json.dumps({**meta, **p}) + "\n")
        f.write(json.dumps(summary) + "\n")

    def verdict(ok):
        return "met" if ok else "**missed**"

    print(f"### Collector lag poll: {setup['groups']:,} groups × {setup['partitions']} partitions "
          f"({setup['committed_offsets']:,} committed offsets)\n")
    print(f"commit `{meta['commit']}`, {meta['machine']}, {meta['date']}\n")
    print("| poll | wall s | collector CPU s | broker CPU s | offsets | offsets/s wall | offsets per CPU-s | "
          "record reads | cache hits | requests | RSS MiB | peak RSS MiB | others' CPU, cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in polls:
        reqs = ", ".join(f"{api} {n}" for api, n in p["requests"].items())
        print(
            f"| {p['poll']}{' (first)' if p['first'] else ''} | {p['wall_s']:.3f} | {p['cpu_s']:.2f} | "
            f"{p['broker_cpu_s']:.2f} | {p['offsets']:,} | {p['offsets'] / p['wall_s']:,.0f} | "
            f"{(p['offsets'] / p['cpu_s']) if p['cpu_s'] else float('nan'):,.0f} | {p['record_reads']:,} | "
            f"{p['cache_hits']:,} | {reqs} | {p['rss_kib'] / 1024:.0f} | {p['hwm_kib'] / 1024:.0f} | {p['others_cores']:.2f} |"
        )
    print()
    kminion_core = tuple(x / KMINION_CORES for x in KMINION_OFFSETS_PER_S)
    print("| figure | target | measured (median of steady polls) | ratio to target | KMinion | Burrow | verdict |")
    print("|---|---|---|---|---|---|---|")
    print(f"| steady poll wall | ≤ {TARGET_POLL_S:.0f} s | {wall:.3f} s | {wall / TARGET_POLL_S:.2f} of the budget | | | "
          f"{verdict(wall <= TARGET_POLL_S)} |")
    print(f"| offsets per CPU-second of the collector (per core) | ≥ {TARGET_PER_CORE:,}/s | {per_core:,.0f}/s | "
          f"{per_core / TARGET_PER_CORE:.2f}× | {ratio_range(per_core, kminion_core)} of its 50–60k per core | "
          f"{ratio_range(per_core, BURROW_OFFSETS_PER_S)} of 40–50k | {verdict(per_core >= TARGET_PER_CORE)} |")
    print(f"| offsets per second of wall time | (anchors only) | {per_wall:,.0f}/s | | "
          f"{ratio_range(per_wall, KMINION_OFFSETS_PER_S)} of 100–120k | {ratio_range(per_wall, BURROW_OFFSETS_PER_S)} "
          f"of 40–50k | |")
    print(f"| record reads per steady poll, {setup['groups']:,} stuck groups | 0 | {reads} (cache hits {hits:,.0f}) | | | | "
          f"{verdict(reads == 0)} |")
    print(f"| collector peak RSS (VmHWM) | ≤ {TARGET_RSS_MIB:.0f} MiB | {hwm_mib:.1f} MiB "
          f"({hwm_first_mib:.1f} after the first poll; VmRSS {rss_mib:.1f} at the end) | "
          f"{hwm_mib / TARGET_RSS_MIB:.2f} of the budget | | | {verdict(hwm_mib <= TARGET_RSS_MIB)} |")
    print()
    print(f"First poll (discovery, {first['record_reads']:,} record reads): {first['wall_s']:.3f} s wall, "
          f"{first['cpu_s']:.2f} s collector CPU. Steady polls: {len(steady)}, {offsets:,.0f} offsets each, "
          f"{cpu:.2f} s collector CPU and {broker_cpu:.2f} s broker CPU each (medians).")
    if profile:
        print("\nProfile of the collector over two more steady polls (perf record -g, flat, top symbols):\n")
        for pct, sym in profile:
            print(f"- {pct:.1f} % `{sym}`")


if __name__ == "__main__":
    main()
