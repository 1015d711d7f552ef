"""Every environment variable each binary reads is reachable from the chart's values.

The binaries say what they read: clap prints `[env: NAME=...]` in `--help`. For
every stage whose binary exists in the workspace (and for sictl, which the setup
Job runs), each variable must be documented in values.yaml and, set through
values, must arrive in that workload's environment: plain settings through
`stages.<stage>.config` (or the shared `config` for the Job), credentials only
through a Secret (`secretEnv`), never as a plain value.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from conftest import CHART_DIR, REPO_ROOT, env_of, render

FULLNAME = "si-si-twilio-channel"

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
# The chart refuses these as plain values (see the credential guard in _helpers.tpl).
SENSITIVE = re.compile(r"TOKEN|SECRET|PASSWORD|^TWILIO_ACCOUNT_SID$|^TWILIO_API_KEY_SID$")
ENV_IN_HELP = re.compile(r"\[env: ([A-Z][A-Z0-9_]*)=")


@lru_cache(maxsize=None)
def workspace_binaries() -> frozenset[str]:
    meta = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=300,
    )
    return frozenset(
        t["name"]
        for p in json.loads(meta.stdout)["packages"]
        for t in p["targets"]
        if "bin" in t["kind"]
    )


@lru_cache(maxsize=None)
def binary_env(binary: str) -> frozenset[str]:
    bin_dir = Path(os.environ.get("SI_BIN_DIR", REPO_ROOT / "target" / "debug"))
    path = bin_dir / binary
    if not path.exists():
        subprocess.run(["cargo", "build", "--quiet", "--workspace", "--bins"], cwd=REPO_ROOT, check=True, timeout=1800)
    help_text = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    names = frozenset(ENV_IN_HELP.findall(help_text))
    assert names, f"{binary} --help names no environment variables"
    return names


STAGES = sorted(
    (name, stage["command"][0])
    for name, stage in VALUES["stages"].items()
    if stage["command"][0] in workspace_binaries()
)


def probe(name: str, index: int) -> str:
    """A value of the right shape (the chart checks addresses and durations)."""
    if name.endswith("_ADDR"):
        return f"0.0.0.0:{20000 + index}"
    if name.endswith(("TIMEOUT", "_INTERVAL", "_WINDOW", "_TTL")):
        return f"{7 + index}s"
    return f"probe-{name.lower()}"


def test_the_built_stages_are_checked():
    assert ("ingress", "si-ingress") in STAGES


def container_env(stage: str, *args: str) -> dict:
    r = render("-f", str(CHART_DIR / "ci" / "everything-on.yaml"), *args)
    deployment = r.named("Deployment", f"{FULLNAME}-{stage}")
    return env_of(deployment["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize(("stage", "binary"), STAGES)
def test_every_variable_of_the_stage_binary_is_documented(stage, binary):
    missing = sorted(n for n in binary_env(binary) if n not in VALUES_TEXT)
    assert not missing, f"{binary} reads {missing}, which values.yaml never mentions"


@pytest.mark.parametrize(("stage", "binary"), STAGES)
def test_every_plain_variable_reaches_the_stage_from_values(stage, binary):
    plain = sorted(n for n in binary_env(binary) if not SENSITIVE.search(n))
    args = []
    for index, name in enumerate(plain):
        args += ["--set-string", f"stages.{stage}.config.{name}={probe(name, index)}"]
    env = container_env(stage, *args)
    for index, name in enumerate(plain):
        assert env.get(name, {}).get("value") == probe(name, index), f"{stage}: {name}"


@pytest.mark.parametrize(("stage", "binary"), STAGES)
def test_credentials_reach_the_stage_only_from_secrets(stage, binary):
    secret = sorted(n for n in binary_env(binary) if SENSITIVE.search(n))
    for name in secret:
        refused = render("-f", str(CHART_DIR / "ci" / "everything-on.yaml"),
                         "--set-string", f"stages.{stage}.config.{name}=plain")
        assert refused.returncode != 0, f"{stage}: {name} accepted as a plain value"
        env = container_env(stage, "--set", f"stages.{stage}.secretEnv.{name}.name=probe-secret",
                            "--set", f"stages.{stage}.secretEnv.{name}.key=probe-key")
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "probe-secret", "key": "probe-key"}, name


def test_every_variable_of_sictl_reaches_the_setup_job():
    names = binary_env("sictl")
    missing = sorted(n for n in names if n not in VALUES_TEXT)
    assert not missing, f"sictl reads {missing}, which values.yaml never mentions"
    plain = sorted(n for n in names if not SENSITIVE.search(n))
    args = []
    for index, name in enumerate(plain):
        args += ["--set-string", f"config.{name}={probe(name, index)}"]
    r = render(*args)
    job = [d for d in r.of_kind("Job") if "setup" in d["metadata"]["name"]]
    assert len(job) == 1
    spec = job[0]["spec"]["template"]["spec"]
    for container in spec.get("initContainers", []) + spec["containers"]:
        env = env_of(container)
        for index, name in enumerate(plain):
            if name in {"SI_TOPICS_FILE", "SI_SCHEMAS_DIR", "SI_REPLICATION_FACTOR"}:
                continue  # the Job sets these itself (the image's files, the topics' own factor)
            assert env.get(name, {}).get("value") == probe(name, index), f"setup job: {name}"
