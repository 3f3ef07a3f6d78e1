#!/usr/bin/env bash
# The collector's reading of a log for its exact books (issue 15), against a librdkafka
# consumer reading the same log in the same run.
#
# A `tally broker --no-instrumentation` on 127.0.0.1 (a foreign cluster as far as the
# collector knows) gets COUNT records of SIZE bytes on one partition, produced by kcat
# in batches of CODEC (none or zstd). Then, per repetition:
#   - kcat -C reads the partition from the beginning to the end (-e) into /dev/null;
#   - `tally collect --audit-topics bench --agent ""` reads it from the beginning, in a
#     fresh state folder, until its tally_collect_tail_records_total reaches COUNT.
# Each reader's wall time (from its start until it has read everything), its CPU
# (utime + stime from /proc/PID/stat, sampled at that moment) and, for the collector,
# its peak RSS (VmHWM). Reported: records/s and CPU seconds per million records of
# both, their ratios (targets: the collector ≥ 1× kcat's records/s, and for
# uncompressed records ≤ ½ of kcat's CPU per record), medians over REPS.
#
# Usage: bench/collect-tail.sh [COUNT] [REPS]     (defaults: 1000000 3)
# Environment: SIZE (100), CODEC (none|zstd; default none), PORT (39692),
#   METRICS_PORT (39693), TALLY_BIN (use this binary instead of building), KEEP=1.
set -euo pipefail

COUNT=${1:-1000000}
REPS=${2:-3}
SIZE=${SIZE:-100}
CODEC=${CODEC:-none}
PORT=${PORT:-39692}
METRICS_PORT=${METRICS_PORT:-39693}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in kcat curl python3; do
    command -v "$tool" >/dev/null || { echo "tail-bench: \"$tool\" is needed" >&2; exit 2; }
done
TALLY_BIN=${TALLY_BIN:-}
if [[ -n "$TALLY_BIN" ]]; then
    tally=$(realpath "$TALLY_BIN")
else
    echo "tail-bench: building tally (release)" >&2
    cargo build --release -p tally --bin tally >&2
    tally="$root/target/release/tally"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-tail-bench.XXXXXX")
broker_pid=""
collector_pid=""
cleanup() {
    for pid in $collector_pid $broker_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP:-0}" == 1 ]]; then echo "tail-bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
now() { date +%s.%N; }

"$tally" broker --listen "127.0.0.1:$PORT" --data-dir "$work/broker" --no-metrics --agent "" \
    --no-instrumentation --log warn >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
    kcat -b "127.0.0.1:$PORT" -L >/dev/null 2>&1 && break
    sleep 0.1
done

echo "tail-bench: producing $COUNT records of $SIZE B ($CODEC)" >&2
python3 -c "
import sys
line = b'x' * ($SIZE - 1) + b'\n'
out = sys.stdout.buffer
for _ in range($COUNT):
    out.write(line)
" | kcat -P -b "127.0.0.1:$PORT" -t bench -p 0 -z "$CODEC" -X linger.ms=5 -X batch.num.messages=10000
end=$(kcat -Q -b "127.0.0.1:$PORT" -t bench:0:-1 2>/dev/null | awk '{print $NF}')
echo "tail-bench: log end $end" >&2

results="$work/results.txt"
: >"$results"
for rep in $(seq 1 "$REPS"); do
    # kcat -C from the beginning to the end (bash's `time`: wall, user and system seconds).
    timing=$( { TIMEFORMAT='%R %U %S'; time kcat -C -b "127.0.0.1:$PORT" -t bench -p 0 \
        -o beginning -e -q >/dev/null; } 2>&1 )
    read -r wall user sys <<<"$timing"
    echo "kcat $rep $wall $(echo "$user + $sys" | bc)" >>"$results"

    # The collector from the beginning, in a fresh state folder.
    rm -rf "$work/collect"
    t0=$(now)
    "$tally" collect --cluster bench --bootstrap "127.0.0.1:$PORT" --audit-topics bench \
        --agent "" --data-dir "$work/collect" --metrics-listen "127.0.0.1:$METRICS_PORT" \
        --lag-interval 1h --metadata-interval 1h --log "${COLLECT_LOG:-warn}" >"$work/collect.log" 2>&1 &
    collector_pid=$!
    while :; do
        read_n=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null \
            | awk '/^tally_collect_tail_records_total/ {print $2}')
        if [[ -n "$read_n" ]] && python3 -c "import sys; sys.exit(0 if float('$read_n') >= $end else 1)"; then
            break
        fi
        kill -0 "$collector_pid" || { echo "tail-bench: the collector died:" >&2; cat "$work/collect.log" >&2; exit 1; }
        sleep 0.02
    done
    t1=$(now)
    ccpu=$(cpu_of "$collector_pid")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$collector_pid/status")
    kill "$collector_pid"
    wait "$collector_pid" 2>/dev/null || true
    collector_pid=""
    echo "collect $rep $(echo "$t1 - $t0" | bc) $ccpu $hwm" >>"$results"
done

python3 - "$results" "$end" "$SIZE" "$CODEC" <<'EOF'
import statistics, sys
path, count, size, codec = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [l.split() for l in open(path)]
def med(who, i):
    return statistics.median(float(r[i]) for r in rows if r[0] == who)
k_s, c_s = med("kcat", 2), med("collect", 2)
k_cpu, c_cpu = med("kcat", 3), med("collect", 3)
hwm = med("collect", 4) / 1024
print(f"{count:,} records of {size} B ({codec}), median of {len([r for r in rows if r[0] == 'kcat'])} runs")
print()
print("| reader | seconds | records/s | CPU s | CPU s / M records | peak RSS MiB |")
print("|---|---|---|---|---|---|")
print(f"| kcat -C | {k_s:.2f} | {count / k_s:,.0f} | {k_cpu:.2f} | {k_cpu / count * 1e6:.2f} | |")
print(f"| tally collect | {c_s:.2f} | {count / c_s:,.0f} | {c_cpu:.2f} | {c_cpu / count * 1e6:.2f} | {hwm:.0f} |")
print()
print(f"records/s: {k_s / c_s:.2f}x kcat's; CPU per record: {c_cpu / k_cpu:.2f}x kcat's")
EOF
