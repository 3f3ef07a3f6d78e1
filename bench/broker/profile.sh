#!/usr/bin/env bash
# Where tally's broker spends its CPU while kcat produces, then consumes,
# COUNT records of SIZE bytes: a `perf record` profile of each phase (DWARF
# call graphs), the broker's CPU seconds, and its fsync count.
#
# Usage: bench/broker/profile.sh [COUNT] [SIZE] [FSYNC]   (defaults: 1000000 100 interval:1000)
# Needs perf, kcat and the release build and venv that bench/broker.sh makes.
# Environment: PORT (default 39092), KEEP=1 keeps the perf data.
set -euo pipefail

COUNT=${1:-1000000}
SIZE=${2:-100}
FSYNC=${3:-interval:1000}
PORT=${PORT:-39092}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
python="$root/bench/out/venv/bin/python"
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tally="$target_dir/release/tally"
for need in perf kcat "$python" "$tally"; do
    command -v "$need" >/dev/null || { echo "profile: \"$need\" is needed (run bench/broker.sh once)" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-broker-profile.XXXXXX")
broker_pid=""
cleanup() {
    if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; else echo "profile: kept $work" >&2; fi
}
trap cleanup EXIT

"$python" bench/broker/client.py payload "$COUNT" "$SIZE" "$work/payload.txt" >/dev/null
"$tally" broker --listen "127.0.0.1:$PORT" --data-dir "$work/data" --no-metrics --agent "" \
    --fsync "$FSYNC" --log warn >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
    timeout 5 kcat -b "127.0.0.1:$PORT" -L -m 2 >/dev/null 2>&1 && break
    sleep 0.1
done
"$python" bench/broker/client.py create-topic "127.0.0.1:$PORT" bench >/dev/null

cpu() { awk '{print ($14 + $15) / 100}' "/proc/$broker_pid/stat"; }

# One phase under `perf record`, bounded by `timeout`.
profiled() {
    local name=$1; shift
    perf record -q -F 999 --call-graph dwarf,16384 -p "$broker_pid" -o "$work/$name.data" \
        >/dev/null 2>&1 &
    local perf_pid=$!
    sleep 0.5
    local c0 w0
    c0=$(cpu)
    w0=$(date +%s.%N)
    timeout 300 "$@"
    echo "$name: $(echo "$(date +%s.%N) - $w0" | bc) s wall, broker $(echo "$(cpu) - $c0" | bc) CPU s (under perf)"
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    echo "$name: the broker's CPU by function (self time, top 12):"
    perf report -i "$work/$name.data" --no-children --sort symbol --percent-limit 1 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | sed 's/ \{2,\}-.*$//' | head -12 || true
    echo "$name: the broker's CPU by stage of the data path (bench/broker/stages.py):"
    perf script -i "$work/$name.data" 2>/dev/null | "$python" "$root/bench/broker/stages.py"
}

# fsyncs during the produce phase: the tracepoints count every call.
perf stat -e 'syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync' -p "$broker_pid" \
    -o "$work/fsyncs.txt" >/dev/null 2>&1 &
stat_pid=$!
profiled produce kcat -P -b "127.0.0.1:$PORT" -t bench -p 0 -l "$work/payload.txt" \
    -X acks=all -X linger.ms=5 -X compression.codec=none -X enable.idempotence=false
kill -INT "$stat_pid"
wait "$stat_pid" || true
echo "produce: fsync calls: $(awk '/sys_enter_f/ {gsub(",", "", $1); s += $1} END {print s + 0}' "$work/fsyncs.txt")"

profiled consume sh -c "kcat -C -b 127.0.0.1:$PORT -t bench -p 0 -o beginning -e -q -f '%S\n' \
    -X fetch.wait.max.ms=10 -X queued.min.messages=10000000 -X queued.max.messages.kbytes=2097151 | wc -l"
