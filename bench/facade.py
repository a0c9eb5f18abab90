#!/usr/bin/env python3
"""What the OpenAI front door costs at idle, on tansu: `POST /v1/chat/completions` through
sluice (ingress -> Kafka -> worker -> mock backend -> reply topic -> ingress) against the
same mock backend called directly, one request at a time.

  sync    instant backend: end-to-end p50/p99 through sluice and direct; the
          difference is sluice's overhead (the backend's own time cancels out); then
          again with every Kafka client at fetch.wait.max.ms=2 and linger.ms=0, and
          what each costs in CPU while idle (ingress + worker, 5 s)
  stream  50 ms to the first token, then 10 ms per token, 100 tokens: time to first
          token and the gap between data lines, p50/p99, through sluice and direct;
          Kafka chunk records written per 1,000 tokens
  wait    (--wait-s, once) a stream whose first token comes after that long: the
          keep-alive comments it got while waiting, and whether it then completed

Each run starts its own broker, backend, ingress and worker. Prints min / median / max
over the runs, sluice and direct side by side.

usage: facade.py [--runs N] [--requests N] [--streams N] [--wait-s S]
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import time

import harness
from harness import say

TOPICS = {"sluice.requests": 4, "sluice.replies": 4, "sluice.dlq": 1, "sluice.control": 1}
PROMPT = [{"role": "user", "content": "hello there"}]


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def post(conn, body, headers=None):
    """One request on a kept-alive connection; returns (status, response)."""
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"content-type": "application/json", **(headers or {})})
    return conn.getresponse()


def sync_latencies(host, port, n):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = {"model": "mock", "messages": PROMPT, "max_tokens": 16}
    post(conn, body).read()  # warm the connection and the path
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = post(conn, body)
        payload = response.read()
        times.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"sync call answered {response.status}: {payload[:300]!r}")
    conn.close()
    return times


def read_stream(host, port, tokens, headers=None, timeout=120):
    """One streamed call: (first content after ms, gaps between data lines in ms,
    keep-alive comments, finished with [DONE], text)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = {"model": "mock", "messages": PROMPT, "max_tokens": tokens, "stream": True}
    started = time.perf_counter()
    response = post(conn, body, headers)
    if response.status != 200:
        raise RuntimeError(f"stream answered {response.status}: {response.read()[:300]!r}")
    first, last, gaps, keepalives, done, text = None, None, [], 0, False, []
    while True:
        line = response.readline()
        if not line:
            break
        line = line.decode().rstrip("\r\n")
        now = time.perf_counter()
        if line.startswith(":"):
            keepalives += "keep-alive" in line
            continue
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"stream error event: {chunk}")
        content = "".join((c.get("delta") or {}).get("content") or "" for c in chunk["choices"])
        if not content:
            continue
        text.append(content)
        if first is None:
            first = (now - started) * 1000
        else:
            gaps.append((now - last) * 1000)
        last = now
    conn.close()
    return first, gaps, keepalives, done, "".join(text)


def counter(url, name):
    for line in harness.http_get(url).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# Every Kafka client tuned for latency over idle cost (see the sync rows).
LOW_LATENCY_ENV = {
    "SLUICE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS": "2",
    "SLUICE__KAFKA__CLIENT__LINGER_MS": "0",
}


def start(procs, binary, latency_ms, per_token_ms, extra_env=None):
    """Broker, mock backend, ingress and one worker; returns (ingress port, backend
    port, worker, ingress and worker processes)."""
    bootstrap = harness.start_tansu(procs, TOPICS)
    backend = harness.start_mock(procs, binary, 8, latency_ms, per_token_ms)
    env = harness.worker_env(bootstrap, backend, extra_env)
    port = harness.free_port()
    ingress = procs.start("ingress", [binary, "ingress"],
                          {**env, "SLUICE__INGRESS__LISTEN": f"127.0.0.1:{port}"})
    harness.wait_http(f"http://127.0.0.1:{port}/readyz", "ingress")
    worker = harness.Worker(procs, binary, "worker", env)
    worker.wait_ready()
    harness.wait_assigned([worker])
    _, backend_port = backend.replace("http://", "").split(":")
    return port, int(backend_port), worker, [ingress, worker.proc]


def cpu_seconds(procs):
    """User + system CPU time used so far by these processes."""
    total = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def idle_cpu_share(procs, seconds=5.0):
    """CPU used by `procs` while nothing is sent, as a share of one core."""
    before = cpu_seconds(procs)
    time.sleep(seconds)
    return (cpu_seconds(procs) - before) / seconds


def one_run(binary, index, args):
    result = {}
    for variant, extra_env in (("", None), ("tuned_", LOW_LATENCY_ENV)):
        with harness.Procs(f"facade-sync-{index}") as procs:
            port, backend_port, _, roles = start(procs, binary, 0, 0, extra_env)
            result[variant + "idle_cpu"] = idle_cpu_share(roles)
            via = sync_latencies("127.0.0.1", port, args.requests)
            direct = sync_latencies("127.0.0.1", backend_port, args.requests)
            for name, times in (("sync_via", via), ("sync_direct", direct)):
                result[variant + name + "_p50"] = statistics.median(times)
                result[variant + name + "_p99"] = percentile(times, 99)
    with harness.Procs(f"facade-stream-{index}") as procs:
        port, backend_port, worker, _ = start(procs, binary, 50, 10)
        metrics = worker.admin + "/metrics"
        records0 = counter(metrics, "sluice_worker_stream_chunks_total")
        tokens0 = counter(metrics, "sluice_worker_completion_tokens_total")
        for name, target in (("via", port), ("direct", backend_port)):
            firsts, gaps = [], []
            for _ in range(args.streams):
                first, stream_gaps, _, done, _ = read_stream("127.0.0.1", target, 100)
                if not done:
                    raise RuntimeError(f"a stream {name} sluice ended without [DONE]")
                firsts.append(first)
                gaps.extend(stream_gaps)
            result[f"ttft_{name}_p50"] = statistics.median(firsts)
            result[f"ttft_{name}_p99"] = percentile(firsts, 99)
            result[f"gap_{name}_p50"] = statistics.median(gaps)
            result[f"gap_{name}_p99"] = percentile(gaps, 99)
            if name == "via":
                records = counter(metrics, "sluice_worker_stream_chunks_total") - records0
                tokens = counter(metrics, "sluice_worker_completion_tokens_total") - tokens0
                result["records_per_1000_tokens"] = 1000 * records / max(tokens, 1)
    return result


def waiting_stream(binary, wait_s):
    with harness.Procs("facade-wait") as procs:
        port, _, _, _ = start(procs, binary, int(wait_s * 1000), 1)
        started = time.monotonic()
        first, _, keepalives, done, text = read_stream("127.0.0.1", port, 20, timeout=wait_s + 60)
        return {
            "first_token_s": first / 1000,
            "keepalives": keepalives,
            "completed": done and len(text.split()) == 20,
            "took_s": time.monotonic() - started,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="sync calls per run and side")
    parser.add_argument("--streams", type=int, default=20, help="streams per run and side")
    parser.add_argument("--wait-s", type=float, default=30.0,
                        help="first-token delay of the keep-alive check (0: skip it)")
    args = parser.parse_args()
    binary = harness.sluice_bin()
    runs = []
    for index in range(args.runs):
        say(f"run {index + 1}/{args.runs}")
        runs.append(one_run(binary, index, args))
        say(json.dumps({k: round(v, 2) for k, v in runs[-1].items()}))

    def col(key):
        return harness.fmt_spread([r[key] for r in runs], "{:.1f}")

    print(f"\nOpenAI front door at idle on tansu, {args.runs} runs (min / median / max), ms")
    rows = []
    for label, key in (("sync end to end p50", "sync_{}_p50"), ("sync end to end p99", "sync_{}_p99"),
                       ("sync, clients tuned, p50", "tuned_sync_{}_p50"),
                       ("sync, clients tuned, p99", "tuned_sync_{}_p99"),
                       ("stream first token p50", "ttft_{}_p50"), ("stream first token p99", "ttft_{}_p99"),
                       ("stream gap between lines p50", "gap_{}_p50"),
                       ("stream gap between lines p99", "gap_{}_p99")):
        via, direct = key.format("via"), key.format("direct")
        added = [r[via] - r[direct] for r in runs]
        rows.append((label, col(via), col(direct), harness.fmt_spread(added, "{:.1f}")))
    harness.table(("", "through sluice", "direct", "added by sluice"), rows)
    print("\nIdle CPU of ingress + worker, share of one core: defaults "
          + harness.fmt_spread([r["idle_cpu"] for r in runs], "{:.3f}")
          + "; fetch.wait.max.ms=2, linger.ms=0: "
          + harness.fmt_spread([r["tuned_idle_cpu"] for r in runs], "{:.3f}"))
    print("Kafka chunk records per 1,000 tokens: "
          + harness.fmt_spread([r["records_per_1000_tokens"] for r in runs], "{:.0f}"))
    if args.wait_s > 0:
        say(f"a stream waiting {args.wait_s:.0f} s for its first token")
        w = waiting_stream(binary, args.wait_s)
        print(f"\nA stream that waited {w['first_token_s']:.1f} s: {w['keepalives']} keep-alive comments, "
              f"{'completed' if w['completed'] else 'DID NOT COMPLETE'} ({w['took_s']:.1f} s)")
        if not w["completed"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
