#!/usr/bin/env bash
# bench-memory: a worker's resident memory with a large backlog in Kafka.
#
# Fills the request topic of a tansu broker with BACKLOG requests (default 1,000,000),
# then starts `sluice mock-llm` (slow on purpose: the backlog must stay large) and one
# `sluice worker`, and samples the worker's RSS once a second for SAMPLE_SECONDS while it
# drains. Prints the backlog, what the worker finished meanwhile, and peak / final RSS.
# The claim under test: worker memory is bounded whatever the lag (in-flight cap + small
# per-lane buffers + bounded librdkafka prefetch).
#
# Environment: BACKLOG (1000000), SAMPLE_SECONDS (30), PARTITIONS (8), SLUICE_BIN
# (skip the release build), SLUICE_TANSU_BIN. Everything on 127.0.0.1; all processes
# started here are stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
backlog=${BACKLOG:-1000000}
sample_seconds=${SAMPLE_SECONDS:-30}
PARTITIONS=${PARTITIONS:-8}
BENCH_NAME=memory
. bench/lib.sh
start_tansu

say "producing $backlog requests onto sluice.requests"
python3 - "$port" "$backlog" <<'PY'
import json, sys
from confluent_kafka import Producer
port, n = sys.argv[1], int(sys.argv[2])
p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "linger.ms": 20,
              "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
body = {"model": "mock", "messages": [{"role": "user", "content": "Summarise the backlog."}], "max_tokens": 16}
for i in range(n):
    rid = f"backlog-{i}"
    value = json.dumps({"v": 1, "id": rid, "body": body})
    while True:
        try:
            p.produce("sluice.requests", key=rid, value=value)
            break
        except BufferError:
            p.poll(0.05)
    if i % 10000 == 0:
        p.poll(0)
p.flush(120)
PY

mock_port=$(free_port)
"$SLUICE_BIN" mock-llm --listen "127.0.0.1:$mock_port" --slots 16 --latency-ms 100 \
    --per-token-ms 2 >"$logs/mock.log" 2>&1 &
pids+=($!)
admin_port=$(free_port)
SLUICE__KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$port" \
SLUICE__BACKEND__URL="http://127.0.0.1:$mock_port" \
SLUICE__WORKER__ADMIN_LISTEN="127.0.0.1:$admin_port" \
    "$SLUICE_BIN" worker >"$logs/worker.log" 2>&1 &
worker=$!
pids+=("$worker")

peak=0
rss=0
for _ in $(seq "$sample_seconds"); do
    sleep 1
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$worker/status")
    ((rss > peak)) && peak=$rss
done
done_count=$(curl -s "http://127.0.0.1:$admin_port/metrics" |
    awk '/^sluice_worker_messages_total/ {sum += $2} END {print sum + 0}')
buffered=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^sluice_worker_buffered / {print $2}')
printf 'backlog: %d requests | finished in %ds: %d | still queued in Kafka: %d | buffered in the worker: %s\n' \
    "$backlog" "$sample_seconds" "$done_count" $((backlog - done_count)) "${buffered:-?}"
awk -v peak="$peak" -v last="$rss" 'BEGIN { printf "worker RSS: peak %.1f MiB, last %.1f MiB\n", peak / 1024, last / 1024 }'
