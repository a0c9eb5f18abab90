"""Checks across the rendered Kubernetes manifests that no schema can express:

- every pod runs under the "restricted" Pod Security Standard, as the Dockerfile's
  numeric USER, with requests and limits and /healthz and /readyz probes;
- every workload has a PodDisruptionBudget;
- every job the alert rules and their tests name (job="..." or job: ...) is the job
  label some ServiceMonitor gives to a Service it scrapes, through a port it names;
- a ScaledObject's maxReplicaCount is not above the partitions of the topic it scales
  on, as docker-compose.yml creates it.

Usage: check_manifests.py RENDERED DOCKERFILE COMPOSE ALERT_FILE...
Prints one line a problem and exits 1 if there is any.
"""

import re
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def dockerfile_user(path):
    """(uid, gid or None) of the last USER in the Dockerfile, which must be numeric."""
    users = re.findall(r"^USER\s+(\S+)", open(path, encoding="utf-8").read(), re.M)
    if not users:
        return None
    uid, _, gid = users[-1].partition(":")
    return (int(uid), int(gid) if gid else None) if uid.isdigit() else None


def check_pod(where, pod, user, problems):
    sc = pod.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if user is None:
        problems.append(f"{where}: the Dockerfile's last USER is not a numeric uid[:gid]")
    elif sc.get("runAsUser") != user[0] or (user[1] is not None and sc.get("runAsGroup") != user[1]):
        problems.append(
            f"{where}: pod runs as {sc.get('runAsUser')}:{sc.get('runAsGroup')}, "
            f"the Dockerfile's USER is {user[0]}:{user[1]}"
        )
    if sc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        at = f"{where} container {c['name']}"
        csc = c.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            problems.append(f"{at}: capabilities do not drop ALL")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem is not true")
        if csc.get("runAsUser") == 0:
            problems.append(f"{at}: runs as root")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in res.get(part, {}):
                    problems.append(f"{at}: no resources.{part}.{what}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            got = c.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                problems.append(f"{at}: {probe} is not httpGet {path} (found {got})")


def main(rendered, dockerfile, compose, *alert_files):
    with open(rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    problems = []
    user = dockerfile_user(dockerfile)

    for w in [d for d in docs if d["kind"] in WORKLOADS]:
        where = f"{w['kind']}/{w['metadata']['name']}"
        template = w["spec"]["template"]
        check_pod(where, template["spec"], user, problems)
        labels = template["metadata"].get("labels", {})
        if not any(selects(p["spec"].get("selector"), labels) for p in by_kind.get("PodDisruptionBudget", [])):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")

    # Jobs the ServiceMonitors produce: the Service's label named by jobLabel, else
    # the Service's name (the Prometheus Operator's rule).
    services = by_kind.get("Service", [])
    jobs = set()
    for sm in by_kind.get("ServiceMonitor", []):
        spec = sm["spec"]
        chosen = [s for s in services if selects(spec.get("selector"), s["metadata"].get("labels", {}))]
        if not chosen:
            problems.append(f"ServiceMonitor/{sm['metadata']['name']}: selects no Service")
        for s in chosen:
            ports = {p.get("name") for p in s["spec"].get("ports", [])}
            for e in spec.get("endpoints", []):
                if e.get("port") not in ports:
                    problems.append(
                        f"ServiceMonitor/{sm['metadata']['name']}: Service/{s['metadata']['name']} "
                        f"has no port named {e.get('port')}"
                    )
            job = s["metadata"].get("labels", {}).get(spec.get("jobLabel", ""), s["metadata"]["name"])
            jobs.add(job)
    for alerts in alert_files:
        text = open(alerts, encoding="utf-8").read()
        wanted = set(re.findall(r'job="([^"]+)"', text)) | set(re.findall(r"^\s*job: (\S+)", text, re.M))
        for job in sorted(wanted - jobs):
            problems.append(f"{alerts} names job {job}, which no ServiceMonitor produces ({sorted(jobs)})")

    compose_text = open(compose, encoding="utf-8").read()
    for so in by_kind.get("ScaledObject", []):
        cap = so["spec"].get("maxReplicaCount")
        for t in so["spec"].get("triggers", []):
            topic = t.get("metadata", {}).get("topic") if t.get("type") == "kafka" else None
            if not topic:
                continue
            created = re.search(re.escape(topic) + r":(\d+)\b", compose_text)
            if not created:
                problems.append(f"ScaledObject/{so['metadata']['name']}: {compose} creates no topic {topic}")
            elif cap is None:
                problems.append(f"ScaledObject/{so['metadata']['name']}: no maxReplicaCount (KEDA's default is 100)")
            elif cap > int(created.group(1)):
                problems.append(
                    f"ScaledObject/{so['metadata']['name']}: maxReplicaCount {cap} is above the "
                    f"{created.group(1)} partitions of {topic}"
                )

    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
