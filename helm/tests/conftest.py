"""Helpers for the chart tests: render the chart with helm and parse the output.

The helm binary comes from $HELM (dev/helm-check sets it), else `helm` on PATH.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent.parent
CHART_DIR = REPO_ROOT / "helm" / "si-twilio-channel"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*.yaml"))
RELEASE = "si"


def helm_binary() -> str:
    helm = os.environ.get("HELM") or shutil.which("helm")
    if not helm:
        pytest.exit("no helm binary: run dev/helm-check, or set HELM", returncode=2)
    return helm


@dataclass(frozen=True)
class Render:
    returncode: int
    stdout: str
    stderr: str

    @functools.cached_property
    def docs(self) -> list[dict]:
        assert self.returncode == 0, f"helm template failed:\n{self.stderr}"
        return [d for d in yaml.safe_load_all(self.stdout) if d]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]


@functools.lru_cache(maxsize=None)
def render(*args: str) -> Render:
    """`helm template si <chart> ARGS...`, cached per argument list."""
    proc = subprocess.run(
        [helm_binary(), "template", RELEASE, str(CHART_DIR), "--namespace", "si", *args],
        capture_output=True, text=True, timeout=120,
    )
    return Render(proc.returncode, proc.stdout, proc.stderr)


def values_args(case: str) -> tuple[str, ...]:
    """Arguments for a named case: "default" or the stem of a ci/*.yaml file."""
    if case == "default":
        return ()
    return ("-f", str(CHART_DIR / "ci" / f"{case}.yaml"))


CASES = ["default"] + [p.stem for p in CI_VALUES]


def stage_name(deployment: dict) -> str:
    return deployment["metadata"]["labels"]["app.kubernetes.io/component"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_specs(r: Render):
    """(label, pod spec) of every workload the chart renders."""
    for d in r.docs:
        if d["kind"] in ("Deployment", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def containers_of(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


_UNITS = {
    "ns": 1e-9, "nsec": 1e-9, "us": 1e-6, "usec": 1e-6, "µs": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800,
}


def humantime_seconds(text: str) -> float:
    """Seconds of a humantime duration ("20s", "1m 30s", "500ms")."""
    import re

    parts = re.findall(r"(\d+)\s*([a-zµ]+)", text)
    assert parts and re.fullmatch(r"(\s*\d+\s*[a-zµ]+\s*)+", text), f"not a duration: {text!r}"
    return sum(int(n) * _UNITS[u] for n, u in parts)
