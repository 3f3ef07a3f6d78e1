#!/usr/bin/env bash
# Transactional produce throughput on tally's broker, as a ratio to plain
# idempotent produce in the same run (issue 19's target: >= 0.8).
#
# Workload (bench/broker/transactions.py, confluent-kafka with its bundled
# librdkafka): COUNT records of 100 B to a topic of one partition, once by an
# idempotent producer and once by a transactional one in transactions of
# TXN_SIZE records, both acks=all, linger.ms=LINGER_MS (default 5,
# librdkafka's); REPS repetitions alternating
# the order, on one broker started here with an empty data folder and the
# audit counting (--agent "": nothing is sent). Prints each phase and the
# medians with their ratio.
#
# Usage: bench/transactions.sh [COUNT] [REPS] [TXN_SIZE]   (defaults: 1000000 5 1000)
# Environment: TALLY_BIN (a tally binary; default: cargo build --release),
#   TALLY_PORT (default 39192), LINGER_MS (both producers' linger.ms, default 5), FSYNC (the broker's --fsync, default interval:1000),
#   KEEP=1 keeps the work folder.
set -euo pipefail

COUNT=${1:-1000000}
REPS=${2:-5}
TXN_SIZE=${3:-1000}
TALLY_PORT=${TALLY_PORT:-39192}
FSYNC=${FSYNC:-interval:1000}
LINGER_MS=${LINGER_MS:-5}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out="$root/bench/out"
venv="$out/venv"
mkdir -p "$out"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check confluent-kafka==2.16.1

if [[ -n "${TALLY_BIN:-}" ]]; then
    tally=$(realpath "$TALLY_BIN")
else
    echo "transactions-bench: building tally (release)" >&2
    cargo build --release --quiet -p tally --bin tally
    tally="$root/target/release/tally"
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$TALLY_PORT") 2>/dev/null; then
    echo "transactions-bench: something already listens on 127.0.0.1:$TALLY_PORT; set TALLY_PORT" >&2
    exit 2
fi

work=$(mktemp -d)
broker_pid=
cleanup() {
    [[ -n "$broker_pid" ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null || true
    if [[ "${KEEP:-}" == 1 ]]; then echo "transactions-bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

"$tally" broker --listen "127.0.0.1:$TALLY_PORT" --data-dir "$work/data" --agent "" \
    --no-metrics --fsync "$FSYNC" 2>"$work/broker.log" &
broker_pid=$!
for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$TALLY_PORT") 2>/dev/null && break
    sleep 0.05
done

echo "transactions-bench: $COUNT records of 100 B, transactions of $TXN_SIZE, $REPS repetitions, linger.ms $LINGER_MS, fsync $FSYNC" >&2
results="$out/transactions-$(date +%Y%m%dT%H%M%S).jsonl"
"$venv/bin/python" bench/broker/transactions.py "127.0.0.1:$TALLY_PORT" "$COUNT" "$REPS" "$TXN_SIZE" "$LINGER_MS" | tee "$results"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {p: statistics.median(r["records_per_s"] for r in rows if r["phase"] == p)
       for p in ("idempotent", "transactional")}
print(f"\n| producer | records/s (median) |\n|---|---|")
for p, v in med.items():
    print(f"| {p} | {v:,.0f} |")
print(f"\ntransactional / idempotent: {med['transactional'] / med['idempotent']:.2f}")
PY
