#!/usr/bin/env python3
"""What reading the whole reply topic costs one ingress instance, on tansu: N final
replies (or, with --chunks, stream chunk records) for ids it never accepted are written
straight to the reply topic, and the ingress reads them (into its result cache, or past
it for chunks). Prints records read per second and the ingress's CPU per 1,000 records,
min / median / max over the runs.

Every ingress instance reads every record of the reply topic, so one instance's rate is
the limit of the whole deployment's reply traffic (final replies plus, for streamed
answers, about 330 chunk records per 1,000 tokens), whatever the number of instances.

usage: reply_read.py [--runs N] [--records N]
"""

import argparse
import json
import os
import time

import harness
from harness import say


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def produce(bootstrap, topic, n, chunks):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 200000})
    for i in range(n):
        rid = f"r-{i}"
        if chunks:
            value = {"v": 1, "id": rid, "seq": 0, "chunk": {"id": "c", "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": " the quick brown"}, "finish_reason": None}]}}
            kind = b"chunk"
        else:
            value = {"v": 1, "id": rid, "status": "ok", "attempts": 1,
                     "body": {"object": "chat.completion", "choices": [{"index": 0, "message":
                              {"role": "assistant", "content": "the quick brown fox"}, "finish_reason": "stop"}]},
                     "error": None, "timing": {"enqueued_ms": 0, "started_ms": 0, "finished_ms": 0,
                                               "queue_ms": 0, "backend_ms": 0}}
            kind = b"final"
        while True:
            try:
                p.produce(topic, key=rid, value=json.dumps(value), headers={"sluice-kind": kind})
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(60):
        raise RuntimeError("the reply records were not all written")


def one_run(binary, index, n, chunks):
    topics = {"sluice.requests": 4, "sluice.replies": 4, "sluice.dlq": 1}
    counter = 'sluice_ingress_chunks_read_total' if chunks else 'sluice_ingress_replies_total{status="ok"}'
    with harness.Procs(f"reply-read-{index}") as procs:
        bootstrap = harness.start_tansu(procs, topics)
        # Written first; the ingress, started after, reads them from the start (one
        # result TTL back), so its own pace is measured, not the producer's.
        produce(bootstrap, "sluice.replies", n, chunks)
        port = harness.free_port()
        env = harness.worker_env(bootstrap, "http://127.0.0.1:1",
                                 {"SLUICE__INGRESS__LISTEN": f"127.0.0.1:{port}",
                                  "SLUICE__INGRESS__ADMISSION": "false"})
        ingress = procs.start("ingress", [binary, "ingress"], env)
        metrics = f"http://127.0.0.1:{port}/metrics"
        first = None
        until = time.monotonic() + 300
        while time.monotonic() < until:
            try:
                read = harness.metrics(metrics).get(counter, 0)
            except OSError:
                read = 0
            now = time.monotonic()
            if read > 0 and first is None:
                first = (now, read, cpu_seconds(ingress.pid))
            if read >= n:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"the ingress read {read} of {n} records")
        t0, read0, cpu0 = first
        took = now - t0
        cpu = cpu_seconds(ingress.pid) - cpu0
        return {"per_second": (n - read0) / took, "cpu_ms_per_1000": 1000 * cpu / (n - read0) * 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=100000)
    args = parser.parse_args()
    binary = harness.sluice_bin()
    rows = []
    for chunks in (False, True):
        kind = "stream chunks" if chunks else "final replies"
        runs = []
        for index in range(args.runs):
            say(f"{kind}: run {index + 1}/{args.runs}")
            runs.append(one_run(binary, index, args.records, chunks))
            say(json.dumps({k: round(v, 1) for k, v in runs[-1].items()}))
        rows.append((kind, harness.fmt_spread([r["per_second"] for r in runs], "{:.0f}"),
                     harness.fmt_spread([r["cpu_ms_per_1000"] for r in runs], "{:.1f}")))
    print(f"\nOne ingress reading {args.records} reply-topic records on tansu, {args.runs} runs (min / median / max)")
    harness.table(("records", "read per second", "ingress CPU ms per 1,000"), rows)


if __name__ == "__main__":
    main()
