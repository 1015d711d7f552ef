#!/usr/bin/env python3
"""Validate rendered Kubernetes manifests offline.

    validate_manifests.py [--kube-version 1.27.0 ...] FILE...

Built-in kinds are checked against the OpenAPI-derived JSON schemas that the
`kubernetes-validate` package ships (strict mode: unknown fields fail), once
per requested Kubernetes version. The custom resources the chart renders
(KEDA ScaledObject/TriggerAuthentication, prometheus-operator ServiceMonitor,
Strimzi KafkaTopic) are checked against the trimmed CRD schemas in
crd-schemas/ beside this file. Every object's metadata.name must be a
DNS-1123 subdomain and label values must be valid label values. An object of
a kind with no schema anywhere is an error, never a silent skip.

Prints one line per kind and version and a summary; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crd-schemas"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# kubernetes-validate re-reads its 1.8 MB definitions file on every call; the
# files never change, so cache them (the function is looked up at call time).
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)


def crd_schema_file(doc: dict) -> Path:
    group_version = doc["apiVersion"].replace("/", "-")
    return CRD_DIR / f"{doc['kind'].lower()}-{group_version}.json"


@functools.lru_cache(maxsize=None)
def crd_validator(path: Path) -> jsonschema.Draft7Validator:
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def where(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def check_metadata(doc: dict) -> list[str]:
    problems = []
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    if not NAME_RE.match(name) or len(name) > 253:
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE_RE.match(value):
            problems.append(f"label {key}={value!r} is not a valid label value")
    return problems


def validate(doc: dict, versions: list[str]) -> tuple[str, list[str]]:
    """Returns (how it was checked, problems)."""
    problems = check_metadata(doc)
    crd = crd_schema_file(doc)
    if crd.exists():
        for error in sorted(crd_validator(crd).iter_errors(doc), key=lambda e: list(e.absolute_path)):
            problems.append(f"{where(error)}: {error.message}")
        return f"CRD schema {crd.name}", problems
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"k8s {version}: {where(error)}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"k8s {version}: no schema: {error.message}")
    return "kubernetes " + ", ".join(versions), problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube-version", action="append", dest="versions",
                        help="Kubernetes version(s) to validate built-in kinds against")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    versions = args.versions or ["1.37.0"]

    checked: Counter[str] = Counter()
    failures = 0
    for path in args.files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            label = f"{path.name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            how, problems = validate(doc, versions)
            checked[f"{doc.get('apiVersion')} {doc.get('kind')} ({how})"] += 1
            for problem in problems:
                print(f"FAIL {label}: {problem}")
            failures += bool(problems)
    for kind, count in sorted(checked.items()):
        print(f"  {count:3d} x {kind}")
    total = sum(checked.values())
    print(f"validated {total} objects from {len(args.files)} files: {total - failures} ok, {failures} failed")
    if total == 0:
        print("FAIL: nothing to validate")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
