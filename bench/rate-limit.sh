#!/usr/bin/env bash
# bench-rate: two workers share one group-wide rate limit.
#
# Fills the request topic (8 partitions) with a backlog, starts `sluice mock-llm` with
# ample capacity and two `sluice worker`s configured with
# SLUICE__BACKEND__RATE__REQUESTS_PER_SECOND=RATE (the limit for the whole group), and
# counts the requests the backend served in consecutive WINDOW_SECONDS windows. The claim:
# together they never exceed RATE (each uses its share of the partitions).
#
# Environment: RATE (50), WINDOWS (4), WINDOW_SECONDS (10), SLUICE_BIN, SLUICE_TANSU_BIN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rate=${RATE:-50}
windows=${WINDOWS:-4}
window_seconds=${WINDOW_SECONDS:-10}
backlog=$(( rate * window_seconds * (windows + 2) * 2 ))
BENCH_NAME=rate
PARTITIONS=8
. bench/lib.sh
start_tansu
say "producing a backlog of $backlog requests"
python3 - "$port" "$backlog" <<'PY'
import json, sys
from confluent_kafka import Producer
port, n = sys.argv[1], int(sys.argv[2])
p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "linger.ms": 20})
body = {"model": "mock", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
for i in range(n):
    rid = f"rate-{i}"
    p.produce("sluice.requests", key=rid, value=json.dumps({"v": 1, "id": rid, "body": body}))
    if i % 5000 == 0:
        p.poll(0)
p.flush(60)
PY

mock_port=$(free_port)
"$SLUICE_BIN" mock-llm --listen "127.0.0.1:$mock_port" --slots 256 --latency-ms 20 \
    --per-token-ms 0 >"$logs/mock.log" 2>&1 &
pids+=($!)
for n in 1 2; do
    SLUICE__KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$port" \
    SLUICE__KAFKA__CLIENT__SESSION_TIMEOUT_MS=6000 \
    SLUICE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS=500 \
    SLUICE__BACKEND__URL="http://127.0.0.1:$mock_port" \
    SLUICE__BACKEND__RATE__REQUESTS_PER_SECOND="$rate" \
    SLUICE__WORKER__ADMIN_LISTEN="127.0.0.1:$(free_port)" \
        "$SLUICE_BIN" worker >"$logs/worker-$n.log" 2>&1 &
    pids+=($!)
done
served() {
    curl -s "http://127.0.0.1:$mock_port/metrics" |
        awk '/^sluice_mock_requests_total\{outcome="ok"\}/ {print $2}'
}
say "letting both workers join and settle (10 s)"
sleep 10
worst=0
previous=$(served)
for w in $(seq "$windows"); do
    sleep "$window_seconds"
    now=$(served)
    count=$((now - previous))
    previous=$now
    per_second=$(awk -v c="$count" -v s="$window_seconds" 'BEGIN { printf "%.1f", c / s }')
    pct=$(awk -v c="$count" -v s="$window_seconds" -v r="$rate" 'BEGIN { printf "%.1f", 100 * c / (s * r) }')
    echo "window $w: $count requests served in ${window_seconds}s = $per_second/s ($pct% of the group limit $rate/s)"
    worst=$(awk -v a="$worst" -v b="$pct" 'BEGIN { print (b > a ? b : a) }')
done
echo "busiest window: $worst% of the limit (target: at most 105%)"
awk -v w="$worst" 'BEGIN { exit (w <= 105 ? 0 : 1) }'
