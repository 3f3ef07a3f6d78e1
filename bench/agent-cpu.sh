#!/usr/bin/env bash
# Agent CPU between scrapes (issue 16): `tally agent` at its default 1 s tick,
# with the example alert rules (alerts/examples/tally.rules.yaml), holding
# 100,000 lag partitions (1,000 groups × 10 topics × 10 partitions, the
# deployment of agent/benches/metrics.rs) whose samples arrive every 10 s, plus
# the counts of the topics' `broker` and `group:` tiers.
#
# Target (issue 16): ≤ 0.1 core while nobody scrapes /metrics.
#
# bench/agent/feed.py sends the deployment from 4 sources of one cluster over
# POST /api/v1/ingest (each source its own topics, as DESIGN §5 wants, and
# under the default --max-series-per-source), every partition's lag sample and
# every count that moved each 10 s, and stops the run when any message is
# refused. After a warm-up, the agent's utime+stime (/proc/PID/stat) is read
# over two windows of SECONDS each: first with nobody scraping /metrics, then
# with a Prometheus-like scrape every 15 s (one render per 15 ticks). The
# feeder's CPU is measured apart and is not in the agent's figure; "others" is
# what the rest of the machine used meanwhile (/proc/stat less agent and
# feeder), to judge the noise.
#
# Usage: bench/agent-cpu.sh [SECONDS]   (default 60; each window lasts SECONDS)
# Environment: PORT (default 39497), WARMUP (seconds, default 120: the
#   10-commit health windows fill and the alerts with a `for` fire),
#   SCRAPE_EVERY (seconds, default 15), SOURCES (default 4), HISTORY (buckets
#   of counts before the start, default 5), KEEP=1 keeps the work folder,
#   PERF=1 then records the agent with `perf record --call-graph dwarf` for
#   up to 30 s more, after the measured windows (written to the work folder;
#   implies KEEP=1).
# Prints a Markdown table on stdout; progress on stderr.
set -euo pipefail

SECS=${1:-60}
PORT=${PORT:-39497}
WARMUP=${WARMUP:-120}
SCRAPE_EVERY=${SCRAPE_EVERY:-15}
SOURCES=${SOURCES:-4}
HISTORY=${HISTORY:-5}
PERF=${PERF:-0}
[[ "$PERF" == 1 ]] && KEEP=1
TARGET_CORES=0.1
READY_TIMEOUT_S=60

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { echo "agent-cpu: $*" >&2; }
for tool in curl cargo python3 awk; do
    command -v "$tool" >/dev/null || { say "\"$tool\" is needed"; exit 2; }
done
if [[ "$PERF" == 1 ]] && ! command -v perf >/dev/null; then say "PERF=1 needs \"perf\""; exit 2; fi
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || ((SECS < 15)); then
    say "SECONDS \"$SECS\" is not accepted: expected a whole number of seconds, 15 or more"
    exit 2
fi

say "building (release)"
cargo build --release --quiet -p tally --bin tally
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tally="$target_dir/release/tally"
rules="$root/alerts/examples/tally.rules.yaml"

# Background processes are started from this shell only (never in a
# subshell), so that their pids stay known to the trap.
work=$(mktemp -d "${TMPDIR:-/tmp}/tally-agent-cpu.XXXXXX")
agent_pid=""
feeder_pid=""
perf_pid=""
stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid=$1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$perf_pid"
    stop_pid "$feeder_pid"
    stop_pid "$agent_pid"
    if [[ "${KEEP:-0}" == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz"; then
    say "something already listens on 127.0.0.1:$PORT; set PORT"
    exit 2
fi

"$tally" agent --listen "127.0.0.1:$PORT" --data-dir "$work/agent" --rules "$rules" \
    --log info >"$work/agent.log" 2>&1 &
agent_pid=$!

fail() { # message: print it with the tails of the logs, and stop
    say "$1"
    for f in agent.log feed.log; do
        [[ -s "$work/$f" ]] && { say "--- tail of $f"; tail -n 20 "$work/$f" >&2; }
    done
    exit 1
}
check_alive() {
    kill -0 "$agent_pid" 2>/dev/null || fail "the agent exited"
    if [[ -n "$feeder_pid" ]] && ! kill -0 "$feeder_pid" 2>/dev/null; then
        wait "$feeder_pid" && rc=0 || rc=$?
        feeder_pid=""
        fail "the feeder exited (status $rc)"
    fi
    if grep -q 'ingest refused' "$work/agent.log"; then
        say "the agent refused messages:"
        grep -m 5 'ingest refused' "$work/agent.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
        fail "refused messages: the deployment is not what was meant"
    fi
}
# Sleeps until the wall clock reaches $1 (seconds since the epoch,
# fractional), checking the processes every second; inside a window, also
# notes the agent's CPU ticks each second (to $samples).
samples=""
sleep_until() {
    local until=$1 left
    while :; do
        [[ -n "$samples" ]] && echo "$(date +%s.%N) $(ticks "$agent_pid")" >>"$samples"
        left=$(awk -v u="$until" -v n="$(date +%s.%N)" 'BEGIN { d = u - n; if (d > 0.001) printf "%.3f", d; else print 0 }')
        [[ "$left" == 0 ]] && return 0
        check_alive
        sleep "$(awk -v l="$left" 'BEGIN { print (l > 1 ? 1 : l) }')"
    done
}

for _ in $(seq $((READY_TIMEOUT_S * 10))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/readyz" || true)
    [[ "$code" == 200 ]] && break
    kill -0 "$agent_pid" 2>/dev/null || fail "the agent exited before it was ready"
    sleep 0.1
done
[[ "$code" == 200 ]] || fail "the agent was not ready within ${READY_TIMEOUT_S}s"
max_message_bytes=$("$tally" agent --print-config | sed -n 's/^max_message_bytes *= *\([0-9]*\).*/\1/p')
[[ -n "$max_message_bytes" ]] || max_message_bytes=1048576
rules_loaded=$(curl -fsS "http://127.0.0.1:$PORT/api/v1/rules" | python3 -c 'import json,sys; v=json.load(sys.stdin); r=v.get("rules", v) if isinstance(v, dict) else v; print(len(r))')
say "agent ready (pid $agent_pid), $rules_loaded alert rules from $rules, --max-message-bytes $max_message_bytes"

python3 "$root/bench/agent/feed.py" --agent "127.0.0.1:$PORT" --sources "$SOURCES" \
    --history "$HISTORY" --max-message-bytes "$max_message_bytes" --stats "$work/feed.json" \
    2>"$work/feed.log" &
feeder_pid=$!
say "feeder started (pid $feeder_pid); warming up for ${WARMUP}s"
sleep_until "$(awk -v n="$(date +%s.%N)" -v w="$WARMUP" 'BEGIN { printf "%.3f", n + w }')"
[[ -s "$work/feed.json" ]] || fail "the feeder finished no round during the warm-up"

hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
store_ticks() { # CPU of the agent's SQLite writer thread
    local t=0 f
    for f in /proc/"$agent_pid"/task/*/stat; do
        t=$(awk -v t="$t" '$2 == "(tally-store)" { t += $14 + $15 } END { print t }' "$f" 2>/dev/null || echo "$t")
    done
    echo "$t"
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; } # user nice system irq softirq
rss_kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
metric() { # file name: the sum of a metric's samples in a scrape
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF; f = 1 } END { print f ? s : 0 }' "$1"
}
series() { grep -c "^$2{" "$1" || true; }

scrape() { # out: one scrape to a file; prints "seconds bytes"
    curl -fsS -o "$1" -w '%{time_total} %{size_download}' --max-time 60 "http://127.0.0.1:$PORT/metrics"
}

# What the agent holds, read before the quiet window (this scrape renders once,
# and is done before the window starts).
scrape "$work/before.txt" >/dev/null || fail "the scrape before the quiet window failed"
lag_series=$(series "$work/before.txt" tally_consumer_lag_records)
stale_series=$(awk '/^tally_consumer_lag_stale\{/ && $NF == 1 { n++ } END { print n + 0 }' "$work/before.txt")
cells=$(metric "$work/before.txt" tally_ledger_cells)
errors=$(metric "$work/before.txt" tally_ingest_errors_total)
renders0=$(metric "$work/before.txt" tally_agent_metrics_renders_total)
lag_expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lag_partitions"])' "$work/feed.json")
say "before the windows: $lag_series lag series ($stale_series stale), $cells ledger cells, ingest errors $errors"
[[ "$lag_series" == "$lag_expected" ]] || fail "the agent shows $lag_series lag series, expected $lag_expected"
[[ "$errors" == 0 ]] || fail "the agent counted $errors ingest errors"
sleep 1

declare -A R
window() { # name scrape(0|1)
    local name=$1 scraping=$2 a0 s0 f0 m0 w0 a1 s1 f1 m1 w1 t start next k=0 times=()
    a0=$(ticks "$agent_pid"); s0=$(store_ticks); f0=$(ticks "$feeder_pid"); m0=$(machine_ticks)
    w0=$(date +%s.%N)
    start=$w0
    samples="$work/samples-$name"
    echo "$w0 $a0" >"$samples"
    while :; do
        next=$(awk -v s="$start" -v k="$k" -v e="$SCRAPE_EVERY" 'BEGIN { printf "%.3f", s + k * e }')
        if [[ "$scraping" == 1 ]] && ((k * SCRAPE_EVERY < SECS)); then
            sleep_until "$next"
            t=$(scrape "$work/scrape-$k.txt") || fail "scrape $k failed"
            times+=("$t")
            k=$((k + 1))
        else
            sleep_until "$(awk -v s="$start" -v d="$SECS" 'BEGIN { printf "%.3f", s + d }')"
            break
        fi
    done
    a1=$(ticks "$agent_pid"); s1=$(store_ticks); f1=$(ticks "$feeder_pid"); m1=$(machine_ticks)
    w1=$(date +%s.%N)
    echo "$w1 $a1" >>"$samples"
    samples=""
    R[$name]=$(awk -v a0="$a0" -v a1="$a1" -v s0="$s0" -v s1="$s1" -v f0="$f0" -v f1="$f1" \
        -v m0="$m0" -v m1="$m1" -v w0="$w0" -v w1="$w1" -v hz="$hz" 'BEGIN {
        w = w1 - w0; a = (a1 - a0) / hz; s = (s1 - s0) / hz; f = (f1 - f0) / hz;
        o = (m1 - m0) / hz - a - f;
        printf "%.1f %.2f %.3f %.3f %.3f %.3f", w, a, a / w, s / w, f / w, (o > 0 ? o : 0) / w }')
    R[$name.rss]=$(rss_kib "$agent_pid" VmRSS)
    if ((${#times[@]})); then
        R[$name.scrapes]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ t[NR] = $1; b = $2 } END {
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2;
            printf "%d, median %.0f ms, %.1f MiB each", NR, m * 1000, b / 1048576 }')
    else
        R[$name.scrapes]="none"
    fi
    say "window $name: ${R[$name]} (wall s, agent CPU s, agent cores, store thread cores, feeder cores, others' cores)"
}

say "quiet window: ${SECS}s, nobody scrapes /metrics"
window quiet 0
# Nothing may have rendered the exposition in the quiet window: the first
# scrape after it renders once, so the counter moves by exactly one.
scrape "$work/between.txt" >/dev/null || fail "the scrape after the quiet window failed"
renders1=$(metric "$work/between.txt" tally_agent_metrics_renders_total)
quiet_renders=$((renders1 - renders0 - 1))
say "scraped window: ${SECS}s, a scrape every ${SCRAPE_EVERY}s"
sleep 2
window scraped 1

scrape "$work/after.txt" >/dev/null || fail "the last scrape failed"
check_alive
cells_after=$(metric "$work/after.txt" tally_ledger_cells)
lag_after=$(series "$work/after.txt" tally_consumer_lag_records)
errors=$(metric "$work/after.txt" tally_ingest_errors_total)
firing=$(awk '/^tally_alerts\{/ && /state="firing"/ { s += $NF } END { print s + 0 }' "$work/after.txt")
pending=$(awk '/^tally_alerts\{/ && /state="pending"/ { s += $NF } END { print s + 0 }' "$work/after.txt")
series_total=$(grep -vc '^#' "$work/after.txt" || true)
[[ "$errors" == 0 ]] || fail "the agent counted $errors ingest errors"
[[ "$lag_after" == "$lag_expected" ]] || fail "the agent shows $lag_after lag series at the end, expected $lag_expected"
hwm=$(rss_kib "$agent_pid" VmHWM)
feed=$(python3 - "$work/feed.json" "$WARMUP" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r = [x["seconds"] for x in s["rounds"]]
steady = r[1:] or r
steady.sort()
print(f'{len(r)} rounds every {s["interval_s"]:g} s, first (with history) {r[0]:.2f} s, '
      f'steady median {steady[len(steady) // 2]:.2f} s, max {max(steady):.2f} s, overran {s["overran"]}; '
      f'{s["sent"]["lag_samples"]:,} lag samples and {s["sent"]["count_entries"]:,} counts in '
      f'{s["sent"]["messages"]:,} messages, {s["sent"]["posts"]:,} POSTs')
PY
)
overran=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["overran"])' "$work/feed.json")
# The agent's CPU second by second, split by whether a lag round was being
# ingested (from its start to 1 s after its last ack) or not: between rounds
# the agent only evaluates on its tick (and stores what the tick changed).
split() { # window -> "cores during rounds, cores between rounds (median of seconds), seconds between"
    python3 - "$work/samples-$1" "$work/feed.json" "$hz" <<'PY'
import json, statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
rounds = [(r["at_ms"] / 1000, r["at_ms"] / 1000 + r["seconds"] + 1) for r in json.load(open(sys.argv[2]))["rounds"]]
hz = float(sys.argv[3])
busy, idle = [], []
for (t0, c0), (t1, c1) in zip(rows, rows[1:]):
    if t1 - t0 < 0.5:
        continue
    cores = (c1 - c0) / hz / (t1 - t0)
    (busy if any(a < t1 and t0 < b for a, b in rounds) else idle).append((cores, t1 - t0))
def mean(xs):
    w = sum(d for _, d in xs)
    return sum(c * d for c, d in xs) / w if w else float("nan")
med = statistics.median(c for c, _ in idle) if idle else float("nan")
print(f"{mean(busy):.3f} {mean(idle):.3f} {med:.3f} {sum(d for _, d in idle):.0f}")
PY
}
read -r qbusy qidle qidlemed qidles <<<"$(split quiet)"
read -r sbusy sidle sidlemed sidles <<<"$(split scraped)"

if [[ "$PERF" == 1 ]]; then
    perf_secs=$((SECS < 30 ? SECS : 30))
    say "perf: recording the agent for ${perf_secs}s (no scrapes; DWARF call graphs)"
    perf record -F 199 --call-graph dwarf,16384 -p "$agent_pid" -o "$work/perf.data" \
        >"$work/perf.log" 2>&1 &
    perf_pid=$!
    sleep_until "$(awk -v n="$(date +%s.%N)" -v w="$perf_secs" 'BEGIN { printf "%.3f", n + w }')"
    stop_pid "$perf_pid"
    perf_pid=""
    perf report -i "$work/perf.data" --children --sort sym --stdio -g none --percent-limit 2 \
        >"$work/perf-children.txt" 2>/dev/null || true
    perf report -i "$work/perf.data" --no-children --sort comm,sym --stdio -g none --percent-limit 0.7 \
        >"$work/perf-self.txt" 2>/dev/null || true
fi

read -r qw qa qc qs qf qo <<<"${R[quiet]}"
read -r sw sa sc ss sf so <<<"${R[scraped]}"
verdict=$(awk -v c="$qc" -v t="$TARGET_CORES" 'BEGIN { print (c <= t ? "met" : "**missed**") }')
ratio=$(awk -v c="$qc" -v t="$TARGET_CORES" 'BEGIN { printf "%.2f", c / t }')

cat <<EOF

Agent CPU, \`bench/agent-cpu.sh $SECS\`: $lag_expected lag partitions (1,000 groups × 10 topics × 10 partitions) from $SOURCES sources every 10 s, tick 1 s, rules \`alerts/examples/tally.rules.yaml\` ($rules_loaded rules); $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo).

| window | wall s | agent CPU s | agent cores | of which the SQLite writer | while a lag round is ingested | between rounds (ticks only): mean, median second | agent RSS at end, MiB | feeder cores (not counted) | others' cores | /metrics scrapes |
|---|---|---|---|---|---|---|---|---|---|---|
| nobody scrapes | $qw | $qa | **$qc** | $qs | $qbusy | $qidle, $qidlemed (over ${qidles} s) | $(awk -v k="${R[quiet.rss]}" 'BEGIN { printf "%.0f", k / 1024 }') | $qf | $qo | none (renders in the window: $quiet_renders) |
| a scrape every ${SCRAPE_EVERY} s | $sw | $sa | **$sc** | $ss | $sbusy | $sidle, $sidlemed (over ${sidles} s) | $(awk -v k="${R[scraped.rss]}" 'BEGIN { printf "%.0f", k / 1024 }') | $sf | $so | ${R[scraped.scrapes]} |

Target ≤ $TARGET_CORES core with nobody scraping: $verdict ($ratio of the target). Agent peak RSS $(awk -v k="$hwm" 'BEGIN { printf "%.0f", k / 1024 }') MiB.
Ledger cells $cells before the quiet window, $cells_after at the end; $lag_after lag series; $series_total series in the exposition; alerts firing $firing, pending $pending.
Feeder: $feed.
EOF
((quiet_renders == 0)) || { say "the exposition was rendered $quiet_renders times in the quiet window"; exit 1; }
((overran == 0)) || { say "the feeder overran its interval $overran times: the agent did not get the load that was meant"; exit 1; }
if [[ "$PERF" == 1 ]]; then
    say "perf: $work/perf.data; top of the report (inclusive) in $work/perf-children.txt, self in $work/perf-self.txt"
fi
