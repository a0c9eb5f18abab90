#!/usr/bin/env python3
"""bench-backends: several backends behind one group of workers.

Four cases, each RUNS times on a fresh broker, backends and workers (2 workers, defaults):

  models  two models on two mock backends of different capacities (16 and 48 slots x 132 ms,
          429 above their slots), one mixed burst at 10x each backend's capacity: each
          backend's utilisation over its own drain (first send -> last outcome of its
          model) and overload responses per 1,000 of its calls
  pool    one model served by a pool of two backends (16 and 32 slots): the share of the
          requests each served against its share of the capacity (1/3 and 2/3), and each
          one's utilisation over the drain

  down    two models on two backends of 16 slots, each at 80% of its capacity for 40 s;
          in one run of each pair the second backend refuses connections for the first 30 s
          (its mock starts then), in the other it is up throughout: the first model's
          queue-wait p99 in both, and how the second model's requests ended

  degrade a big model (16 slots) with a fallback chain to a small one (48 slots) on
          `deadline`; the small one warmed first (1,500 requests at 2x its capacity), then
          1,200 requests for the big model at 10x its capacity, each with a 3 s deadline:
          served by each, expired, and whether the small one had room (its utilisation over
          the burst: below 1, expired requests are ones it had room for), beside the same run
          without the chain

Usage: bench/backends.py [--runs 5] [--cases models,pool,down,degrade] [--requests 2400]
Environment: SLUICE_BIN (skip the build), SLUICE_TANSU_BIN.
"""

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# The reference burst's backend and topic, as bench-group runs them.
from group import LATENCY_MS, MAX_TOKENS, PARTITIONS, PER_TOKEN_MS, SERVICE_S  # noqa: E402
WORKERS = 2


def config_file(backends, extra=""):
    """A TOML file naming each (name, url, model) backend, then `extra`."""
    text = "".join(f'[backends.{name}]\nurl = "{url}"\nmodels = ["{model}"]\n\n'
                   for name, url, model in backends) + extra
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


def start(procs, binary, slots_by_name, model_by_name):
    bootstrap = h.start_tansu(procs, {"sluice.requests": PARTITIONS, "sluice.replies": PARTITIONS,
                                      "sluice.dlq": 1, "sluice.control": 1})
    urls = {name: h.start_mock(procs, binary, slots, LATENCY_MS, PER_TOKEN_MS, "reject",
                               name=f"mock-{name}")
            for name, slots in slots_by_name.items()}
    config = config_file([(name, urls[name], model_by_name[name]) for name in slots_by_name])
    env = h.worker_env(bootstrap, "unused", {"SLUICE_CONFIG": config})
    env.pop("SLUICE__BACKEND__URL")
    workers = [h.Worker(procs, binary, f"worker-{i + 1}", env) for i in range(WORKERS)]
    for w in workers:
        w.wait_ready()
    h.wait_assigned(workers)
    return bootstrap, urls, env


def burst(binary, bootstrap, env, procs, model, requests, rate, backend_url, name):
    """One loadgen for `model`, measured on `backend_url`; returns its report."""
    return h.loadgen(binary, ["--kafka", bootstrap, "--requests", str(requests), "--rate", str(rate),
                              "--model", model, "--max-tokens", str(MAX_TOKENS), "--timeout", "300s",
                              "--backend-metrics", backend_url + "/metrics"],
                     env, os.path.join(procs.dir, f"report-{name}.json"))


def models_run(binary, requests):
    slots = {"small": 16, "large": 48}
    models = {"small": "model-small", "large": "model-large"}
    with h.Procs("backends-models") as procs:
        bootstrap, urls, env = start(procs, binary, slots, models)
        reports = {}

        def send(name):
            capacity = slots[name] / SERVICE_S
            reports[name] = burst(binary, bootstrap, env, procs, models[name], requests,
                                  round(10 * capacity), urls[name], name)

        threads = [threading.Thread(target=send, args=(name,)) for name in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = {}
        for name, report in reports.items():
            b = report["backend"]
            out[name] = {"utilisation": b["utilisation"], "overload": b["overload_per_1000_calls"],
                         "lost": report["lost"], "failed": h.failed(report)}
        return out


def pool_run(binary, requests):
    slots = {"a": 16, "b": 32}
    with h.Procs("backends-pool") as procs:
        bootstrap, urls, env = start(procs, binary, slots, {"a": "shared", "b": "shared"})
        capacity = sum(slots.values()) / SERVICE_S
        report = burst(binary, bootstrap, env, procs, "shared", requests, round(10 * capacity),
                       urls["a"], "pool")
        out = {"lost": report["lost"], "failed": h.failed(report)}
        served = {name: mock_ok(urls[name]) for name in slots}
        total = sum(served.values()) or 1
        for name in slots:
            out[f"share_{name}"] = served[name] / total
            out[f"capacity_share_{name}"] = slots[name] / sum(slots.values())
        window = report["backend"]["window_seconds"]
        for name in slots:
            busy = h.metrics(urls[name] + "/metrics").get("sluice_mock_busy_seconds_total", 0.0)
            out[f"utilisation_{name}"] = busy / (slots[name] * window) if window else 0.0
        return out


DOWN_S = 30
DOWN_LOAD_S = 40
DOWN_SLOTS = 16


def down_run(binary, outage):
    """Models a and b at 80% of their backends' capacity for DOWN_LOAD_S; with `outage`,
    b's backend refuses connections for the first DOWN_S. Returns both reports' figures."""
    with h.Procs("backends-down") as procs:
        bootstrap = h.start_tansu(procs, {"sluice.requests": PARTITIONS, "sluice.replies": PARTITIONS,
                                          "sluice.dlq": 1, "sluice.control": 1})
        url_a = h.start_mock(procs, binary, DOWN_SLOTS, LATENCY_MS, PER_TOKEN_MS, "reject",
                             name="mock-a")
        port_b = h.free_port()
        url_b = f"http://127.0.0.1:{port_b}"
        start_b = lambda: h.start_mock(procs, binary, DOWN_SLOTS, LATENCY_MS, PER_TOKEN_MS,
                                       "reject", name="mock-b", port=port_b)
        if not outage:
            start_b()
        config = config_file([("a", url_a, "model-a"), ("b", url_b, "model-b")])
        env = h.worker_env(bootstrap, "unused", {"SLUICE_CONFIG": config})
        env.pop("SLUICE__BACKEND__URL")
        workers = [h.Worker(procs, binary, f"worker-{i + 1}", env) for i in range(WORKERS)]
        for w in workers:
            w.wait_ready()
        h.wait_assigned(workers)
        rate = round(0.8 * DOWN_SLOTS / SERVICE_S)
        reports = {}

        def send(name):
            args = ["--kafka", bootstrap, "--requests", str(rate * DOWN_LOAD_S), "--rate", str(rate),
                    "--model", f"model-{name}", "--max-tokens", str(MAX_TOKENS), "--timeout", "300s"]
            reports[name] = h.loadgen(binary, args, env, os.path.join(procs.dir, f"report-{name}.json"))

        threads = [threading.Thread(target=send, args=(name,)) for name in ("a", "b")]
        for t in threads:
            t.start()
        if outage:
            time.sleep(DOWN_S)
            start_b()
        for t in threads:
            t.join()
        a, b = reports["a"], reports["b"]
        return {"a_queue_p99": a["queue_wait_ms"]["p99"], "a_queue_p50": a["queue_wait_ms"]["p50"],
                "a_lost": a["lost"], "a_failed": h.failed(a), "b_lost": b["lost"],
                "b_failed": h.failed(b), "b_completed": b["completed"]}


DEGRADE_REQUESTS = 1200
DEGRADE_DEADLINE_MS = 3000


def degrade_run(binary, with_chain):
    """The big model at 10x its capacity with 3 s deadlines, falling back to the small one
    `with_chain` (else without a chain: the same run as a baseline)."""
    with h.Procs("backends-degrade") as procs:
        bootstrap = h.start_tansu(procs, {"sluice.requests": PARTITIONS, "sluice.replies": PARTITIONS,
                                          "sluice.dlq": 1, "sluice.control": 1})
        urls = {name: h.start_mock(procs, binary, slots, LATENCY_MS, PER_TOKEN_MS, "reject",
                                   name=f"mock-{name}")
                for name, slots in (("big", 16), ("small", 48))}
        chain = '[models.fallbacks.model-big]\nto = ["model-small"]\non = ["deadline"]\n'
        chain = chain if with_chain else ""
        config = config_file([("big", urls["big"], "model-big"), ("small", urls["small"], "model-small")],
                             chain)
        env = h.worker_env(bootstrap, "unused", {"SLUICE_CONFIG": config})
        env.pop("SLUICE__BACKEND__URL")
        workers = [h.Worker(procs, binary, f"worker-{i + 1}", env) for i in range(WORKERS)]
        for w in workers:
            w.wait_ready()
        h.wait_assigned(workers)
        # The small model warm first (as in a deployment that has been running): its
        # capacity found, not searched for from 8 during the big model's burst.
        h.loadgen(binary, ["--kafka", bootstrap, "--requests", "1500", "--rate",
                           str(round(2 * 48 / SERVICE_S)), "--model", "model-small",
                           "--max-tokens", str(MAX_TOKENS), "--timeout", "120s"],
                  env, os.path.join(procs.dir, "warm.json"))
        small_before = mock_ok(urls["small"])
        rate = round(10 * 16 / SERVICE_S)
        report = h.loadgen(binary, ["--kafka", bootstrap, "--requests", str(DEGRADE_REQUESTS),
                                    "--rate", str(rate), "--model", "model-big",
                                    "--max-tokens", str(MAX_TOKENS), "--timeout", "120s",
                                    "--deadline-ms", str(DEGRADE_DEADLINE_MS),
                                    "--backend-metrics", urls["small"] + "/metrics"],
                           env, os.path.join(procs.dir, "report.json"))
        fell_back = sum(v for w in workers for k, v in h.metrics(w.admin + "/metrics").items()
                        if k.startswith("sluice_worker_fallbacks_total"))
        return {"big": mock_ok(urls["big"]), "small": mock_ok(urls["small"]) - small_before,
                "fell_back": fell_back,
                "small_utilisation": report["backend"]["utilisation"],
                "expired": report["completed"].get("expired", 0), "lost": report["lost"],
                "other": sum(v for k, v in report["completed"].items() if k not in ("ok", "expired")),
                "small_peak": report["backend"]["peak_in_flight"]}


def mock_ok(url):
    m = h.metrics(url + "/metrics")
    return sum(v for k, v in m.items() if k.startswith("sluice_mock_requests_total") and '"ok"' in k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default="models,pool,down,degrade")
    parser.add_argument("--requests", type=int, default=2400)
    args = parser.parse_args()
    binary = h.sluice_bin()
    cases = args.cases.split(",")
    if "models" in cases:
        runs = []
        for i in range(args.runs):
            r = models_run(binary, args.requests)
            h.say("models, run %d: " % (i + 1) + "; ".join(
                f"{n} utilisation {v['utilisation']:.3f} overload/1000 {v['overload']:.1f} lost "
                f"{v['lost']} failed {v['failed']}" for n, v in r.items()))
            runs.append(r)
        print()
        print(f"bench-backends, models: {args.requests} requests per model at 10x each backend's capacity "
              f"(16 and 48 slots x {int(SERVICE_S * 1000)} ms, 429 above); {WORKERS} workers; "
              f"{args.runs} runs (min / median / max)")
        rows = []
        for name in ("small", "large"):
            col = lambda k: [r[name][k] for r in runs]
            rows.append((name, h.fmt_spread(col("utilisation"), "{:.3f}"),
                         h.fmt_spread(col("overload"), "{:.1f}"), sum(col("lost")), sum(col("failed"))))
        h.table(("backend", "utilisation", "overload/1000", "lost", "failed"), rows)
    if "pool" in cases:
        runs = []
        for i in range(args.runs):
            r = pool_run(binary, args.requests)
            h.say(f"pool, run {i + 1}: share a {r['share_a']:.3f} (capacity {r['capacity_share_a']:.3f}), "
                  f"utilisation a {r['utilisation_a']:.3f} b {r['utilisation_b']:.3f}, lost {r['lost']}, "
                  f"failed {r['failed']}")
            runs.append(r)
        print()
        print(f"bench-backends, pool: {args.requests} requests for one model served by backends of 16 "
              f"and 32 slots, at 10x their sum; {WORKERS} workers; {args.runs} runs (min / median / max)")
        col = lambda k: [r[k] for r in runs]
        h.table(("figure", "min / median / max"), [
            ("share served by a (capacity 0.333)", h.fmt_spread(col("share_a"), "{:.3f}")),
            ("utilisation of a (16 slots)", h.fmt_spread(col("utilisation_a"), "{:.3f}")),
            ("utilisation of b (32 slots)", h.fmt_spread(col("utilisation_b"), "{:.3f}")),
            ("lost / failed", f"{sum(col('lost'))} / {sum(col('failed'))}"),
        ])
    if "down" in cases:
        down_case(binary, args.runs)
    if "degrade" in cases:
        degrade_case(binary, args.runs)


def down_case(binary, runs_wanted):
    """Pairs of runs, with and without the outage, interleaved."""
    runs = {True: [], False: []}
    for i in range(runs_wanted):
        for outage in (False, True):
            r = down_run(binary, outage)
            h.say(f"down, run {i + 1}, {'outage' if outage else 'no outage'}: a queue wait p99 "
                  f"{r['a_queue_p99']:.0f} ms (p50 {r['a_queue_p50']:.0f}), a lost {r['a_lost']} failed "
                  f"{r['a_failed']}; b lost {r['b_lost']} ended {r['b_completed']}")
            runs[outage].append(r)
    print()
    print(f"bench-backends, down: models a and b on backends of {DOWN_SLOTS} slots, each at 80% of "
          f"its capacity for {DOWN_LOAD_S} s; b's backend refusing connections for the first {DOWN_S} s "
          f"or up throughout; {WORKERS} workers; {runs_wanted} runs each (min / median / max)")
    col = lambda outage, k: [r[k] for r in runs[outage]]
    h.table(("figure", "b up throughout", "b down 30 s"), [
        ("a: queue wait p99 (ms)", h.fmt_spread(col(False, "a_queue_p99"), "{:.0f}"),
         h.fmt_spread(col(True, "a_queue_p99"), "{:.0f}")),
        ("a: queue wait p50 (ms)", h.fmt_spread(col(False, "a_queue_p50"), "{:.0f}"),
         h.fmt_spread(col(True, "a_queue_p50"), "{:.0f}")),
        ("a: lost / failed", f"{sum(col(False, 'a_lost'))} / {sum(col(False, 'a_failed'))}",
         f"{sum(col(True, 'a_lost'))} / {sum(col(True, 'a_failed'))}"),
        ("b: lost / failed", f"{sum(col(False, 'b_lost'))} / {sum(col(False, 'b_failed'))}",
         f"{sum(col(True, 'b_lost'))} / {sum(col(True, 'b_failed'))}"),
    ])


def degrade_case(binary, runs_wanted):
    runs = {True: [], False: []}
    for i in range(runs_wanted):
        for with_chain in (True, False):
            r = degrade_run(binary, with_chain)
            h.say(f"degrade, run {i + 1}, {'chain' if with_chain else 'no chain'}: served by big "
                  f"{r['big']:.0f}, by small {r['small']:.0f} (sent there {r['fell_back']:.0f}), "
                  f"expired {r['expired']}, other "
                  f"{r['other']}, lost {r['lost']}, small's peak in flight {r['small_peak']:.0f} "
                  f"of 48, its utilisation {r['small_utilisation']:.3f}")
            runs[with_chain].append(r)
    print()
    print(f"bench-backends, degrade: {DEGRADE_REQUESTS} requests for a 16-slot model at 10x its "
          f"capacity, {DEGRADE_DEADLINE_MS} ms deadlines, chain to a 48-slot model on `deadline`; "
          f"{WORKERS} workers; {runs_wanted} runs (min / median / max)")
    both = lambda k, fmt="{:.0f}": tuple(h.fmt_spread([r[k] for r in runs[c]], fmt) for c in (True, False))
    total = lambda c, k: sum(r[k] for r in runs[c])
    h.table(("figure", "with the chain", "without (baseline)"), [
        ("served by the big model", *both("big")),
        ("served by the small model (fallback)", *both("small")),
        ("sent to the small model (fallback)", *both("fell_back")),
        ("expired", *both("expired")),
        ("small model's utilisation over the burst", *both("small_utilisation", "{:.3f}")),
        ("other outcomes / lost", f"{total(True, 'other')} / {total(True, 'lost')}",
         f"{total(False, 'other')} / {total(False, 'lost')}"),
    ])


if __name__ == "__main__":
    main()
