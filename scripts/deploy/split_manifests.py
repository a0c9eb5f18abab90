"""Splits rendered Kubernetes manifests (`kubectl kustomize` output) into one file a
resource, so each goes to the validator that knows its kind:

  OUT_DIR/builtin/NN-<kind>-<name>.yaml          for kubernetes-validate
  OUT_DIR/custom/<schema>/NN-<kind>-<name>.yaml  for check-jsonschema, where
                                                 SCHEMA_DIR/<schema>.json exists

Usage: split_manifests.py RENDERED SCHEMA_DIR OUT_DIR
"""

import sys
from pathlib import Path

import yaml


def main(rendered, schema_dir, out_dir):
    out = Path(out_dir)
    with open(rendered, encoding="utf-8") as f:
        docs = [doc for doc in yaml.safe_load_all(f) if doc]
    for n, doc in enumerate(docs):
        kind, name = doc["kind"], doc["metadata"]["name"]
        schema = f"{doc['apiVersion'].replace('/', '_')}_{kind}"
        if (Path(schema_dir) / f"{schema}.json").exists():
            where = out / "custom" / schema
        else:
            where = out / "builtin"
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{n:02}-{kind.lower()}-{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
