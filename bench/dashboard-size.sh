#!/usr/bin/env bash
# The dashboard at real sizes (issue 18): a release `tally agent` at its
# default 1 s tick holds 3 clusters of 667 topics × 10 partitions (2,001
# topics) and 334 groups each reading 10 topics (100,200 lag partitions),
# fed by three bench/agent/feed.py (one per cluster, 2 sources each, a lag
# round every 10 s). Once every feeder has sent its first round,
# dashboard/benches/size.rs connects as a dashboard and measures, over
# SECONDS: the first frame after connecting, each frame's cost, keys, RSS.
#
# Targets: first frame ≤ 2 s; frames ≤ 5 ms; keys within one frame; RSS ≤ 200 MiB.
#
# Usage: bench/dashboard-size.sh [SECONDS]   (default 60)
# Environment: PORT (default 39511), KEEP=1 keeps the work folder.
# Prints the bench's Markdown table on stdout; progress on stderr.
set -euo pipefail

SECS=${1:-60}
PORT=${PORT:-39511}
READY_TIMEOUT_S=60
FIRST_ROUND_TIMEOUT_S=180
CLUSTERS=(east west eu-central-1)

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { echo "dashboard-size: $*" >&2; }
for tool in curl cargo python3; do
    command -v "$tool" >/dev/null || { say "\"$tool\" is needed"; exit 2; }
done
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || ((SECS < 10)); then
    say "SECONDS \"$SECS\" is not accepted: expected a whole number of seconds, 10 or more"
    exit 2
fi

say "building (release): the agent and the bench"
cargo build --release --quiet -p tally --bin tally
cargo bench --quiet -p tally-dashboard --bench size --no-run 2>/dev/null
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tally="$target_dir/release/tally"

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-dashboard-size.XXXXXX")
agent_pid=""
feeder_pids=()
stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid=$1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    for pid in "${feeder_pids[@]}"; do stop_pid "$pid"; done
    stop_pid "$agent_pid"
    if [[ "${KEEP:-0}" == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    say "$1"
    for f in "$work"/*.log; do
        [[ -s "$f" ]] && { say "--- tail of $f"; tail -n 20 "$f" >&2; }
    done
    exit 1
}

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz"; then
    say "something already listens on 127.0.0.1:$PORT; set PORT"
    exit 2
fi
"$tally" agent --listen "127.0.0.1:$PORT" --data-dir "$work/agent" --log info >"$work/agent.log" 2>&1 &
agent_pid=$!
code=""
for _ in $(seq $((READY_TIMEOUT_S * 10))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/readyz" || true)
    [[ "$code" == 200 ]] && break
    kill -0 "$agent_pid" 2>/dev/null || fail "the agent exited before it was ready"
    sleep 0.1
done
[[ "$code" == 200 ]] || fail "the agent was not ready within ${READY_TIMEOUT_S}s"

for c in "${CLUSTERS[@]}"; do
    python3 "$root/bench/agent/feed.py" --agent "127.0.0.1:$PORT" --cluster "$c" \
        --source-prefix "size-$c" --sources 2 --topics 667 --groups 334 --partitions 10 \
        --stats "$work/feed-$c.json" >"$work/feed-$c.log" 2>&1 &
    feeder_pids+=($!)
done
say "agent ready (pid $agent_pid); waiting for each feeder's first round"
deadline=$((SECONDS + FIRST_ROUND_TIMEOUT_S))
for c in "${CLUSTERS[@]}"; do
    until [[ -s "$work/feed-$c.json" ]]; do
        ((SECONDS < deadline)) || fail "feeder $c sent no round within ${FIRST_ROUND_TIMEOUT_S}s"
        for pid in "${feeder_pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a feeder exited"; done
        sleep 1
    done
done
grep -q 'ingest refused' "$work/agent.log" && fail "the agent refused messages: the deployment is not what was meant"
sleep 3
say "fed; measuring the dashboard for ${SECS}s"
TALLY_AGENT="http://127.0.0.1:$PORT" BENCH_SECONDS="$SECS" \
    cargo bench --quiet -p tally-dashboard --bench size 2>"$work/bench.log" || {
    cat "$work/bench.log" >&2
    fail "the dashboard missed a target, or could not run"
}
grep '^size:' "$work/bench.log" >&2 || true
say "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
