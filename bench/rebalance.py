#!/usr/bin/env python3
"""bench-rebalance: a worker joins and another leaves in the middle of a drain.

The reference burst (2,400 requests at 10x a 16-slot x 132 ms backend that answers 429
above its slots) starts on 2 workers; 5 s in, a third joins the group; 12 s in, the first
is stopped (SIGTERM: it drains its calls and leaves). Figures per run, min / median / max
over RUNS: backend utilisation over the drain (first accepted request to last outcome),
overload responses per 1,000 calls, lost, failed.

Usage: bench/rebalance.py [--runs 3] [--sample] (print each worker's share and in-flight
                                                 every 250 ms)
Environment: SLUICE_BIN, SLUICE_TANSU_BIN.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from group import sampler  # noqa: E402

SLOTS = 16
SERVICE_S = 0.132
REQUESTS = 2400
JOIN_AT, LEAVE_AT = 5.0, 12.0


def one_run(binary, sample):
    with h.Procs("rebalance") as procs:
        bootstrap = h.start_tansu(procs, {"sluice.requests": 8, "sluice.replies": 8,
                                          "sluice.dlq": 1, "sluice.control": 1})
        backend = h.start_mock(procs, binary, SLOTS, 100, 1, "reject")
        extra = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_WORKER_ENV", "").split(",") if kv)
        env = h.worker_env(bootstrap, backend, extra)
        workers = [h.Worker(procs, binary, f"worker-{i + 1}", env) for i in range(2)]
        for w in workers:
            w.wait_ready()
        h.wait_assigned(workers)
        time.sleep(1.0)
        report_file = os.path.join(procs.dir, "report.json")
        rate = round(10 * SLOTS / SERVICE_S)
        load = subprocess.Popen([binary, "loadgen", "--kafka", bootstrap, "--requests", str(REQUESTS),
                                 "--rate", str(rate), "--max-tokens", "32", "--timeout", "300s",
                                 "--backend-metrics", backend + "/metrics", "--json-file", report_file],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started = time.monotonic()
        stop, samples = threading.Event(), []
        if sample:
            threading.Thread(target=sampler, args=(workers, backend, stop, samples),
                             daemon=True).start()
        time.sleep(JOIN_AT)
        joining = h.Worker(procs, binary, "worker-3", env)
        workers.append(joining)
        time.sleep(max(0.0, started + LEAVE_AT - time.monotonic()))
        workers[0].proc.send_signal(signal.SIGTERM)
        load.wait(timeout=600)
        stop.set()
        print("\n".join(samples))
        report = h.loadgen_report(report_file)
        assert joining.assigned(), "the third worker got partitions"
        b = report["backend"]
        return {"utilisation": b["utilisation"], "overload": b["overload_per_1000_calls"],
                "lost": report["lost"],
                "failed": h.failed(report)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample", action="store_true")
    args = parser.parse_args()
    binary = h.sluice_bin()
    runs = []
    for i in range(args.runs):
        r = one_run(binary, args.sample)
        h.say(f"run {i + 1}: utilisation {r['utilisation']:.3f}, overload/1000 {r['overload']:.1f}, "
              f"lost {r['lost']}, failed {r['failed']}")
        runs.append(r)
    print()
    print(f"bench-rebalance: {REQUESTS} requests at 10x a {SLOTS}-slot backend; 2 workers, a third "
          f"joins at {JOIN_AT:.0f} s, the first leaves at {LEAVE_AT:.0f} s; {args.runs} runs (min / median / max)")
    h.table(("utilisation", "overload/1000", "lost", "failed"), [(
        h.fmt_spread([r["utilisation"] for r in runs], "{:.3f}"),
        h.fmt_spread([r["overload"] for r in runs], "{:.1f}"),
        sum(r["lost"] for r in runs), sum(r["failed"] for r in runs))])


if __name__ == "__main__":
    main()
