#!/usr/bin/env python3
"""bench-group: the reference burst from DESIGN.md through a group of workers.

A burst of 2,400 requests, produced straight to Kafka at 10x the capacity of a backend of
SLOTS slots x 132 ms that answers 429 above SLOTS in flight (sluice is not told the
capacity), drained by N `sluice worker` processes with default settings. Every case runs
RUNS times, each on a fresh broker, backend and workers; the table gives min / median / max
of each figure over the runs:

  utilisation    backend slot-time busy / (slots x drain window), first send -> last outcome
  overload/1000  429s for want of a slot per 1,000 backend calls
  drain/ideal    drain window / (requests / capacity)
  lost, failed   accepted without a final reply; final replies other than ok

Usage: bench/group.py [--runs 5] [--cases 1x16,2x16,4x16,2x48,4x48] [--requests 2400]
                      [--baseline] (also each case with group pacing off: every worker on
                                    its own controller, as before group pacing)
                      [--sample]   (print each worker's limit/in-flight every 250 ms)
Environment: SLUICE_BIN (skip the build), SLUICE_TANSU_BIN, BENCH_WORKER_ENV
(extra worker settings as KEY=VALUE,KEY=VALUE).
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

LATENCY_MS = 100
PER_TOKEN_MS = 1
MAX_TOKENS = 32
SERVICE_S = (LATENCY_MS + PER_TOKEN_MS * MAX_TOKENS) / 1000.0
PARTITIONS = 8


def extra_worker_env():
    env = {}
    for pair in filter(None, os.environ.get("BENCH_WORKER_ENV", "").split(",")):
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def sampler(workers, backend, stop, out):
    t0 = time.monotonic()
    while not stop.wait(0.25):
        try:
            mock = h.metrics(backend + "/metrics")
            b = mock.get("sluice_mock_in_flight", 0)
            rejected = next((v for k, v in mock.items()
                             if k.startswith("sluice_mock_requests_total") and "rejected" in k), 0)
            parts = []
            for w in list(workers):
                try:
                    m = w.metrics()
                except Exception:  # not serving yet, or gone
                    parts.append(f"{w.name} -")
                    continue
                group = lambda name: next((v for k, v in m.items() if k.startswith(name + "{")), -1)
                parts.append("%s est=%d share=%d in_flight=%d buffered=%d" % (
                    w.name, group("sluice_worker_group_capacity_estimate"),
                    group("sluice_worker_group_share"),
                    m.get("sluice_worker_in_flight", -1), m.get("sluice_worker_buffered", -1)))
            out.append("t=%5.2f backend=%2d refused=%3d | %s" % (time.monotonic() - t0, b, rejected,
                                                               " | ".join(parts)))
        except Exception as e:  # a process may be gone at the end
            out.append(f"sample failed: {e}")


def one_run(binary, workers_n, slots, requests, sample, alone=False):
    capacity = slots / SERVICE_S
    rate = round(10 * capacity)
    with h.Procs(f"group-{workers_n}x{slots}") as procs:
        bootstrap = h.start_tansu(procs, {"sluice.requests": PARTITIONS, "sluice.replies": PARTITIONS,
                                          "sluice.dlq": 1, "sluice.control": 1})
        backend = h.start_mock(procs, binary, slots, LATENCY_MS, PER_TOKEN_MS, "reject")
        extra = extra_worker_env()
        if alone:
            extra["SLUICE__WORKER__GROUP_PACING"] = "false"
        env = h.worker_env(bootstrap, backend, extra)
        workers = [h.Worker(procs, binary, f"worker-{i + 1}", env) for i in range(workers_n)]
        for w in workers:
            w.wait_ready()
        h.wait_assigned(workers)
        time.sleep(1.0)
        samples, stop = [], threading.Event()
        if sample:
            threading.Thread(target=sampler, args=(workers, backend, stop, samples), daemon=True).start()
        report = h.loadgen(binary, ["--kafka", bootstrap, "--requests", str(requests), "--rate", str(rate),
                                    "--max-tokens", str(MAX_TOKENS), "--timeout", "300s",
                                    "--backend-metrics", backend + "/metrics"],
                           env, os.path.join(procs.dir, "report.json"))
        stop.set()
        if sample:
            print("\n".join(samples), file=sys.stderr)
        b = report["backend"]
        failed = h.failed(report)
        return {
            "utilisation": b["utilisation"],
            "overload": b["overload_per_1000_calls"],
            "drain": b["window_seconds"] / (requests / capacity),
            "lost": report["lost"],
            "failed": failed + sum(report["refused"].values()),
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default="1x16,2x16,4x16,2x48,4x48")
    parser.add_argument("--requests", type=int, default=2400)
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--json", help="also write every run's figures to this file")
    args = parser.parse_args()
    binary = h.sluice_bin()
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    modes = [("group", False)] + ([("alone", True)] if args.baseline else [])
    results = {}
    for workers_n, slots in cases:
        for mode, alone in modes:
            if alone and workers_n == 1:
                continue
            runs = []
            for i in range(args.runs):
                r = one_run(binary, workers_n, slots, args.requests, args.sample, alone)
                h.say(f"{mode}: {workers_n} workers x {slots} slots, run {i + 1}: utilisation "
                      f"{r['utilisation']:.3f}, overload/1000 {r['overload']:.1f}, drain/ideal "
                      f"{r['drain']:.2f}, lost {r['lost']}, failed {r['failed']}")
                runs.append(r)
            results[f"{mode} {workers_n}x{slots}"] = runs
    print()
    print(f"bench-group: {args.requests} requests at 10x capacity, backend {LATENCY_MS} ms + "
          f"{PER_TOKEN_MS} ms/token x {MAX_TOKENS} tokens, 429 above its slots; {PARTITIONS} partitions; "
          f"{args.runs} runs per case (min / median / max)")
    rows = []
    for (workers_n, slots) in cases:
        for mode, _ in modes:
            runs = results.get(f"{mode} {workers_n}x{slots}")
            if not runs:
                continue
            col = lambda k: [r[k] for r in runs]
            label = f"{workers_n} worker(s), {slots} slots" + (", each alone" if mode == "alone" else "")
            rows.append((label, h.fmt_spread(col("utilisation"), "{:.3f}"),
                         h.fmt_spread(col("overload"), "{:.1f}"), h.fmt_spread(col("drain"), "{:.2f}"),
                         sum(col("lost")), sum(col("failed"))))
    h.table(("case", "utilisation", "overload/1000", "drain/ideal", "lost", "failed"), rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
