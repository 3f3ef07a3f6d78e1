#!/usr/bin/env bash
# Steady CPU of `tally dashboard` at a 1 s feed: the demo (broker, agent with
# its default 1 s evaluation tick, librdkafka workload) runs headless, the
# dashboard watches its agent in a detached tmux session of 200×60, and the
# dashboard's utime+stime from /proc/<pid>/stat is read over SECS seconds
# after a warm-up. The view is switched to Groups (sparklines move every tick).
#
# Usage: bench/dashboard-cpu.sh [SECS]   (default 60)
# Environment: PORT (agent, default 39481); KAFKA_PORT (39482); METRICS_PORT (39483).
set -euo pipefail

SECS=${1:-60}
PORT=${PORT:-39481}
KAFKA_PORT=${KAFKA_PORT:-39482}
METRICS_PORT=${METRICS_PORT:-39483}
WARMUP_S=10

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in tmux curl cargo; do
    command -v "$tool" >/dev/null || { echo "dashboard-cpu: \"$tool\" is needed" >&2; exit 2; }
done
echo "dashboard-cpu: building (release)" >&2
cargo build --release --quiet -p tally --bin tally
tally="$root/target/release/tally"

work=$(mktemp -d)
socket="tally-dashboard-cpu-$$"
demo_pid=""
cleanup() {
    tmux -L "$socket" kill-server 2>/dev/null || true
    [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$tally" demo --no-tui --duration $((SECS + WARMUP_S + 60)) \
    --agent-listen "127.0.0.1:$PORT" --kafka-listen "127.0.0.1:$KAFKA_PORT" \
    --metrics-listen "127.0.0.1:$METRICS_PORT" >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "dashboard-cpu: the demo's agent is not ready" >&2; cat "$work/demo.err" >&2; exit 1; }

tmux -L "$socket" -f /dev/null new-session -d -s cpu -x 200 -y 60 \
    "sh -c 'echo \$\$ > $work/pid; exec $tally dashboard --agent http://127.0.0.1:$PORT'"
for _ in $(seq 1 50); do [ -s "$work/pid" ] && break; sleep 0.1; done
pid=$(cat "$work/pid")
sleep 2
tmux -L "$socket" send-keys -t cpu 4

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
sleep "$WARMUP_S"
t0=$(ticks "$pid"); s0=$(date +%s.%N)
sleep "$SECS"
t1=$(ticks "$pid"); s1=$(date +%s.%N)
tmux -L "$socket" capture-pane -p -t cpu | head -3 >&2
awk -v t0="$t0" -v t1="$t1" -v hz="$hz" -v s0="$s0" -v s1="$s1" 'BEGIN {
    cpu = (t1 - t0) / hz; wall = s1 - s0;
    printf "dashboard CPU over %.1f s: %.2f s of CPU = %.2f %% of one core\n", wall, cpu, 100 * cpu / wall
}'
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
echo "dashboard RSS: ${rss} kB"
