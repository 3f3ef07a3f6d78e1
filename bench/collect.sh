#!/usr/bin/env bash
# The collector's lag poll (issue 14): `tally collect` as a real process watching a
# `tally broker` on 127.0.0.1 (a foreign cluster as far as the collector knows) that
# holds GROUPS consumer groups without members, each with a committed offset on all
# PARTITIONS partitions of one topic (1,000 × 100 = 100,000 committed offsets at the
# defaults), every one below the end, so every group lags and is stuck.
#
# Set-up (bench/collect/setup.py, confluent-kafka from .venv): the topic, RECORDS
# records per partition stamped one second apart, and one OffsetCommit per group
# (librdkafka's AlterConsumerGroupOffsets) at offsets that cover every offset of every
# partition (20,000 distinct (partition, offset) pairs at the defaults), so the first
# poll must read that many records for lag seconds and later polls none (the cache).
#
# Then `tally collect --lag-interval 5s --metadata-interval 1h --agent "" --no-audit` (the lag poll alone; the books' reading has bench/collect-tail.sh) runs with
# its debug log on; bench/collect/measure.py follows the `lag poll done` lines and, per
# poll, takes the wall time from tally_collect_poll_duration_seconds (sum by
# difference), offsets, record reads and cache hits from the counters, the collector's
# and the broker's CPU (utime + stime, /proc/PID/stat) and the collector's RSS and
# VmHWM (/proc/PID/status). It reports the first poll apart and the medians of the
# steady polls against the targets (≥ 250,000 offsets per CPU-second of the collector,
# poll ≤ 1 s, VmHWM ≤ 100 MiB, 0 record reads after the first poll) and the anchors
# (KMinion 100–120k offsets/s on 2 cores, Burrow 40–50k).
#
# Usage: bench/collect.sh [POLLS]        (steady polls measured after the first; default 7)
# Environment:
#   GROUPS_N, PARTITIONS, RECORDS   the workload (1000, 100, 200)
#   BROKER_PORT, BROKER_METRICS_PORT, COLLECT_METRICS_PORT   on 127.0.0.1 (39592, 39593, 39594)
#   PERF=1        after the measured polls, profile the collector over two more
#                 (perf record -g; the top symbols go into the report)
#   TALLY_BIN     use this tally binary instead of building one (cargo build --release)
#   KEEP=1        keep the work folder (logs)
# Output: bench/out/collect/results-*.jsonl (one line per poll and a summary line)
# and the markdown tables on stdout. Stops the broker and the collector on any exit.
set -euo pipefail

POLLS=${1:-7}
GROUPS_N=${GROUPS_N:-1000}
PARTITIONS=${PARTITIONS:-100}
RECORDS=${RECORDS:-200}
BROKER_PORT=${BROKER_PORT:-39592}
BROKER_METRICS_PORT=${BROKER_METRICS_PORT:-39593}
COLLECT_METRICS_PORT=${COLLECT_METRICS_PORT:-39594}
LAG_INTERVAL=5

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python="$root/.venv/bin/python"
[[ -x "$python" ]] || { echo "collect-bench: $python is needed (with confluent-kafka)" >&2; exit 2; }
"$python" -c 'import confluent_kafka' 2>/dev/null \
    || { echo "collect-bench: confluent-kafka is not installed in .venv" >&2; exit 2; }
if [[ "${PERF:-0}" == 1 ]]; then
    command -v perf >/dev/null || { echo "collect-bench: PERF=1 needs perf" >&2; exit 2; }
fi

TALLY_BIN=${TALLY_BIN:-}
if [[ -n "$TALLY_BIN" ]]; then
    tally=$(realpath "$TALLY_BIN")
    echo "collect-bench: using $tally (TALLY_BIN), not building" >&2
else
    echo "collect-bench: building tally (release)" >&2
    cargo build --release --quiet -p tally --bin tally
    target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    tally="$target_dir/release/tally"
fi

for port in "$BROKER_PORT" "$BROKER_METRICS_PORT" "$COLLECT_METRICS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "collect-bench: something already listens on 127.0.0.1:$port; set BROKER_PORT, BROKER_METRICS_PORT or COLLECT_METRICS_PORT" >&2
        exit 2
    fi
done

out="$root/bench/out/collect"
mkdir -p "$out"
work=$(mktemp -d -t tally-collect-bench.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        # A poll in progress finishes before the collector stops; then SIGKILL.
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if ((rc != 0)) && [[ -f "$work/collect.log" ]]; then
        echo "collect-bench: failed; the collector's log ends with:" >&2
        tail -n 20 "$work/collect.log" >&2
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then echo "collect-bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$tally" broker --no-instrumentation --agent "" --log warn \
    --listen "127.0.0.1:$BROKER_PORT" --metrics-listen "127.0.0.1:$BROKER_METRICS_PORT" \
    --data-dir "$work/broker" >"$work/broker.log" 2>&1 &
broker_pid=$!
pids+=("$broker_pid")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break
    kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
    sleep 0.1
done

echo "collect-bench: set-up: $GROUPS_N groups × $PARTITIONS partitions, $RECORDS records each" >&2
setup=$(timeout 600 "$python" bench/collect/setup.py --bootstrap "127.0.0.1:$BROKER_PORT" \
    --partitions "$PARTITIONS" --records "$RECORDS" --groups "$GROUPS_N" --deadline 300)

# The collector, its debug log of tally_collect only (one line per poll).
env -u RUST_LOG "$tally" collect --bootstrap "127.0.0.1:$BROKER_PORT" --cluster bench --agent "" \
    --lag-interval "${LAG_INTERVAL}s" --metadata-interval 1h --no-audit \
    --metrics-listen "127.0.0.1:$COLLECT_METRICS_PORT" --data-dir "$work/collect" \
    --log "warn,tally_collect=debug" >"$work/collect.log" 2>&1 &
collect_pid=$!
pids+=("$collect_pid")

commit=$(git rev-parse --short HEAD)
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
meta=$("$python" -c 'import json, sys; print(json.dumps(dict(zip(["commit", "machine", "date", "command"], sys.argv[1:]))))' \
    "$commit" "$(nproc) cores ($model), $mem, kernel $(uname -r)" "$(date -u +%Y-%m-%dT%H:%MZ)" \
    "bench/collect.sh $POLLS")
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$out/results-$stamp.jsonl"
perf_args=()
[[ "${PERF:-0}" != 1 ]] || perf_args=(--perf "$work/perf.data")

"$python" bench/collect/measure.py --pid "$collect_pid" --broker-pid "$broker_pid" \
    --log "$work/collect.log" --metrics "http://127.0.0.1:$COLLECT_METRICS_PORT/metrics" \
    --polls "$POLLS" --interval "$LAG_INTERVAL" --poll-timeout 180 \
    --out "$results" --setup "$setup" --meta "$meta" "${perf_args[@]}"
echo "collect-bench: results in ${results#"$root/"}" >&2
