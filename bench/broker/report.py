"""Medians and ratios from a bench/broker.sh results file, as markdown.

Usage: report.py RESULTS.jsonl

Per (client, size, phase, broker): the median over the repetitions of
records/s, MB/s (values only, 10^6 bytes), broker CPU seconds per million
records (until the broker is idle again, and the part of it while the client
ran), peak RSS and the client's CPU per million records; the spread
(max - min) / median of records/s; and the most CPU the rest of the machine
used during one of the runs, in cores. A repetition that failed is left out of the medians and
counted in the `failed` column; its first error is listed under the tables.

Then the ratios of tally to the peers (when a peer ran), of `--fsync always`
to `interval:1000` (when it ran), and of tally over SASL_SSL to plaintext
tally (when tally-sasl-ssl ran; issue 13).
"""

import json
import statistics
import sys
from collections import defaultdict

TALLY = "tally"
TALLY_ALWAYS = "tally-fsync-always"
TALLY_SASL_SSL = "tally-sasl-ssl"
PEERS = ("tansu", "noida-db")
BROKER_ORDER = (TALLY, TALLY_ALWAYS, TALLY_SASL_SSL) + PEERS
# Issue 13: SASL_SSL may cost at most a quarter of plaintext's throughput and
# at most double its broker CPU per record.
SASL_SSL_MIN_THROUGHPUT = 0.75
SASL_SSL_MAX_CPU = 2.0


def figures(row):
    records, seconds = row["records"], row["seconds"]
    timed = row.get("timed_records", records)
    return {
        "rps": timed / seconds,
        "mbps": timed * row["size"] / 1e6 / seconds,
        "cpu_per_m": row["broker_cpu_s"] / (records / 1e6),
        "cpu_in_phase_per_m": row.get("broker_cpu_in_phase_s", row["broker_cpu_s"])
        / (records / 1e6),
        "rss_mib": row["peak_rss_kib"] / 1024,
        "client_cpu_per_m": row["client_cpu_s"] / (records / 1e6),
        "busy": bool(row.get("busy")),
        "others": row.get("others_cores", 0.0),
    }


def fmt_int(x):
    return f"{x:,.0f}"


def fmt_ratio(x):
    if x is None:
        return "–"
    return f"{x:.2f}×"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    ok = defaultdict(list)
    failed = defaultdict(list)
    count = rows[0]["count"] if rows else 0
    reps = max((r["rep"] for r in rows), default=0)
    for row in rows:
        key = (row["client"], row["size"], row["phase"], row["broker"])
        if row.get("error"):
            failed[key].append(row["error"])
        else:
            ok[key].append(figures(row))

    med = {}
    for key, values in ok.items():
        med[key] = {m: statistics.median(v[m] for v in values) for m in values[0]}
        rps = [v["rps"] for v in values]
        # How far apart the runs were, and how many ran beside someone
        # else's compiler or test run.
        med[key]["spread"] = (max(rps) - min(rps)) / med[key]["rps"]
        med[key]["busy_runs"] = sum(1 for v in values if v["busy"])
        med[key]["others_max"] = max(v["others"] for v in values)

    cells = sorted({k[:3] for k in list(ok) + list(failed)},
                   key=lambda c: (c[0], c[1], c[2] != "produce"))
    brokers = [b for b in BROKER_ORDER if any(k[3] == b for k in list(ok) + list(failed))]

    print(f"{count:,} records per run, median of {reps} runs.\n")
    print("| client | size | phase | broker | records/s | MB/s | broker CPU s / M records "
          "| of which while the client ran | peak RSS MiB | client CPU s / M records "
          "| spread of records/s | others' CPU, cores (max) | failed runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        for broker in brokers:
            key = cell + (broker,)
            m = med.get(key)
            nfail = len(failed.get(key, []))
            if m is None and nfail == 0:
                continue
            size = "100 B" if cell[1] == 100 else f"{cell[1]} B"
            if m is None:
                print(f"| {cell[0]} | {size} | {cell[2]} | {broker} | – | – | – | – | – | – | – "
                      f"| – | {nfail} |")
                continue
            print(f"| {cell[0]} | {size} | {cell[2]} | {broker} | {fmt_int(m['rps'])} "
                  f"| {m['mbps']:.1f} | {m['cpu_per_m']:.2f} | {m['cpu_in_phase_per_m']:.2f} "
                  f"| {m['rss_mib']:.0f} "
                  f"| {m['client_cpu_per_m']:.2f} | {m['spread']:.0%} | {m['others_max']:.2f} "
                  f"| {nfail} |")

    if any(p in brokers for p in PEERS):
        peer_ratios(cells, med)
    fsync_always(cells, med)
    sasl_ssl(cells, med)

    if failed:
        print("\nFailed runs (first error of each):\n")
        for key in sorted(failed):
            errs = failed[key]
            print(f"- {key[3]}, {key[0]}, {key[1]} B, {key[2]}: {len(errs)} of {reps}: "
                  f"{errs[0][:500]}")


def peer_ratios(cells, med):
    # Ratios of tally (interval fsync) to each peer. MB/s has the same ratio
    # as records/s, since every broker moves the same records.
    print("\nRatios, tally (`--fsync interval:1000`) ÷ peer; throughput above 1 and CPU "
          "and RSS below 1 favour tally. Targets: throughput ≥ the faster peer; CPU per "
          "record ≤ 0.5 × the better peer.\n")
    header = "| client | size | phase |"
    for peer in PEERS:
        header += f" records/s ÷ {peer} |"
    for peer in PEERS:
        header += f" CPU ÷ {peer} |"
    for peer in PEERS:
        header += f" RSS ÷ {peer} |"
    header += " throughput target | CPU target |"
    print(header)
    print("|" + "---|" * (3 + 3 * len(PEERS) + 2))
    for cell in cells:
        t = med.get(cell + (TALLY,))
        peers = {p: med.get(cell + (p,)) for p in PEERS}
        line = f"| {cell[0]} | {cell[1]} B | {cell[2]} |"
        for metric in ("rps", "cpu_per_m", "rss_mib"):
            for peer in PEERS:
                p = peers[peer]
                ratio = t[metric] / p[metric] if t and p and p[metric] else None
                line += f" {fmt_ratio(ratio)} |"
        live = [p for p in peers.values() if p]
        if t and live:
            fastest = max(p["rps"] for p in live)
            leanest = min(p["cpu_per_m"] for p in live)
            tp = t["rps"] / fastest
            cpu = t["cpu_per_m"] / leanest if leanest else None
            line += f" {tp:.2f}× of the faster peer: {'met' if tp >= 1 else '**missed**'} |"
            if cpu is None:
                line += " – |"
            else:
                line += (f" {cpu:.2f}× of the better peer: "
                         f"{'met' if cpu <= 0.5 else '**missed**'} |")
        else:
            line += " – | – |"
        print(line)



def fsync_always(cells, med):
    always = [c for c in cells if med.get(c + (TALLY_ALWAYS,))]
    if always:
        print("\n`--fsync always` (tally), produce throughput and its ratio to tally with "
              "`interval:1000` and to the faster peer:\n")
        print("| client | size | records/s | MB/s | ÷ tally interval:1000 | ÷ faster peer |")
        print("|---|---|---|---|---|---|")
        for cell in always:
            if cell[2] != "produce":
                continue
            a = med[cell + (TALLY_ALWAYS,)]
            t = med.get(cell + (TALLY,))
            live = [med[cell + (p,)] for p in PEERS if med.get(cell + (p,))]
            fastest = max((p["rps"] for p in live), default=None)
            print(f"| {cell[0]} | {cell[1]} B | {fmt_int(a['rps'])} | {a['mbps']:.1f} "
                  f"| {fmt_ratio(a['rps'] / t['rps'] if t else None)} "
                  f"| {fmt_ratio(a['rps'] / fastest if fastest else None)} |")


def sasl_ssl(cells, med):
    """tally over SASL_SSL (SCRAM-SHA-512) against plaintext tally."""
    both = [c for c in cells if med.get(c + (TALLY_SASL_SSL,)) and med.get(c + (TALLY,))]
    if not both:
        return
    print(f"\nSASL_SSL (SCRAM-SHA-512) ÷ plaintext, tally `--fsync interval:1000` both. Targets: "
          f"records/s ≥ {SASL_SSL_MIN_THROUGHPUT:.2f} × plaintext; broker CPU per record "
          f"≤ {SASL_SSL_MAX_CPU:.0f} × plaintext.\n")
    print("| client | size | phase | records/s plaintext | records/s SASL_SSL | ratio "
          "| broker CPU s / M plaintext | broker CPU s / M SASL_SSL | ratio "
          "| client CPU s / M plaintext → SASL_SSL | throughput target | CPU target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in both:
        p, s = med[cell + (TALLY,)], med[cell + (TALLY_SASL_SSL,)]
        tp = s["rps"] / p["rps"]
        cpu = s["cpu_per_m"] / p["cpu_per_m"] if p["cpu_per_m"] else None
        cpu_verdict = "–" if cpu is None else \
            ("met" if cpu <= SASL_SSL_MAX_CPU else "**missed**")
        print(f"| {cell[0]} | {cell[1]} B | {cell[2]} | {fmt_int(p['rps'])} | {fmt_int(s['rps'])} "
              f"| {tp:.2f}× | {p['cpu_per_m']:.2f} | {s['cpu_per_m']:.2f} | {fmt_ratio(cpu)} "
              f"| {p['client_cpu_per_m']:.2f} → {s['client_cpu_per_m']:.2f} "
              f"| {'met' if tp >= SASL_SSL_MIN_THROUGHPUT else '**missed**'} | {cpu_verdict} |")


if __name__ == "__main__":
    main(sys.argv[1])
