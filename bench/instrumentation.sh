#!/usr/bin/env bash
# What the audit instrumentation costs: the same produce and consume runs
# against `tally broker` with it on and with `--no-instrumentation`, in one
# run, alternating, with kcat (librdkafka) as the client.
#
# The instrumented broker counts every record by bucket and sends the counts
# each second to a real agent, so both halves of the cost are in the figure.
#
# Usage: bench/instrumentation.sh [RECORDS] [REPS] [SIZE]   (defaults 1000000 3 100)
# Prints a Markdown table of medians (records/s and broker CPU s per million
# records) and the ratio on/off.
set -euo pipefail

RECORDS=${1:-1000000}
REPS=${2:-3}
SIZE=${3:-100}
KAFKA_PORT=${KAFKA_PORT:-39192}
AGENT_PORT=${AGENT_PORT:-39490}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in kcat curl cargo python3; do
    command -v "$tool" >/dev/null || { echo "instrumentation: \"$tool\" is needed" >&2; exit 2; }
done
echo "instrumentation: building (release)" >&2
cargo build --release --quiet -p tally --bin tally
tally=$root/target/release/tally
work=$(mktemp -d -t tally-instr.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$RECORDS" "$SIZE" > "$work/records.txt" <<'PY'
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
line = "x" * (size - 1)
sys.stdout.write((line + "\n") * n)
PY

"$tally" agent --listen "127.0.0.1:$AGENT_PORT" --data-dir "$work/agent" --log warn &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$AGENT_PORT/readyz" >/dev/null && break; sleep 0.1; done

cpu_seconds() { # utime+stime of a pid, in seconds
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

run_once() { # mode rep -> "produce_rps consume_rps cpu_per_million"
    local mode=$1 rep=$2 dir="$work/broker-$1-$2" flags=()
    if [ "$mode" = off ]; then flags=(--no-instrumentation); fi
    "$tally" broker --listen "127.0.0.1:$KAFKA_PORT" --data-dir "$dir" --no-metrics --log warn \
        --agent "ws://127.0.0.1:$AGENT_PORT/api/v1/ingest" "${flags[@]}" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 1 >/dev/null 2>&1 && break; sleep 0.1; done
    local topic="bench-$mode-$rep" c0 t0 t1 t2 c1
    c0=$(cpu_seconds "$pid")
    t0=$(date +%s.%N)
    kcat -b "127.0.0.1:$KAFKA_PORT" -P -t "$topic" -l "$work/records.txt" -X linger.ms=5 -X batch.num.messages=10000
    t1=$(date +%s.%N)
    kcat -b "127.0.0.1:$KAFKA_PORT" -C -t "$topic" -o beginning -e -q -c "$RECORDS" > /dev/null
    t2=$(date +%s.%N)
    c1=$(cpu_seconds "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c "import sys; n=$RECORDS; print(f'{n/($t1-$t0):.0f} {n/($t2-$t1):.0f} {($c1-$c0)*1e6/n:.3f}')"
}

declare -A results
for rep in $(seq "$REPS"); do
    for mode in on off; do
        # Not in a $(...) subshell: the broker's pid must reach `pids` for the cleanup.
        run_once "$mode" "$rep" > "$work/result"
        r=$(<"$work/result")
        echo "instrumentation: rep $rep $mode: produce/s consume/s cpu-s/M = $r" >&2
        results[$mode]+="$r"$'\n'
    done
done

python3 - "${results[on]}" "${results[off]}" "$RECORDS" "$SIZE" <<'PY'
import statistics, sys
def cols(text):
    rows = [list(map(float, l.split())) for l in text.strip().splitlines()]
    return [statistics.median(c) for c in zip(*rows)]
on, off = cols(sys.argv[1]), cols(sys.argv[2])
n, size = sys.argv[3], sys.argv[4]
print(f"| figure ({n} records of {size} B, kcat) | instrumentation on | off | on / off |")
print("|---|---|---|---|")
for i, name in enumerate(["produce records/s", "consume records/s", "broker CPU s per million records"]):
    print(f"| {name} | {on[i]:,.0f} | {off[i]:,.0f} | {on[i]/off[i]:.3f} |" if i < 2 else
          f"| {name} | {on[i]:.3f} | {off[i]:.3f} | {on[i]/off[i]:.3f} |")
PY
