#!/usr/bin/env bash
# The agent holding a day of history (issue 16, DESIGN §8): RSS, restart to
# ready, and a late count into a 20-hour-old bucket, end to end.
#
# The fixture is 24 h of one-minute buckets for 1,000 topics x 10 partitions
# x 3 tiers (broker, group:billing, group:search): 43,200,000 stored cells,
# seeded once through `Store::write` by the `seed_store` example into
# FIXTURE (default target/bench-fixtures/history-43m; several GB, kept for
# the next run, never part of the test suite). Each run copies it afresh,
# starts `tally agent` with its defaults (1 h window, 2 min grace), and takes:
#   - the wall time from exec to the first `GET /readyz` = 200;
#   - the agent's RSS once ready, and after WARM seconds of evaluation;
#   - `tally_ledger_cells` (what memory holds of the stored cells);
#   - a POST of one count into the bucket 20 h back (a new value for one
#     partition of orders-0000's broker tier): the time to its ack, and to a
#     `GET /api/v1/topics/orders-0000/buckets` of that bucket from storage
#     that shows the new sum.
#
# Usage: bench/agent-history.sh [RUNS] [WARM]   (defaults: 3 10)
# Environment: FIXTURE, CELLS (43200000), TOPICS (1000), PORT (39472),
# MAX_AGE (minutes a fixture is used before it is seeded again, 10),
# KEEP=1 keeps the work folder.
set -euo pipefail

RUNS=${1:-3}
WARM=${2:-10}
CELLS=${CELLS:-43200000}
TOPICS=${TOPICS:-1000}
PORT=${PORT:-39472}
READY_TIMEOUT_S=120

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in curl cargo python3; do
    command -v "$tool" >/dev/null || { echo "agent-history: \"$tool\" is needed" >&2; exit 2; }
done

echo "agent-history: building (release)" >&2
cargo build --release --quiet -p tally --bin tally
cargo build --release --quiet -p tally-agent --example seed_store
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tally="$target_dir/release/tally"
seed="$target_dir/release/examples/seed_store"
FIXTURE=${FIXTURE:-$target_dir/bench-fixtures/history-43m}

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-agent-history.XXXXXX")
agent_pid=""
cleanup() {
    if [[ -n "$agent_pid" ]] && kill -0 "$agent_pid" 2>/dev/null; then
        kill "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; else echo "agent-history: kept $work" >&2; fi
}
trap cleanup EXIT

if curl -s -o /dev/null "http://127.0.0.1:$PORT/readyz"; then
    echo "agent-history: something already listens on 127.0.0.1:$PORT; set PORT" >&2
    exit 2
fi

# The fixture's buckets end at the minute it was seeded: the agent's 1 h
# window holds only the buckets of the last hour, so a fixture older than
# MAX_AGE minutes (default 10) is seeded again, so that the window holds at
# least 50 of its 60 buckets (what restart and memory are measured with).
MAX_AGE=${MAX_AGE:-10}
if [[ -f "$FIXTURE/agent.db" ]] && [[ -n $(find "$FIXTURE/agent.db" -mmin +"$MAX_AGE") ]]; then
    echo "agent-history: the fixture is older than $MAX_AGE min; seeding it again" >&2
    rm -rf "$FIXTURE"
fi
if [[ ! -f "$FIXTURE/agent.db" ]]; then
    mkdir -p "$(dirname "$FIXTURE")"
    echo "agent-history: seeding $CELLS cells of $TOPICS topics into $FIXTURE (once)" >&2
    "$seed" "$FIXTURE.tmp" "$CELLS" "$TOPICS"
    mv "$FIXTURE.tmp" "$FIXTURE"
fi
echo "agent-history: fixture $(du -sh "$FIXTURE" | cut -f1)" >&2

now_ms() { date +%s%3N; }
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | sed -n "s/^$1 \([0-9.e+]*\).*/\1/p"; }

width=60000
for run in $(seq 1 "$RUNS"); do
    rm -rf "$work/run"
    cp -r "$FIXTURE" "$work/run"
    sync
    start=$(now_ms)
    RUST_LOG=info "$tally" agent --data-dir "$work/run" --listen "127.0.0.1:$PORT" \
        >"$work/agent-$run.log" 2>&1 &
    agent_pid=$!
    deadline=$((start + READY_TIMEOUT_S * 1000))
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/readyz" || true)
        if [[ "$code" == 200 ]]; then ready=$(now_ms); break; fi
        if ! kill -0 "$agent_pid" 2>/dev/null; then
            echo "agent-history: the agent exited; its log:" >&2
            cat "$work/agent-$run.log" >&2
            exit 1
        fi
        if (($(now_ms) > deadline)); then
            echo "agent-history: not ready within ${READY_TIMEOUT_S}s" >&2
            exit 1
        fi
        sleep 0.01
    done
    rss_ready=$(rss_mib "$agent_pid")
    # Ready comes before the window's cells are in memory: when they are,
    # the agent logs it.
    cells_in="?"
    while (($(now_ms) < deadline)); do
        if grep -q "stored cells are in memory" "$work/agent-$run.log"; then cells_in=$(($(now_ms) - start)); break; fi
        sleep 0.01
    done
    sleep "$WARM"
    rss_warm=$(rss_mib "$agent_pid")
    cells=$(metric tally_ledger_cells)

    # The late count: partition 0 of orders-0000's broker tier, 20 h back,
    # gets 1,000,000 more records than the fixture gave it.
    newest=$(( $(now_ms) / width * width ))
    bucket=$((newest - 1200 * width))
    before=$(curl -s "http://127.0.0.1:$PORT/api/v1/topics/orders-0000/buckets?from=$bucket&to=$((bucket + width))" |
        python3 -c 'import json,sys; b=json.load(sys.stdin)["buckets"]; print(b[0]["tiers"]["broker"]["records"] if b else "none")')
    if [[ "$before" == none ]]; then
        echo "agent-history: the bucket 20 h back is not in storage (fixture too old?)" >&2
        exit 1
    fi
    stored=$(python3 - "$work/run/agent.db" "$bucket" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(db.execute("SELECT records FROM cell WHERE bucket = ? AND source = 0 AND series = 0 AND partition_no = 0",
                 (int(sys.argv[2]),)).fetchone()[0])
EOF
)
    new=$((stored + 1000000))
    body=$(printf '[{"v":1,"type":"hello","source":"broker-local-1","cluster":"local","tier_kinds":["broker","group"],"bucket_width_ms":%d,"started_at_ms":%d},{"v":1,"type":"counts","seq":1,"counts":[{"tier":"broker","topic":"orders-0000","partition":0,"bucket":%d,"records":%d,"bytes":0}]}]' \
        "$width" "$(now_ms)" "$bucket" "$new")
    # curl's own clock: the POST until its answer (the ack comes once the
    # count is committed), then the GET of the stored bucket.
    t_ack=$(curl -s --max-time 10 -o "$work/reply" -w '%{time_total}' -H 'Content-Type: application/json' \
        --data "$body" "http://127.0.0.1:$PORT/api/v1/ingest")
    t_view=$(curl -s --max-time 10 -o "$work/view" -w '%{time_total}' \
        "http://127.0.0.1:$PORT/api/v1/topics/orders-0000/buckets?from=$bucket&to=$((bucket + width))")
    if ! grep -q '"type":"ack"' "$work/reply"; then
        echo "agent-history: the late count was not acknowledged: $(cat "$work/reply")" >&2
        exit 1
    fi
    after=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["buckets"][0]["tiers"]["broker"]["records"])' "$work/view")
    if [[ "$after" != "$((before + 1000000))" ]]; then
        echo "agent-history: the stored bucket shows $after broker records, expected $((before + 1000000))" >&2
        exit 1
    fi
    ms() { python3 -c 'import sys; print(round(float(sys.argv[1]) * 1000, 1))' "$1"; }
    kill "$agent_pid"
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=""
    loaded=$(sed 's/\x1b\[[0-9;]*m//g' "$work/agent-$run.log" | sed -n 's/.*stored state loaded.*elapsed_ms=\([0-9]*\).*/\1/p')
    echo "run $run: ready in $((ready - start)) ms (load ${loaded:-?} ms), the window's cells in memory at ${cells_in} ms, $cells cells in memory, RSS ${rss_ready} MiB ready / ${rss_warm} MiB after ${WARM}s; late count acked in $(ms "$t_ack") ms, then the stored bucket view with it in $(ms "$t_view") ms"
done
