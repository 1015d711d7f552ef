"""The chart's monitoring: the PrometheusRule built from files/alerts.yaml and
the Grafana dashboards of files/dashboards/.

The metric names the dashboards and the rules query must be metrics the
stages export: the list is read from the Rust sources (every "si_..." name
given to a prometheus constructor outside tests), so a renamed or removed
metric fails here. `promtool check rules` / `promtool test rules` (in
dev/helm-check) check the rules' syntax and behaviour.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import CHART_DIR, REPO_ROOT, render, values_args

ALERTS_FILE = CHART_DIR / "files" / "alerts.yaml"
ALERTS = yaml.safe_load(ALERTS_FILE.read_text())
ALERT_RULES = [r for g in ALERTS["groups"] for r in g["rules"]]
DASHBOARD_FILES = sorted((CHART_DIR / "files" / "dashboards").glob("*.json"))
RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://runbooks.example.com/si"
FULLNAME = "si-si-twilio-channel"

# Series that come from Prometheus itself (the scrape) and kube-state-metrics.
EXTERNAL = {"up", "kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"}

SOURCE_DIRS = ["runtime/src", "ingress/src", "egress/src", *sorted(
    str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "processors").glob("*/src"))]


def exported_metrics() -> set[str]:
    """Metric names in the stages' sources (the part of each file before its tests)."""
    names: set[str] = set()
    for directory in SOURCE_DIRS:
        for path in (REPO_ROOT / directory).rglob("*.rs"):
            if path.name.endswith("_tests.rs"):
                continue
            text = path.read_text().split("#[cfg(test)]")[0]
            names.update(re.findall(r'"(si_[a-z0-9_]+)"', text))
    return names


METRICS = exported_metrics()

KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "rate", "irate", "increase", "delta", "deriv", "histogram_quantile",
    "scalar", "vector", "absent", "label_values", "le", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression (no parser: strings, label
    matchers, ranges and grouping clauses are cut out, then every identifier
    that is not a function or a keyword is a metric)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"(\1)", text)  # Grafana's: (metric, label)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\boffset\s+\w+", "", text)
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end():].lstrip()
        if word.lower() in KEYWORDS or after.startswith("("):
            continue
        found.add(word)
    return found


def known(name: str) -> bool:
    if name in METRICS or name in EXTERNAL:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base != name and base in METRICS


def dashboard_exprs(dashboard: dict):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            yield f"variable {variable['name']}", query["query"]


def test_the_metric_list_is_read_from_the_code():
    # A few from each crate: the list is not empty or half-read.
    assert {"si_records_in_total", "si_consumer_lag", "si_ingress_signature_failures_total",
            "si_egress_operations_total", "si_consent_outcomes_total", "si_segment_sms_segments_total",
            "si_voice_recording_consent_total", "si_lifecycle_starts_total",
            "si_normalize_events_total"} <= METRICS
    assert "si_test_total" not in METRICS  # only in a test module


def test_metric_name_extraction():
    expr = ('sum by (stage, le) (rate(si_transaction_commit_seconds_bucket{namespace="$namespace", '
            'outcome=~"a|b"}[$__rate_interval])) / ignoring (outcome) group_left '
            'sum(up{job="x"} offset 1d) and on (pod) kube_deployment_spec_replicas > 0.5')
    assert metric_names(expr) == {"si_transaction_commit_seconds_bucket", "up", "kube_deployment_spec_replicas"}
    assert metric_names("label_values(si_records_in_total, namespace)") == {"si_records_in_total"}
    assert not known("si_no_such_metric_total")
    assert known("si_egress_twilio_request_seconds_count")


# --------------------------------------------------------------------------
# Dashboards
# --------------------------------------------------------------------------

def test_the_four_dashboards_exist():
    assert {p.stem for p in DASHBOARD_FILES} == {
        "si-pipeline-overview", "si-delivery", "si-compliance", "si-twilio-health"}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_is_valid_json_with_unique_ids(path: Path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("Si / ")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_queries_use_exported_metrics(path: Path):
    dashboard = json.loads(path.read_text())
    unknown = {}
    for title, expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        missing = {n for n in names if not known(n) or n in EXTERNAL - {"up"}}
        if missing:
            unknown[title] = sorted(missing)
    assert not unknown, f"metrics no stage exports: {unknown}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_queries_are_scoped_to_the_namespace(path: Path):
    for title, expr in dashboard_exprs(json.loads(path.read_text())):
        if title.startswith("variable"):
            continue
        selectors = re.findall(r"([a-z_:]+)(\{[^}]*\})?(\[|\s|\)|$)", expr)
        for name, matcher, _ in selectors:
            if name.startswith("si_") or name == "up":
                assert 'namespace="$namespace"' in matcher, f"{title}: {name} not scoped in {expr}"


def test_dashboards_configmap_only_when_enabled():
    assert not [c for c in render().of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboards")]
    r = render("--set", "monitoring.dashboards.enabled=true")
    cm = r.named("ConfigMap", f"{FULLNAME}-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(cm["data"]) == sorted(p.name for p in DASHBOARD_FILES)
    for name, text in cm["data"].items():
        assert json.loads(text) == json.loads((CHART_DIR / "files" / "dashboards" / name).read_text())


def test_dashboards_configmap_namespace_labels_and_folder():
    cm = render(*values_args("everything-on")).named("ConfigMap", f"{FULLNAME}-dashboards")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Si"}


# --------------------------------------------------------------------------
# Alert rules
# --------------------------------------------------------------------------

def test_every_alert_has_severity_summary_description_and_runbook():
    names = [r["alert"] for r in ALERT_RULES]
    assert len(names) == len(set(names))
    for rule in ALERT_RULES:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("RUNBOOK_BASE_URL/"), rule["alert"]
        playbook = RUNBOOKS / url.removeprefix("RUNBOOK_BASE_URL/")
        assert playbook.is_file(), f"{rule['alert']}: no playbook {playbook}"
        assert rule["alert"] in playbook.read_text(), f"{playbook.name} does not name {rule['alert']}"


def test_alert_expressions_use_exported_metrics():
    for rule in ALERT_RULES:
        missing = sorted(n for n in metric_names(rule["expr"]) if not known(n))
        assert not missing, f"{rule['alert']}: {missing}"


def test_every_alert_has_a_promtool_test():
    tests = yaml.safe_load((REPO_ROOT / "helm" / "tests" / "alerts_test.yaml").read_text())
    tested: dict[str, set[bool]] = {}
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            tested.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert tested == {r["alert"]: {True, False} for r in ALERT_RULES}


def test_prometheus_rule_only_when_enabled():
    assert render().of_kind("PrometheusRule") == []
    r = render("--set", "monitoring.prometheusRule.enabled=true",
               "--set", f"monitoring.prometheusRule.runbookBaseUrl={RUNBOOK_BASE}/")
    rule = r.named("PrometheusRule", FULLNAME)
    groups = rule["spec"]["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in ALERTS["groups"]]
    rendered = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rendered) == {r["alert"] for r in ALERT_RULES}
    for name, r in rendered.items():
        assert r["annotations"]["runbook_url"].startswith(f"{RUNBOOK_BASE}/"), name
        assert "RUNBOOK_BASE_URL" not in json.dumps(r), name
    assert 'up{job="si-twilio-channel"}' in rendered["SiStageDown"]["expr"]
    assert f'deployment=~"{FULLNAME}-.+"' in rendered["SiStageNotReady"]["expr"]


def test_prometheus_rule_follows_release_names():
    r = render("--set", "monitoring.prometheusRule.enabled=true",
               "--set", f"monitoring.prometheusRule.runbookBaseUrl={RUNBOOK_BASE}",
               "--set", "nameOverride=channel", "--set", "fullnameOverride=prod-channel")
    rules = {x["alert"]: x for g in r.named("PrometheusRule", "prod-channel")["spec"]["groups"] for x in g["rules"]}
    assert 'up{job="channel"}' in rules["SiStageDown"]["expr"]
    assert 'deployment=~"prod-channel-.+"' in rules["SiStageUnavailable"]["expr"]
    assert rules["SiDeadLetters"]["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}/dlq-replay.md"


def test_prometheus_rule_takes_the_delivered_rate_target():
    base = ("--set", "monitoring.prometheusRule.enabled=true",
            "--set", f"monitoring.prometheusRule.runbookBaseUrl={RUNBOOK_BASE}")

    def expr(*args: str) -> str:
        rule = render(*base, *args).named("PrometheusRule", FULLNAME)
        return next(x["expr"] for g in rule["spec"]["groups"] for x in g["rules"]
                    if x["alert"] == "SiDeliveredRateLow")

    assert ") < 0.95\n" in expr()
    assert ") < 0.9\n" in expr("--set-json", "monitoring.prometheusRule.deliveredRateTarget=0.9")
    for bad in ("0", "1.5"):
        r = render(*base, "--set-json", f"monitoring.prometheusRule.deliveredRateTarget={bad}")
        assert r.returncode != 0 and "deliveredRateTarget" in r.stderr, bad


def test_prometheus_rule_needs_a_runbook_base_url():
    r = render("--set", "monitoring.prometheusRule.enabled=true")
    assert r.returncode != 0 and "runbookBaseUrl is required" in r.stderr


def test_service_monitor_job_is_the_chart_name():
    sm = render(*values_args("everything-on")).of_kind("ServiceMonitor")[0]
    assert sm["spec"]["jobLabel"] == "app.kubernetes.io/name"
    services = render(*values_args("everything-on")).of_kind("Service")
    assert {s["metadata"]["labels"]["app.kubernetes.io/name"] for s in services} == {"si-twilio-channel"}
