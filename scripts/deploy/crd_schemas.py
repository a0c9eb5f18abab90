"""Writes JSON Schemas for the custom resources in deploy/kubernetes, which
kubernetes-validate does not know: KEDA's ScaledObject and the Prometheus Operator's
ServiceMonitor.

No package on PyPI or npm ships those CRDs' own schemas as files. The cloudcoil-models
packages carry models generated from the CRDs of pinned releases (KEDA 2.16.1,
Prometheus Operator 0.80.1), and pydantic turns them into JSON Schemas. Those models
ignore unknown fields, so every object with named properties is closed here
(additionalProperties: false): a misspelt field fails, as it does in the API server.

Usage: crd_schemas.py OUT_DIR  (writes one <group>_<version>_<Kind>.json per kind).
"""

import json
import sys
from pathlib import Path

from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
}


def closed(schema):
    """The schema with every object that names its properties closed to others."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def file_name(api_version, kind):
    return f"{api_version.replace('/', '_')}_{kind}.json"


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for (api_version, kind), model in MODELS.items():
        schema = closed(model.model_json_schema(by_alias=True, mode="validation"))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        (out / file_name(api_version, kind)).write_text(json.dumps(schema, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
