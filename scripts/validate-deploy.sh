#!/usr/bin/env bash
# Validates the deploy files without a cluster or a Docker engine (run by `make test`,
# or alone: `make validate-deploy`):
#   1. yamllint (.yamllint.yaml) over docker-compose.yml and deploy/;
#   2. deploy/kubernetes/kustomization.yaml lists every manifest there, and only those;
#   3. `kubectl kustomize` renders it; kubernetes-validate --strict checks the built-in
#      kinds against Kubernetes $SLUICE_K8S_VERSION's schemas, and check-jsonschema the
#      KEDA ScaledObject and the ServiceMonitors against schemas made from their CRDs
#      (scripts/deploy/crd_schemas.py); a kind with neither fails;
#   4. scripts/deploy/check_manifests.py: restricted pod security as the Dockerfile's
#      user, resources, probes, PDBs, the alerts' job labels, KEDA's cap;
#   5. docker-compose.yml against the Compose Specification's JSON schema, the copy
#      check-jsonschema ships (vendor.compose-spec);
#   6. hadolint over deploy/Dockerfile;
#   7. promtool check config over deploy/prometheus/prometheus.yml (Compose's Prometheus;
#      it checks the alert rules it loads too);
#   8. deploy/grafana/sluice.json is a dashboard whose panels all read the `datasource`
#      variable, and the job names of the alerts, of prometheus.yml and of the
#      dashboard's `job` variable agree. (tests/prometheus.rs runs its queries.)
# Every check runs; the script exits 1 if any failed. The tools come from PyPI into
# the test virtualenv (scripts/test-peers.sh, which this runs first).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Kubernetes version the built-in kinds are checked against (the newest that
# kubernetes-validate 1.37.0 knows).
k8s_version=${SLUICE_K8S_VERSION:-1.37.0}

bash scripts/test-peers.sh
set -a && . target/test-peers.env && set +a
python=$SLUICE_PYTHON

work=target/validate-deploy
rm -rf "$work" && mkdir -p "$work"

failed=()
# Runs one named check; a failure is recorded and the next check still runs.
check() {
    local name=$1
    shift
    printf '\n--- %s\n' "$name"
    if "$@"; then
        echo "ok: $name"
    else
        echo "FAILED: $name" >&2
        failed+=("$name")
    fi
}

kustomization_lists_every_manifest() {
    "$python" - deploy/kubernetes <<'PY'
import sys
from pathlib import Path
import yaml
folder = Path(sys.argv[1])
listed = set(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"])
present = {p.name for p in folder.glob("*.y*ml")} - {"kustomization.yaml"}
for name in sorted(present - listed):
    print(f"{folder}/{name} is not listed in kustomization.yaml")
for name in sorted(listed - present):
    print(f"kustomization.yaml lists {name}, which is not in {folder}")
sys.exit(1 if present != listed else 0)
PY
}

render() {
    kubectl kustomize deploy/kubernetes >"$work/rendered.yaml" \
        && "$python" scripts/deploy/crd_schemas.py "$work/schemas" \
        && "$python" scripts/deploy/split_manifests.py "$work/rendered.yaml" "$work/schemas" "$work/split" \
        && (cd "$work/split" && find . -name '*.yaml' | sort)
}

builtin_kinds() {
    local out status=0
    out=$(kubernetes-validate --strict --kubernetes-version "$k8s_version" "$work"/split/builtin/*.yaml 2>&1) \
        || status=1
    echo "$out"
    # An unknown kind is only a warning to kubernetes-validate; here it fails: it
    # would otherwise go unchecked.
    if grep -q "Couldn't find schema" <<<"$out"; then
        echo "a kind above has no schema: add one to scripts/deploy/crd_schemas.py" >&2
        status=1
    fi
    return $status
}

custom_kinds() {
    local dir status=0
    for dir in "$work"/split/custom/*/; do
        echo "$(basename "$dir"):"
        check-jsonschema --schemafile "$work/schemas/$(basename "$dir").json" "$dir"*.yaml || status=1
    done
    return $status
}

# Every job the alerts name is one Compose's Prometheus scrapes, and the dashboard offers
# exactly the jobs it scrapes.
dashboard_agrees() {
    "$python" - deploy/grafana/sluice.json deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml <<'PY'
import json, re, sys
import yaml
dashboard_file, prometheus_file, alerts_file = sys.argv[1:]
dashboard = json.load(open(dashboard_file, encoding="utf-8"))
problems = []
scraped = {c["job_name"] for c in yaml.safe_load(open(prometheus_file, encoding="utf-8"))["scrape_configs"]}
named = set(re.findall(r'job="([^"]+)"', open(alerts_file, encoding="utf-8").read()))
for job in sorted(named - scraped):
    problems.append(f"{alerts_file} names job {job}, which {prometheus_file} does not scrape")
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource":
    problems.append(f"{dashboard_file}: no datasource variable")
offered = {j.strip() for j in variables.get("job", {}).get("query", "").split(",") if j.strip()}
if offered != scraped:
    problems.append(f"{dashboard_file}: the job variable offers {sorted(offered)}, {prometheus_file} scrapes {sorted(scraped)}")
def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dashboard["panels"]):
    if p.get("type") == "row":
        continue
    for where in [p] + p.get("targets", []):
        if where.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{dashboard_file}: panel {p.get('title')!r} does not read the datasource variable")
            break
print("\n".join(problems) or f"{dashboard_file}: {sum(1 for _ in panels(dashboard['panels']))} panels")
sys.exit(1 if problems else 0)
PY
}

check "yamllint" yamllint --strict -c .yamllint.yaml docker-compose.yml deploy/ .yamllint.yaml
check "kustomization lists every manifest" kustomization_lists_every_manifest
check "kustomize renders deploy/kubernetes" render
if [[ -s $work/rendered.yaml ]]; then
    check "built-in kinds (Kubernetes $k8s_version, strict)" builtin_kinds
    check "custom resources (ScaledObject, ServiceMonitor)" custom_kinds
    check "pod security, resources, probes, PDBs, alert jobs, KEDA cap" \
        "$python" scripts/deploy/check_manifests.py "$work/rendered.yaml" deploy/Dockerfile docker-compose.yml \
        deploy/prometheus/alerts.yml deploy/prometheus/alerts.test.yml
fi
check "docker-compose.yml against the Compose Specification" \
    check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
check "the Grafana dashboard, its datasource and jobs" dashboard_agrees

echo
if ((${#failed[@]})); then
    printf 'validate-deploy: %d check(s) failed:\n' "${#failed[@]}" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "validate-deploy: all checks passed"
