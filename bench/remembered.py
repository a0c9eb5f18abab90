#!/usr/bin/env python3
"""bench-remembered: does a group start a burst at the capacity it found before?

The reference burst (2,400 requests at 10x a 48-slot mock backend of 132 ms a call, 429
above its slots) through 2 workers, twice, each run on a fresh broker and backend:

  restart  after the first burst every worker stops (SIGTERM); IDLE seconds later two new
           workers start and the second burst comes
  idle     the same workers, IDLE seconds idle between the bursts

Printed per case: each burst's utilisation (backend slot-time busy / (slots x drain
window)), overloads per 1,000 calls, lost and failed. The first burst searches from the
initial limit; the second shows what was remembered.

Usage: bench/remembered.py [--runs 5] [--cases restart,idle] [--idle 90] [--requests 2400]
                           [--sample]
Environment: SLUICE_BIN (skip the build), SLUICE_TANSU_BIN.
"""

import argparse
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# The reference burst's backend and topic, as bench-group runs them.
from group import LATENCY_MS, MAX_TOKENS, PARTITIONS, PER_TOKEN_MS, SERVICE_S  # noqa: E402
SLOTS = 48
WORKERS = 2
# Tries of a run whose workers got no partitions.
STARTS = 3


def start_workers(procs, binary, env, generation):
    workers = [h.Worker(procs, binary, f"worker-{generation}-{i + 1}", env) for i in range(WORKERS)]
    for w in workers:
        w.wait_ready()
    h.wait_assigned(workers)
    time.sleep(1.0)
    return workers


def burst(procs, binary, bootstrap, env, backend, requests, name):
    rate = round(10 * SLOTS / SERVICE_S)
    report = h.loadgen(binary, ["--kafka", bootstrap, "--requests", str(requests), "--rate", str(rate),
                                "--max-tokens", str(MAX_TOKENS), "--timeout", "300s",
                                "--backend-metrics", backend + "/metrics"],
                       env, os.path.join(procs.dir, f"report-{name}.json"))
    b = report["backend"]
    return {"utilisation": b["utilisation"], "overload": b["overload_per_1000_calls"],
            "lost": report["lost"], "failed": h.failed(report) + sum(report["refused"].values())}


def sampled(workers, backend, run):
    """`run()`, printing each worker's estimate and share every 250 ms meanwhile."""
    import group
    samples, stop = [], threading.Event()
    threading.Thread(target=group.sampler, args=(workers, backend, stop, samples), daemon=True).start()
    try:
        return run()
    finally:
        stop.set()
        print("\n".join(samples), file=sys.stderr)


def one_run(binary, case, idle, requests, sample):
    with h.Procs(f"remembered-{case}") as procs:
        bootstrap = h.start_tansu(procs, {"sluice.requests": PARTITIONS, "sluice.replies": PARTITIONS,
                                          "sluice.dlq": 1, "sluice.control": 1})
        backend = h.start_mock(procs, binary, SLOTS, LATENCY_MS, PER_TOKEN_MS, "reject")
        env = h.worker_env(bootstrap, backend)
        workers = start_workers(procs, binary, env, 1)
        first = burst(procs, binary, bootstrap, env, backend, requests, "first")
        if case == "restart":
            for w in workers:
                procs.stop(w.proc)
            time.sleep(idle)
            workers = start_workers(procs, binary, env, 2)
        else:
            time.sleep(idle)
        second = lambda: burst(procs, binary, bootstrap, env, backend, requests, "second")
        second = sampled(workers, backend, second) if sample else second()
        return {"first": first, "second": second, "started_at": started_at(procs, workers)}


def started_at(procs, workers):
    """The limits the workers said they started from (remembered), or None."""
    found = []
    for w in workers:
        m = re.search(r"starting at the capacity the group last found.*?limit=(\d+)", procs.log(w.name))
        if m:
            found.append(int(m.group(1)))
    return found or None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default="restart,idle")
    parser.add_argument("--idle", type=float, default=90.0)
    parser.add_argument("--requests", type=int, default=2400)
    parser.add_argument("--sample", action="store_true",
                        help="print each worker's estimate and share during the second burst")
    args = parser.parse_args()
    binary = h.sluice_bin()
    results, restarted = {}, 0
    for case in args.cases.split(","):
        for i in range(args.runs):
            for attempt in range(1, STARTS + 1):
                try:
                    r = one_run(binary, case, args.idle, args.requests, args.sample)
                    break
                except RuntimeError as e:
                    # tansu's group coordinator sometimes assigns no partitions to a group
                    # that emptied and filled again (README); such a run measures nothing
                    # of sluice.
                    if attempt == STARTS:
                        raise
                    h.say(f"{case}, run {i + 1} did not start ({e}); running it again")
                    restarted += 1
            h.say(f"{case}, run {i + 1}: " + "; ".join(
                f"{which} utilisation {r[which]['utilisation']:.3f} overload/1000 "
                f"{r[which]['overload']:.1f} lost {r[which]['lost']} failed {r[which]['failed']}"
                for which in ("first", "second")) + f"; remembered limit {r['started_at']}")
            results.setdefault(case, []).append(r)
    print()
    print(f"bench-remembered: {args.requests} requests at 10x a {SLOTS}-slot backend "
          f"({int(SERVICE_S * 1000)} ms a call, 429 above), {WORKERS} workers, {args.idle:.0f} s "
          f"between the bursts; {args.runs} runs (min / median / max)")
    rows = []
    for case, runs in results.items():
        for which in ("first", "second"):
            col = lambda k: [r[which][k] for r in runs]
            rows.append((f"{case}: {which} burst", h.fmt_spread(col("utilisation"), "{:.3f}"),
                         h.fmt_spread(col("overload"), "{:.1f}"), sum(col("lost")), sum(col("failed"))))
    h.table(("case", "utilisation", "overload/1000", "lost", "failed"), rows)
    if restarted:
        print(f"runs that did not start and ran again: {restarted}")


if __name__ == "__main__":
    main()
