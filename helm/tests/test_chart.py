"""Properties of the rendered si-twilio-channel chart.

Run by dev/helm-check (which installs helm and sets $HELM). Cases: the default
values and every helm/si-twilio-channel/ci/*.yaml.
"""
from __future__ import annotations

import base64
import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import (
    CASES, CHART_DIR, REPO_ROOT, TESTS_DIR, containers_of, env_of, humantime_seconds,
    pod_specs, render, stage_name, values_args,
)

sys.path.insert(0, str(TESTS_DIR))
import validate_manifests  # noqa: E402

ALL_STAGES = {"ingress", "normalize", "consent", "segment", "voice-link", "lifecycle", "egress", "media"}
SENSITIVE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE_KEY)|^TWILIO_(ACCOUNT_SID|API_KEY_SID)$")
TWILIO_CREDENTIAL = re.compile(r"^TWILIO_.*(TOKEN|SECRET|ACCOUNT).*")
FULLNAME = "si-si-twilio-channel"
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
TOPICS = yaml.safe_load((CHART_DIR / "files" / "topics.yaml").read_text())


def ci_values(case: str) -> dict:
    return yaml.safe_load((CHART_DIR / "ci" / f"{case}.yaml").read_text()) if case != "default" else {}


@pytest.fixture(params=CASES)
def case(request) -> str:
    return request.param


@pytest.fixture
def rendered(case):
    return render(*values_args(case))


def test_there_are_ci_cases_beyond_the_defaults():
    assert {"everything-on", "chart-secrets"} <= set(CASES)


# --------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------

def test_default_enables_only_the_finished_stages():
    deployments = render().of_kind("Deployment")
    assert sorted(stage_name(d) for d in deployments) == sorted(ALL_STAGES)


def test_everything_on_renders_every_stage_from_one_template():
    deployments = render(*values_args("everything-on")).of_kind("Deployment")
    assert {stage_name(d) for d in deployments} == ALL_STAGES
    # One helper for all: every Deployment comes from the same template file.
    sources = set(re.findall(r"# Source: (\S+)\n(?:---\n)?apiVersion: apps/v1\nkind: Deployment",
                             render(*values_args("everything-on")).stdout))
    assert sources == {"si-twilio-channel/templates/deployments.yaml"}


def test_stage_runs_its_binary(rendered):
    for d in rendered.of_kind("Deployment"):
        container = d["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [f"si-{stage_name(d)}"]


def test_probes_on_admin_port(rendered):
    for d in rendered.of_kind("Deployment"):
        container = d["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        admin_addr = env_of(container)["ADMIN_ADDR"]["value"]
        assert ports["admin"] == int(admin_addr.rsplit(":", 1)[1])
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "admin"}, (d["metadata"]["name"], probe)


def test_resources_have_requests_and_limits(rendered):
    seen = 0
    for label, spec in pod_specs(rendered):
        for c in containers_of(spec):
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert c["resources"][section][resource], (label, c["name"], section, resource)
            seen += 1
    assert seen >= 3


def test_restrictive_security_context(rendered):
    for label, spec in pod_specs(rendered):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, label
        assert pod["runAsUser"] == 10001, label
        assert pod["fsGroup"] == 10001, label
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, label
        assert spec["automountServiceAccountToken"] is False, label
        for c in containers_of(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (label, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (label, c["name"])
            assert "ALL" in sc["capabilities"]["drop"], (label, c["name"])


def test_tmp_is_a_writable_emptydir(rendered):
    for label, spec in pod_specs(rendered):
        if label.startswith("Pod/"):
            continue  # busybox wget writes to stdout only
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], label
        for c in containers_of(spec):
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], (label, c["name"])


def test_grace_period_exceeds_drain_timeout(rendered):
    for d in rendered.of_kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        drain = humantime_seconds(env_of(spec["containers"][0])["DRAIN_TIMEOUT"]["value"])
        assert spec["terminationGracePeriodSeconds"] > drain, d["metadata"]["name"]


def test_no_service_links(rendered):
    # Service links would inject KAFKA_PORT & co., which the KAFKA_* pass-through
    # would hand to librdkafka.
    for label, spec in pod_specs(rendered):
        assert spec["enableServiceLinks"] is False, label


def test_env_names_are_unique(rendered):
    for label, spec in pod_specs(rendered):
        for c in containers_of(spec):
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), (label, c["name"], names)


def test_pod_name_from_downward_api(rendered):
    for d in rendered.of_kind("Deployment"):
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(rendered):
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in rendered.of_kind("HorizontalPodAutoscaler")}
    scaled |= {s["spec"]["scaleTargetRef"]["name"] for s in rendered.of_kind("ScaledObject")}
    for d in rendered.of_kind("Deployment"):
        assert ("replicas" in d["spec"]) == (d["metadata"]["name"] not in scaled), d["metadata"]["name"]


# --------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------

def walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def test_no_credential_is_a_plain_env_value(rendered):
    checked = 0
    for doc in rendered.docs:
        for path, node in walk(doc):
            if isinstance(node.get("name"), str) and ("value" in node or "valueFrom" in node):
                checked += 1
                if SENSITIVE.search(node["name"]) or TWILIO_CREDENTIAL.match(node["name"]):
                    assert "value" not in node, f"{doc['kind']}/{doc['metadata']['name']} {path}: plain {node['name']}"
                    assert "secretKeyRef" in node["valueFrom"], (path, node)
    assert checked > 0


def test_twilio_token_only_from_secret(rendered, case):
    values = ci_values(case)
    existing = (values.get("twilio") or {}).get("existingSecret")
    deployments = {stage_name(d): d for d in rendered.of_kind("Deployment")}
    expected = {"ingress": ["TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_SECONDARY", "TWILIO_WEBHOOK_SHARED_SECRET"],
                "egress": ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_SECONDARY",
                           "TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET"],
                # Media URLs need HTTP Basic auth.
                "media": ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_SECONDARY",
                          "TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET"]}
    for stage, names in expected.items():
        if stage not in deployments:
            continue
        env = env_of(deployments[stage]["spec"]["template"]["spec"]["containers"][0])
        for name in names:
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == (existing or f"{FULLNAME}-twilio"), (stage, name)
            assert ref["key"] == VALUES["twilio"]["secretKeys"][name]
    assert "ingress" in deployments
    # Only the stages that need Twilio credentials get them.
    for stage, d in deployments.items():
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        assert not {n for n in env if n.startswith("TWILIO_") and SENSITIVE.search(n)} - set(expected.get(stage, [])), stage


def test_secret_values_appear_only_base64_in_secrets():
    r = render(*values_args("chart-secrets"))
    plain = ["not-a-real-token", "not-a-real-token-2", "not-a-real-secret", "not-a-real-password"]
    for value in plain:
        assert value not in r.stdout
    secret = r.named("Secret", f"{FULLNAME}-twilio")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"account-sid": "AC00000000000000000000000000000000", "auth-token": "not-a-real-token",
                       "auth-token-secondary": "not-a-real-token-2", "api-key-sid": "SK00000000000000000000000000000000",
                       "api-key-secret": "not-a-real-secret"}


def test_existing_twilio_secret_means_no_chart_twilio_secret():
    r = render(*values_args("everything-on"))
    assert not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-twilio")]


def test_kafka_sasl_and_tls_wiring():
    r = render(*values_args("everything-on"))
    ingress = r.named("Deployment", f"{FULLNAME}-ingress")["spec"]["template"]["spec"]
    env = env_of(ingress["containers"][0])
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISMS"]["value"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULLNAME}-kafka", "key": "sasl-password"}
    assert env["KAFKA_SSL_CA_LOCATION"]["value"] == "/etc/si/kafka-tls/ca.crt"
    tls = {v["name"]: v for v in ingress["volumes"]}["kafka-tls"]["secret"]
    assert tls == {"secretName": f"{FULLNAME}-kafka", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    mounts = {m["name"]: m for m in ingress["containers"][0]["volumeMounts"]}
    assert mounts["kafka-tls"]["mountPath"] == "/etc/si/kafka-tls" and mounts["kafka-tls"]["readOnly"] is True

    other = render(*values_args("chart-secrets"))
    env = env_of(other.named("Deployment", f"{FULLNAME}-ingress")["spec"]["template"]["spec"]["containers"][0])
    assert env["KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "si-kafka-sasl", "key": "sasl-username"}
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISMS"]["value"] == "PLAIN"
    assert not [s for s in other.of_kind("Secret") if s["metadata"]["name"] == f"{FULLNAME}-kafka"]


def test_the_stages_calling_twilio_mount_their_secrets_as_files_they_reread(rendered, case):
    """ingress, media and egress read rotated secrets from the mounted Secret (no
    subPath, so the kubelet updates the files in place); the file names are
    fixed, the keys follow twilio.secretKeys; each gets only the secrets it
    uses (its twilioEnv), and no other stage gets the mount."""
    existing = (ci_values(case).get("twilio") or {}).get("existingSecret")
    keys = VALUES["twilio"]["secretKeys"]
    expected = {
        "egress": [
            {"key": keys["TWILIO_API_KEY_SECRET"], "path": "api-key-secret"},
            {"key": keys["TWILIO_API_KEY_SID"], "path": "api-key-sid"},
            {"key": keys["TWILIO_AUTH_TOKEN"], "path": "auth-token"},
            {"key": keys["TWILIO_AUTH_TOKEN_SECONDARY"], "path": "auth-token-secondary"},
        ],
        "media": [
            {"key": keys["TWILIO_API_KEY_SECRET"], "path": "api-key-secret"},
            {"key": keys["TWILIO_API_KEY_SID"], "path": "api-key-sid"},
            {"key": keys["TWILIO_AUTH_TOKEN"], "path": "auth-token"},
            {"key": keys["TWILIO_AUTH_TOKEN_SECONDARY"], "path": "auth-token-secondary"},
        ],
        "ingress": [
            {"key": keys["TWILIO_AUTH_TOKEN"], "path": "auth-token"},
            {"key": keys["TWILIO_AUTH_TOKEN_SECONDARY"], "path": "auth-token-secondary"},
            {"key": keys["TWILIO_WEBHOOK_SHARED_SECRET"], "path": "webhook-shared-secret"},
        ],
    }
    seen = set()
    for d in rendered.of_kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in spec["containers"][0].get("volumeMounts", [])}
        env = env_of(spec["containers"][0])
        name = stage_name(d)
        if name not in expected:
            assert "twilio-credentials" not in volumes and "TWILIO_CREDENTIALS_DIR" not in env
            continue
        seen.add(name)
        secret = volumes["twilio-credentials"]["secret"]
        assert secret["secretName"] == (existing or f"{FULLNAME}-twilio")
        assert secret["optional"] is True and secret["defaultMode"] == 0o440
        assert sorted(secret["items"], key=lambda i: i["path"]) == expected[name], name
        mount = mounts["twilio-credentials"]
        assert mount["readOnly"] is True and "subPath" not in mount
        assert env["TWILIO_CREDENTIALS_DIR"]["value"] == mount["mountPath"] == "/etc/si/twilio"
    assert seen == set(expected) & {stage_name(d) for d in rendered.of_kind("Deployment")}


def test_the_twilio_credentials_mount_follows_values():
    r = render("--set", "twilio.secretKeys.TWILIO_AUTH_TOKEN=token",
               "--set", "stages.egress.twilioCredentialsMount.mountPath=/run/twilio")
    spec = r.named("Deployment", f"{FULLNAME}-egress")["spec"]["template"]["spec"]
    items = {v["name"]: v for v in spec["volumes"]}["twilio-credentials"]["secret"]["items"]
    assert {"key": "token", "path": "auth-token"} in items
    assert env_of(spec["containers"][0])["TWILIO_CREDENTIALS_DIR"]["value"] == "/run/twilio"
    off = render("--set", "stages.egress.twilioCredentialsMount.enabled=false")
    spec = off.named("Deployment", f"{FULLNAME}-egress")["spec"]["template"]["spec"]
    assert "twilio-credentials" not in {v["name"] for v in spec["volumes"]}
    assert "TWILIO_CREDENTIALS_DIR" not in env_of(spec["containers"][0])


def test_secret_checksum_rolls_pods_when_a_credential_changes():
    def checksum(*args):
        d = render(*args).named("Deployment", f"{FULLNAME}-ingress")
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
    assert checksum("--set", "twilio.authToken=a") != checksum("--set", "twilio.authToken=b")


# --------------------------------------------------------------------------
# Generic env mapping
# --------------------------------------------------------------------------

def test_env_mapping_is_the_same_for_every_stage():
    r = render("-f", str(CHART_DIR / "ci" / "everything-on.yaml"),
               "--set", "config.SOME_SHARED=one",
               "--set", "stages.segment.config.SOME_SHARED=two",
               "--set", "stages.consent.config.LOG_LEVEL=",
               "--set", "stages.lifecycle.secretEnv.LIFECYCLE_KEY.name=lc",
               "--set", "stages.lifecycle.secretEnv.LIFECYCLE_KEY.key=k")
    for d in r.of_kind("Deployment"):
        stage = stage_name(d)
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        assert env["SOME_SHARED"]["value"] == ("two" if stage == "segment" else "one"), stage
        assert ("LOG_LEVEL" in env) == (stage != "consent"), stage
        assert env["SHARED_FROM_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "si-shared", "key": "shared-value"}
        assert ("LIFECYCLE_KEY" in env) == (stage == "lifecycle"), stage
    segment = env_of(r.named("Deployment", f"{FULLNAME}-segment")["spec"]["template"]["spec"]["containers"][0])
    assert segment["SEGMENT_EXTRA_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "si-segment-extra"
    assert segment["SEGMENT_PLAIN_EXTRA"]["value"] == "on"


def test_numbers_in_config_render_as_plain_strings():
    r = render("--set-json", 'config={"BIG_NUMBER": 10000000, "RATIO": 0.5, "FLAG": true}')
    env = env_of(r.named("Deployment", f"{FULLNAME}-normalize")["spec"]["template"]["spec"]["containers"][0])
    assert (env["BIG_NUMBER"]["value"], env["RATIO"]["value"], env["FLAG"]["value"]) == ("10000000", "0.5", "true")


def test_values_yaml_documents_every_known_variable():
    text = (CHART_DIR / "values.yaml").read_text()
    known = ["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISMS", "KAFKA_SASL_USERNAME",
             "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CA_LOCATION", "SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_USERNAME",
             "SCHEMA_REGISTRY_PASSWORD", "SI_TOPIC_PREFIX", "ADMIN_ADDR", "LOG_FORMAT", "LOG_LEVEL", "DRAIN_TIMEOUT",
             "SESSION_TIMEOUT", "STATIC_MEMBERSHIP", "POD_NAME", "LISTEN_ADDR", "PUBLIC_BASE_URL", "TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_SECONDARY",
             "MAX_BODY_BYTES", "MAX_IN_FLIGHT", "MAX_CONNECTIONS", "HEADER_READ_TIMEOUT", "IDLE_TIMEOUT", "REQUEST_TIMEOUT", "PRODUCE_TIMEOUT", "DEFAULT_LOCALE",
             "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET", "TWILIO_API_BASE_URL",
             "TWILIO_CONVERSATIONS_BASE_URL", "STATUS_CALLBACK_BASE_URL", "SI_REPLICATION_FACTOR",
             "SI_TOPICS_FILE", "SI_SCHEMAS_DIR"]
    missing = [name for name in known if name not in text]
    assert not missing


def test_status_callback_url_defaults_to_the_public_ingress_url():
    r = render(*values_args("everything-on"))
    env = env_of(r.named("Deployment", f"{FULLNAME}-egress")["spec"]["template"]["spec"]["containers"][0])
    assert env["STATUS_CALLBACK_BASE_URL"]["value"] == "https://si.example.com"
    assert env["TWILIO_API_BASE_URL"]["value"] == "https://api.twilio.com"


# --------------------------------------------------------------------------
# Setup hook Job
# --------------------------------------------------------------------------

def test_setup_job_is_a_pre_install_pre_upgrade_hook(rendered):
    jobs = rendered.of_kind("Job")
    assert len(jobs) == 1
    job = jobs[0]
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert "hook-weight" in " ".join(annotations)
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert "serviceAccountName" not in spec  # the release's ServiceAccount does not exist yet
    for c in containers_of(spec):
        env = env_of(c)
        assert env["SI_TOPICS_FILE"]["value"] == "/etc/si/topics.yaml"
        assert env["SI_SCHEMAS_DIR"]["value"] == "/etc/si/schemas"
        assert "TWILIO_AUTH_TOKEN" not in env


def test_setup_job_steps():
    default = render().of_kind("Job")[0]["spec"]["template"]["spec"]
    assert [c["command"] for c in default["initContainers"]] == [["sictl", "topics", "apply"]]
    assert [c["command"] for c in default["containers"]] == [["sictl", "schemas", "register"]]
    # With Strimzi owning the topics, the Job only registers schemas.
    strimzi = render(*values_args("everything-on")).of_kind("Job")[0]["spec"]["template"]["spec"]
    assert "initContainers" not in strimzi
    assert [c["command"] for c in strimzi["containers"]] == [["sictl", "schemas", "register"]]


def test_setup_job_only_uses_secrets_that_exist_before_the_release(rendered):
    """Hooks run before regular resources: the Job may reference an external
    Secret or a hook Secret of lower weight, never a regular chart Secret."""
    job = rendered.of_kind("Job")[0]
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    secrets = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")}
    spec = job["spec"]["template"]["spec"]
    referenced = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    for c in containers_of(spec):
        referenced |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    for name in referenced:
        if name in secrets:
            annotations = secrets[name]["metadata"].get("annotations", {})
            assert "pre-install" in annotations.get("helm.sh/hook", ""), name
            assert int(annotations["helm.sh/hook-weight"]) < job_weight, name
        else:
            assert not name.startswith(FULLNAME), f"{name}: chart Secret that is not rendered"


def test_hook_secret_copy_matches_the_release_secret():
    r = render(*values_args("chart-secrets"))
    release = r.named("Secret", f"{FULLNAME}-schema-registry")["data"]
    hook = r.named("Secret", f"{FULLNAME}-setup-schema-registry")["data"]
    assert release == hook and set(hook) == {"registry-username", "registry-password"}


# --------------------------------------------------------------------------
# Autoscaling
# --------------------------------------------------------------------------

def test_keda_and_hpa_never_target_the_same_deployment(rendered):
    hpa = [h["spec"]["scaleTargetRef"]["name"] for h in rendered.of_kind("HorizontalPodAutoscaler")]
    keda = [s["spec"]["scaleTargetRef"]["name"] for s in rendered.of_kind("ScaledObject")]
    assert not set(hpa) & set(keda)
    assert len(hpa) == len(set(hpa)) and len(keda) == len(set(keda))
    deployments = {d["metadata"]["name"] for d in rendered.of_kind("Deployment")}
    assert set(hpa) | set(keda) <= deployments


def test_ingress_hpa_on_cpu_and_optional_memory():
    default = render().named("HorizontalPodAutoscaler", f"{FULLNAME}-ingress")
    assert [m["resource"]["name"] for m in default["spec"]["metrics"]] == ["cpu"]
    everything = render(*values_args("everything-on")).named("HorizontalPodAutoscaler", f"{FULLNAME}-ingress")
    assert [m["resource"]["name"] for m in everything["spec"]["metrics"]] == ["cpu", "memory"]


def test_keda_triggers_follow_consumer_values_and_prefix():
    r = render(*values_args("everything-on"))
    objects = r.of_kind("ScaledObject")
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects} == ALL_STAGES - {"ingress"}
    for o in objects:
        stage = o["metadata"]["labels"]["app.kubernetes.io/component"]
        consumer = VALUES["stages"][stage]["consumer"]
        triggers = o["spec"]["triggers"]
        assert [t["metadata"]["topic"] for t in triggers] == [f"staging.{t}" for t in consumer["topics"]]
        for t in triggers:
            assert t["type"] == "kafka"
            assert t["metadata"]["consumerGroup"] == f"staging.{consumer['group']}"
            assert t["metadata"]["bootstrapServers"] == "kafka-kafka-bootstrap.kafka.svc:9093"
            assert all(isinstance(v, str) for v in t["metadata"].values())
            assert t["authenticationRef"]["name"] == f"{FULLNAME}-kafka-keda"
    auth = r.named("TriggerAuthentication", f"{FULLNAME}-kafka-keda")
    assert {p["parameter"] for p in auth["spec"]["secretTargetRef"]} == {"username", "password", "ca"}


def test_consumer_topics_match_topics_yaml():
    """Each stage's consumer.topics are the non-compacted topics that list the
    stage under `consumers` in topics.yaml (compacted topics are global tables
    read without the consumer group)."""
    for stage in ALL_STAGES - {"ingress"}:
        expected = sorted(t["name"] for t in TOPICS["topics"]
                          if stage in t.get("consumers", [])
                          and "compact" not in str((t.get("configs") or {}).get("cleanup.policy", "delete")))
        assert sorted(VALUES["stages"][stage]["consumer"]["topics"]) == expected, stage
        assert VALUES["stages"][stage]["consumer"]["group"] == f"si-{stage}"


# --------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------

def test_files_topics_yaml_is_in_sync_with_the_repo():
    chart_copy = CHART_DIR / "files" / "topics.yaml"
    repo = REPO_ROOT / "topics.yaml"
    assert repo.exists(), "the repo's topics.yaml is missing"
    assert chart_copy.read_bytes() == repo.read_bytes(), "run dev/helm-check to sync helm/si-twilio-channel/files/topics.yaml"


def expected_topic(topic: dict, replicas_override=None) -> dict:
    defaults = TOPICS.get("defaults", {})
    replicas = int(replicas_override or topic.get("replication_factor") or defaults.get("replication_factor") or 3)
    configs = {**(defaults.get("configs") or {}), **(topic.get("configs") or {})}
    if "min.insync.replicas" in configs and int(configs["min.insync.replicas"]) > replicas:
        configs["min.insync.replicas"] = str(replicas)
    return {"partitions": int(topic["partitions"]), "replicas": replicas,
            "config": {k: str(v) for k, v in configs.items()}}


def test_strimzi_topics_match_topics_yaml():
    r = render(*values_args("everything-on"))
    rendered = {t["spec"]["topicName"]: t for t in r.of_kind("KafkaTopic")}
    assert set(rendered) == {f"staging.{t['name']}" for t in TOPICS["topics"]}
    for topic in TOPICS["topics"]:
        kt = rendered[f"staging.{topic['name']}"]
        spec = {k: kt["spec"][k] for k in ("partitions", "replicas", "config")}
        assert spec == expected_topic(topic), topic["name"]
        assert kt["metadata"]["labels"]["strimzi.io/cluster"] == "kafka"
        assert kt["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_strimzi_replicas_override_lowers_min_insync():
    r = render("--set", "strimzi.topics.enabled=true", "--set", "strimzi.topics.replicas=1")
    topics = {t["spec"]["topicName"]: t for t in r.of_kind("KafkaTopic")}
    assert len(topics) == len(TOPICS["topics"])
    for topic in TOPICS["topics"]:
        spec = topics[topic["name"]]["spec"]
        assert spec["replicas"] == 1
        assert {k: spec[k] for k in ("partitions", "replicas", "config")} == expected_topic(topic, 1)
        assert spec["config"].get("min.insync.replicas", "1") == "1"


def test_strimzi_max_partitions_caps_only_the_topics_above_it():
    r = render("--set", "strimzi.topics.enabled=true", "--set", "strimzi.topics.maxPartitions=3")
    topics = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in r.of_kind("KafkaTopic")}
    assert len(topics) == len(TOPICS["topics"])
    assert any(int(t["partitions"]) > 3 for t in TOPICS["topics"]), "nothing above the cap to test"
    for topic in TOPICS["topics"]:
        assert topics[topic["name"]] == min(int(topic["partitions"]), 3), topic["name"]


def test_no_strimzi_topics_by_default():
    assert render().of_kind("KafkaTopic") == []


# --------------------------------------------------------------------------
# Services, Ingress, monitoring, policies
# --------------------------------------------------------------------------

def serves_media(case: str) -> bool:
    media = (ci_values(case).get("stages") or {}).get("media") or {}
    return "MEDIA_URL_SECRET" in (media.get("secretEnv") or {})


def test_ingress_service_ports(rendered, case):
    svc = rendered.named("Service", f"{FULLNAME}-ingress")
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("http", 8080, "http"), ("admin", 9090, "admin")}
    media = f"{FULLNAME}-media"
    for s in rendered.of_kind("Service"):
        if s is svc:
            continue
        if s["metadata"]["name"] == media and serves_media(case):
            # The public port of signed media URLs.
            assert {(p["name"], p["port"]) for p in s["spec"]["ports"]} == {("http", 8088), ("admin", 9090)}
        else:
            assert [p["name"] for p in s["spec"]["ports"]] == ["admin"]


def test_kubernetes_ingress_routes_webhooks_and_signed_media_only():
    ing = render(*values_args("everything-on")).named("Ingress", f"{FULLNAME}-ingress")
    paths = [p for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
    backends = [p["backend"]["service"] for p in paths]
    assert backends == [{"name": f"{FULLNAME}-ingress", "port": {"name": "http"}},
                        {"name": f"{FULLNAME}-media", "port": {"name": "http"}}]
    assert paths[1]["path"] == "/media/"
    media = render(*values_args("everything-on")).named("Deployment", f"{FULLNAME}-media")
    container = media["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "http", "containerPort": 8088, "protocol": "TCP"} in container["ports"]
    assert env_of(container)["MEDIA_URL_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "si-media-urls", "key": "secret"}
    # egress signs with the same secret, under the public URL.
    egress = render(*values_args("everything-on")).named("Deployment", f"{FULLNAME}-egress")
    env = env_of(egress["spec"]["template"]["spec"]["containers"][0])
    assert env["MEDIA_PUBLIC_BASE_URL"]["value"] == "https://si.example.com"
    assert env["MEDIA_URL_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "si-media-urls"
    # Without the secret: no route, no public port, no base URL.
    plain = render("-f", str(CHART_DIR / "ci" / "everything-on.yaml"),
                   "--set", "stages.media.secretEnv=null", "--set", "stages.egress.secretEnv=null")
    ing = plain.named("Ingress", f"{FULLNAME}-ingress")
    assert [p["backend"]["service"]["name"] for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]] == [
        f"{FULLNAME}-ingress"]
    assert "MEDIA_PUBLIC_BASE_URL" not in env_of(
        plain.named("Deployment", f"{FULLNAME}-egress")["spec"]["template"]["spec"]["containers"][0])
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["si.example.com"], "secretName": "si-example-com-tls"}]
    assert render().of_kind("Ingress") == []


def test_service_monitor_scrapes_admin_metrics():
    sm = render(*values_args("everything-on")).of_kind("ServiceMonitor")
    assert len(sm) == 1
    assert sm[0]["spec"]["endpoints"][0]["port"] == "admin"
    assert sm[0]["spec"]["endpoints"][0]["path"] == "/metrics"
    assert render().of_kind("ServiceMonitor") == []


def test_network_policies(rendered, case):
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert set(policies) == {stage_name(d) for d in rendered.of_kind("Deployment")}
    for stage, policy in policies.items():
        rules = policy["spec"]["ingress"]
        by_port = {r["ports"][0]["port"]: r for r in rules}
        if stage == "ingress" or (stage == "media" and serves_media(case)):
            assert "from" not in by_port["http"]  # Twilio: from anywhere
        else:
            assert "http" not in by_port
        admin_from = by_port["admin"]["from"]
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in admin_from


def test_egress_policy_allows_https_only_for_egress_and_media():
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p
                for p in render(*values_args("everything-on")).of_kind("NetworkPolicy")}
    for stage, policy in policies.items():
        ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
        assert 53 in ports and 9092 in ports
        https_anywhere = any(rule["ports"] == [{"port": 443, "protocol": "TCP"}] and "to" not in rule
                             for rule in policy["spec"]["egress"])
        assert https_anywhere == (stage in {"egress", "media"}), stage


def test_traces_are_off_by_default_and_reach_the_collector_when_on():
    def otlp_rules(*args):
        policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p
                    for p in render(*args).of_kind("NetworkPolicy")}
        return {stage: [r for r in policy["spec"]["egress"]
                        if any(p["port"] == 4318 for p in r["ports"])]
                for stage, policy in policies.items()}

    off = render()
    for deployment in off.of_kind("Deployment"):
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert not any(name.startswith("OTEL_") for name in env), stage_name(deployment)
    assert all(rules == [] for rules in otlp_rules().values())

    endpoint = "http://otel-collector.monitoring:4318"
    on = ["--set-string", f"config.OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}",
          "--set-string", "config.OTEL_TRACES_SAMPLER=parentbased_traceidratio",
          "--set-string", "config.OTEL_TRACES_SAMPLER_ARG=0.1"]
    for deployment in render(*on).of_kind("Deployment"):
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint
        assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.1"
    rules = otlp_rules(*on)
    assert rules and all(len(r) == 1 for r in rules.values()), rules
    # One stage without traces gets no collector rule.
    rules = otlp_rules(*on, "--set", "stages.lifecycle.config.OTEL_EXPORTER_OTLP_ENDPOINT=null")
    assert rules["lifecycle"] == [] and rules["egress"] != []


def test_pdb_per_enabled_stage(rendered, case):
    pdbs = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in rendered.of_kind("PodDisruptionBudget")}
    assert set(pdbs) == {stage_name(d) for d in rendered.of_kind("Deployment")}
    for stage, pdb in pdbs.items():
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), stage
    if case == "everything-on":
        assert pdbs["ingress"]["spec"] == {**pdbs["ingress"]["spec"], "minAvailable": 2}


def test_service_account_does_not_mount_a_token(rendered):
    sa = rendered.of_kind("ServiceAccount")
    assert len(sa) == 1 and sa[0]["automountServiceAccountToken"] is False


def test_helm_test_pod_gets_healthz_on_admin_port(rendered):
    pods = rendered.of_kind("Pod")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "wget" and command[-1] == f"http://{FULLNAME}-ingress:9090/healthz"


def render_notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` would print it. `helm install --dry-run`
    still wants a cluster, so render a copy of the chart in which the notes
    are a ConfigMap."""
    import shutil
    import subprocess
    from conftest import helm_binary
    chart = tmp_path / "si-twilio-channel"
    shutil.copytree(CHART_DIR, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes_check.tpl").write_text('{{- define "notes.check" -}}\n' + notes.read_text() + "\n{{- end -}}\n")
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"notes.check\" . | quote }}\n")
    notes.unlink()
    proc = subprocess.run([helm_binary(), "template", "si", str(chart), "--show-only", "templates/notes-check.yaml", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["data"]["notes"]


def test_notes_warn_about_missing_settings(tmp_path):
    notes = render_notes(tmp_path)
    assert "PUBLIC_BASE_URL is not set" in notes
    assert "no Twilio credentials" in notes
    assert re.search(r"ingress +enabled", notes) and re.search(r"voice-link +enabled", notes)
    configured = render_notes(tmp_path / "b", "-f", str(CHART_DIR / "ci" / "everything-on.yaml"))
    assert "WARNING" not in configured
    assert "https://si.example.com" in configured
    assert re.search(r"consent +enabled .*KEDA", configured)
    assert "PrometheusRule si-si-twilio-channel" in configured
    assert "dashboards in ConfigMap si-si-twilio-channel-dashboards" in configured
    unscraped = render_notes(tmp_path / "c", "--set", "monitoring.dashboards.enabled=true")
    assert "serviceMonitor.enabled is false" in unscraped


def test_values_yaml_has_no_duplicate_keys():
    # PyYAML keeps the last of two equal keys silently (a stale
    # `voice-link: enabled: false` once hid above the real one).
    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
        duplicates = {k for k in keys if keys.count(k) > 1}
        assert not duplicates, f"duplicate keys {duplicates} at line {node.start_mark.line + 1}"
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    yaml.load((CHART_DIR / "values.yaml").read_text(), Loader=Strict)


# --------------------------------------------------------------------------
# Rendering must fail on bad values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (("--set", "stages.ingres.enabled=true"), "ingres"),
    (("--set", "stagez.ingress.enabled=true"), "stagez"),
    (("--set", "stages.normalize.replica=3"), "replica"),
    (("--set", "stages.normalize.replicas=two"), "replicas"),
    (("--set", "stages.normalize.autoscaling.enabled=true", "--set", "stages.normalize.keda.enabled=true"),
     "mutually exclusive"),
    (("--set", "stages.ingress.keda.enabled=true", "--set", "stages.ingress.autoscaling.enabled=false"), "consumer"),
    (("--set", "terminationGracePeriodSeconds=20"), "DRAIN_TIMEOUT"),
    (("--set", "config.DRAIN_TIMEOUT=1m"), "DRAIN_TIMEOUT"),
    (("--set", "config.DRAIN_TIMEOUT=twenty"), "not a duration"),
    (("--set", "stages.consent.enabled=true", "--set", "stages.consent.terminationGracePeriodSeconds=10"), "stages.consent"),
    (("--set", "config.KAFKA_SESSION_TIMEOUT_MS=10000"), "SESSION_TIMEOUT"),
    (("--set", "config.SESSION_TIMEOUT=3s"), "SESSION_TIMEOUT"),
    (("--set", "config.TWILIO_AUTH_TOKEN=x"), "config.TWILIO_AUTH_TOKEN"),
    (("--set", "stages.egress.config.TWILIO_ACCOUNT_SID=AC1"), "TWILIO_ACCOUNT_SID"),
    (("--set", "config.KAFKA_SASL_PASSWORD=x"), "KAFKA_SASL_PASSWORD"),
    (("--set", "setupJob.config.SCHEMA_REGISTRY_PASSWORD=x"), "SCHEMA_REGISTRY_PASSWORD"),
    (("--set-json", 'stages.ingress.extraEnv=[{"name":"TWILIO_AUTH_TOKEN","value":"x"}]'), "TWILIO_AUTH_TOKEN"),
    (("--set", "kafka.sasl.enabled=true"), "kafka.sasl.username"),
    (("--set", "stages.ingress.config.ADMIN_ADDR=9090"), "host:port"),
    (("--set", "kafka.sasl.mechanism=GSSAPI"), "mechanism"),
    (("--set", "stages.ingress.twilioEnv.TWILIO_TOKEN=required"), "TWILIO_TOKEN"),
    (("--set", "stages.ingress.resources.limits=null"), "limits"),
    # An empty items list would mount every key of the Twilio Secret.
    (("--set", "stages.normalize.twilioCredentialsMount.enabled=true",
      "--set", "stages.normalize.twilioCredentialsMount.mountPath=/etc/si/twilio"), "nothing of its own to mount"),
])
def test_bad_values_fail_rendering(args, message):
    result = render(*args)
    assert result.returncode != 0, f"rendering with {args} should fail"
    assert message in result.stderr, result.stderr


def test_admin_port_follows_admin_addr():
    r = render("--set", "config.ADMIN_ADDR=0.0.0.0:9191", "--set", "stages.ingress.config.LISTEN_ADDR=[::]:8443")
    c = r.named("Deployment", f"{FULLNAME}-ingress")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8443, "admin": 9191}
    svc = r.named("Service", f"{FULLNAME}-ingress")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8443, "admin": 9191}


# --------------------------------------------------------------------------
# The offline validator itself must be able to fail
# --------------------------------------------------------------------------

def test_validator_accepts_the_rendered_chart(rendered):
    for doc in rendered.docs:
        how, problems = validate_manifests.validate(doc, ["1.37.0"])
        assert not problems, (doc["kind"], doc["metadata"]["name"], how, problems)


def test_validator_rejects_broken_objects():
    r = render(*values_args("everything-on"))
    deployment = copy.deepcopy(r.of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    scaled = copy.deepcopy(r.of_kind("ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100
    topic = copy.deepcopy(r.of_kind("KafkaTopic")[0])
    topic["spec"]["partitions"] = 0
    monitor = copy.deepcopy(r.of_kind("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    for doc in (deployment, scaled, topic, monitor, unknown):
        _, problems = validate_manifests.validate(doc, ["1.37.0"])
        assert problems, doc["kind"]
