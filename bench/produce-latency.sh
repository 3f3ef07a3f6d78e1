#!/usr/bin/env bash
# What the audit instrumentation costs in produce latency: 8 producers, each on
# its own connection and its own partition of one 8-partition topic, against
# `tally broker` with the instrumentation on and with `--no-instrumentation`,
# in one run, alternating, each broker on a fresh data directory.
#
# The client is broker/examples/produce_latency.rs: one request in flight per
# connection, one batch of RECORDS records of 100 B per request, RATE requests
# per second per producer (0: closed loop), after a 3 s warm-up that is not
# recorded. The records' timestamps walk through the last 24 h in time order
# over the run, so every partition's books hold ~1440 one-minute buckets and
# the audit tick (each second) has them to count, store and send to a real
# agent.
#
# What a tick writes to disk is the books' durable part: the runs of records
# retention has deleted, and the groups' books. With RETENTION=1 both brokers
# roll 1 MiB segments and keep 4 MiB per partition, checked each second, so
# that the instrumented one stores ~1000 retired runs (~110 KB of JSON) per
# partition each tick; without it (the default) nothing is retired and each
# stored file is under 100 B.
#
# Usage: bench/produce-latency.sh [SECONDS] [REPS]   (defaults 20 5)
# Environment: RATE (default 500), RECORDS (10), ACKS (1 or -1, default 1),
# RETENTION (0 or 1, default 0), KAFKA_PORT, AGENT_PORT.
# Prints a Markdown table of medians (p50, p99, p99.9, max in µs, requests/s)
# and the ratio on/off.
set -euo pipefail

SECONDS_RUN=${1:-20}
REPS=${2:-5}
RATE=${RATE:-500}
RECORDS=${RECORDS:-10}
ACKS=${ACKS:-1}
RETENTION=${RETENTION:-0}
PRODUCERS=8
KAFKA_PORT=${KAFKA_PORT:-39193}
AGENT_PORT=${AGENT_PORT:-39491}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in curl cargo python3; do
    command -v "$tool" >/dev/null || { echo "produce-latency: \"$tool\" is needed" >&2; exit 2; }
done
echo "produce-latency: building (release)" >&2
cargo build --release --quiet -p tally --bin tally
cargo build --release --quiet -p tally-broker --example produce_latency
tally=$root/target/release/tally
client=$root/target/release/examples/produce_latency
work=$(mktemp -d -t tally-latency.XXXXXX)
agent_pid=
broker_pid=
cleanup() {
    for p in $broker_pid $agent_pid; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$tally" agent --listen "127.0.0.1:$AGENT_PORT" --data-dir "$work/agent" --log warn &
agent_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$AGENT_PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$AGENT_PORT/readyz" >/dev/null ||
    { echo "produce-latency: the agent is not ready on port $AGENT_PORT" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }

run_once() { # mode rep -> the client's JSON line; not in a subshell, so that cleanup sees the broker
    local mode=$1 rep=$2 dir="$work/broker-$1-$2" flags=()
    if [ "$mode" = off ]; then flags=(--no-instrumentation); fi
    if [ "$RETENTION" = 1 ]; then
        flags+=(--segment-bytes 1048576 --retention-bytes 4194304 --retention-check 1s)
    fi
    if listening; then
        echo "produce-latency: port $KAFKA_PORT is taken before the broker starts" >&2
        return 1
    fi
    "$tally" broker --listen "127.0.0.1:$KAFKA_PORT" --data-dir "$dir" --no-metrics --log warn \
        --agent "ws://127.0.0.1:$AGENT_PORT/api/v1/ingest" "${flags[@]}" &
    broker_pid=$!
    for _ in $(seq 100); do listening && break; sleep 0.1; done
    "$client" --port "$KAFKA_PORT" --topic "latency-$mode-$rep" --producers "$PRODUCERS" \
        --records "$RECORDS" --seconds "$SECONDS_RUN" --rate "$RATE" --acks "$ACKS"
    kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true
    broker_pid=
    rm -rf "$dir"
}

declare -A results
for rep in $(seq "$REPS"); do
    for mode in on off; do
        run_once "$mode" "$rep" > "$work/result"
        r=$(<"$work/result")
        echo "produce-latency: rep $rep $mode: $r" >&2
        results[$mode]+="$r"$'\n'
    done
done

python3 - "${results[on]}" "${results[off]}" "$PRODUCERS" "$RECORDS" "$RATE" "$ACKS" "$SECONDS_RUN" "$REPS" "$RETENTION" <<'PY'
import json, statistics, sys
on_text, off_text, producers, records, rate, acks, seconds, reps, retention = sys.argv[1:]
def medians(text):
    runs = [json.loads(l) for l in text.strip().splitlines()]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
on, off = medians(on_text), medians(off_text)
load = "closed loop" if float(rate) == 0 else f"{rate} req/s each"
if retention == "1":
    load += ", retention 4 MiB of 1 MiB segments"
print(f"| figure ({producers} producers on {producers} partitions, {records} records of 100 B "
      f"per request, {load}, acks={acks}, {seconds} s, median of {reps}) "
      "| instrumentation on | off | on / off |")
print("|---|---|---|---|")
for key, name in [("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("p999_us", "p99.9 µs"),
                  ("max_us", "max µs"), ("requests_per_s", "requests/s")]:
    ratio = on[key] / off[key] if off[key] else float("nan")
    bold = "**" if key == "p99_us" else ""
    print(f"| {name} | {on[key]:,.0f} | {off[key]:,.0f} | {bold}{ratio:.3f}{bold} |")
PY
