#!/usr/bin/env python3
"""bench-capacity: the backend's capacity changes in the middle of a drain.

Two `sluice worker`s drain a backlog (9,000 requests produced to Kafka at ~10x the
capacity) from a backend of 32 slots x 132 ms that answers 429 above its slots. Ten
seconds into the drain the backend drops to 16 slots (`POST /admin/slots`, as another
tenant taking half would); ten seconds later it is back at 32. The backend's counters
are read every 100 ms and cut into 1 s buckets:

  overload stops after   from the drop to the end of the last bucket (before the rise)
                         in which more than 1% of calls were refused
  utilisation back after from the rise to the end of the first bucket at >= 90% of the
                         32 slots busy

Usage: bench/capacity_change.py [--runs 3]
Environment: SLUICE_BIN, SLUICE_TANSU_BIN; BENCH_BUCKETS=1 prints every bucket after a run
(seconds since the change: share of calls refused / slots busy on average).
"""

import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SLOTS, LOW = 32, 16
SERVICE_S = 0.132
REQUESTS = 9000
PHASE_S = 10.0


def sample(backend, stop, out):
    while not stop.wait(0.1):
        try:
            m = h.metrics(backend + "/metrics")
            calls = sum(v for k, v in m.items() if k.startswith("sluice_mock_requests_total"))
            out.append((time.monotonic(), m.get("sluice_mock_overload_rejections_total", 0.0), calls,
                        m.get("sluice_mock_busy_seconds_total", 0.0), m.get("sluice_mock_in_flight", 0.0)))
        except Exception:
            pass


def buckets(samples, start, end):
    """(bucket start, overload fraction, busy slot-seconds) per 1 s from `start`."""
    out = []
    t = start
    while t + 1.0 <= end:
        inside = [s for s in samples if t <= s[0] < t + 1.0]
        before = [s for s in samples if s[0] < t]
        if inside and before:
            a, b = before[-1], inside[-1]
            calls = b[2] - a[2]
            overload = (b[1] - a[1]) / calls if calls > 0 else 0.0
            out.append((t, overload, b[3] - a[3], b[0] - a[0]))
        t += 1.0
    return out


def one_run(binary):
    with h.Procs("capacity") as procs:
        bootstrap = h.start_tansu(procs, {"sluice.requests": 8, "sluice.replies": 8,
                                          "sluice.dlq": 1, "sluice.control": 1})
        backend = h.start_mock(procs, binary, SLOTS, 100, 1, "reject")
        env = h.worker_env(bootstrap, backend)
        workers = [h.Worker(procs, binary, f"worker-{i + 1}", env) for i in range(2)]
        for w in workers:
            w.wait_ready()
        h.wait_assigned(workers)
        time.sleep(1.0)
        samples, stop = [], threading.Event()
        threading.Thread(target=sample, args=(backend, stop, samples), daemon=True).start()
        rate = round(10 * SLOTS / SERVICE_S)
        load = subprocess.Popen([binary, "loadgen", "--kafka", bootstrap, "--requests", str(REQUESTS),
                                 "--rate", str(rate), "--max-tokens", "32", "--timeout", "300s",
                                 "--json-file", os.path.join(procs.dir, "report.json")],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not any(s[4] > 0 for s in samples):
            time.sleep(0.05)
        started = next(s[0] for s in samples if s[4] > 0)
        time.sleep(max(0.0, started + PHASE_S - time.monotonic()))
        h.http_post(backend + "/admin/slots", {"slots": LOW})
        drop = time.monotonic()
        time.sleep(max(0.0, drop + PHASE_S - time.monotonic()))
        h.http_post(backend + "/admin/slots", {"slots": SLOTS})
        rise = time.monotonic()
        time.sleep(PHASE_S)
        stop.set()
        load.wait(timeout=600)
        report = h.loadgen_report(os.path.join(procs.dir, "report.json"))
        low = buckets(samples, drop, rise)
        late = [t for t, overload, _, _ in low if overload > 0.01]
        stops_after = (late[-1] + 1.0 - drop) if late else 0.0
        high = buckets(samples, rise, rise + PHASE_S)
        back = [t for t, _, busy, span in high if busy / (SLOTS * span) >= 0.9]
        back_after = (back[0] + 1.0 - rise) if back else float("inf")
        if os.environ.get("BENCH_BUCKETS") == "1":
            for name, rows, origin in (("low", low, drop), ("high", high, rise)):
                print(f"{name}: " + "  ".join(
                    f"{t - origin:.0f}s:{100 * o:.1f}%/{busy / span:.1f}" for t, o, busy, span in rows),
                    file=sys.stderr)
        return {"stops_after": stops_after, "back_after": back_after,
                "lost": report["lost"],
                "failed": h.failed(report)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    binary = h.sluice_bin()
    runs = []
    for i in range(args.runs):
        r = one_run(binary)
        h.say(f"run {i + 1}: overload stopped {r['stops_after']:.1f} s after the drop; "
              f"utilisation >= 90% {r['back_after']:.1f} s after the rise; lost {r['lost']}, failed {r['failed']}")
        runs.append(r)
    print()
    print(f"bench-capacity: 2 workers, {SLOTS} slots -> {LOW} -> {SLOTS} (429 above), {args.runs} runs "
          "(min / median / max)")
    h.table(("", "seconds"), [
        ("overload responses stop after the drop", h.fmt_spread([r["stops_after"] for r in runs], "{:.1f}")),
        ("utilisation back at >= 90% after the rise", h.fmt_spread([r["back_after"] for r in runs], "{:.1f}")),
        ("lost / failed", f"{sum(r['lost'] for r in runs)} / {sum(r['failed'] for r in runs)}"),
    ])


if __name__ == "__main__":
    main()
