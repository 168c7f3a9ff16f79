"""The chart rendered offline: lint, the objects it makes, its generated files, its
hardening, its schema's refusals, and strict validity for Kubernetes 1.32-1.37.

Strict validity for other versions than the running control plane's comes from
kubernetes-validate (the upstream OpenAPI schemas of each release, unknown fields
rejected); an apiVersion that a release does not serve fails there too. Custom kinds
(Pipeline, PodMonitor, PrometheusRule) have no upstream schema: test_server.py checks
them against their real CRDs on the API server.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cdcflow import alerts, naming
from cdcflow_operator import __main__ as operator_cli
from cdcflow_operator import chart, crd, rbac
from cdcflow_operator.manifests import build_all, rabbitmq
from cdcflow_operator.manifests.policies import build_network_policies
from cdcflow_operator.models import Pipeline
from tests.chart.conftest import ALL_ON, CHART, Helm
from tests.operator_suite.specs import SPECS, body

VERSIONS = [f"1.{minor}" for minor in range(32, 38)]
CUSTOM_KINDS = {"Pipeline", "PodMonitor", "PrometheusRule"}
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        found.setdefault(obj["kind"], []).append(obj)
    return found


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = by_kind(objects)[kind]
    assert len(matches) == 1, [m["metadata"]["name"] for m in matches]
    return matches[0]


@pytest.fixture(scope="module")
def defaults(helm: Helm) -> list[dict[str, Any]]:
    return helm.render()


@pytest.fixture(scope="module")
def all_on(helm: Helm) -> list[dict[str, Any]]:
    return helm.render(ALL_ON)


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_strict(helm: Helm, values: dict[str, Any] | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        args += ["--values", str(helm.values_file(values))]
    done = helm.run(*args, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


def test_default_objects(defaults: list[dict[str, Any]]) -> None:
    kinds = {kind: len(items) for kind, items in by_kind(defaults).items()}
    assert kinds == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Deployment": 1,
        "ConfigMap": len(DASHBOARDS),
    }
    assert len(DASHBOARDS) >= 3


def test_every_option_on_adds_monitoring_and_the_example(all_on: list[dict[str, Any]]) -> None:
    kinds = {kind: len(items) for kind, items in by_kind(all_on).items()}
    assert kinds == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Deployment": 1,
        "ConfigMap": len(DASHBOARDS),
        "PodMonitor": 2,
        "PrometheusRule": 1,
        "Pipeline": 1,
    }


def test_switches_turn_parts_off(helm: Helm) -> None:
    objects = helm.render(
        {
            "dashboards": {"enabled": False},
            "rbac": {"create": False},
            "serviceAccount": {"create": False, "name": "existing"},
        }
    )
    assert {o["kind"] for o in objects} == {"Deployment"}
    assert (
        one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    )


def test_generated_chart_files_are_current() -> None:
    assert chart.stale() == [], "run `make crds`"
    assert chart.CHART_CRD_PATH.read_text() == crd.CRD_PATH.read_text()


def test_stale_chart_files_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rbac-rules.yaml"
    rules.write_text(chart.render_rules().replace("- watch\n", "", 1))
    copy_of_crd = tmp_path / "pipeline.yaml"
    copy_of_crd.write_text(crd.render())
    monkeypatch.setattr(chart, "RULES_PATH", rules)
    monkeypatch.setattr(chart, "CHART_CRD_PATH", copy_of_crd)
    assert chart.stale() == [rules]
    assert operator_cli.main(["crd", "--check"]) == 1
    assert f"{rules} is stale: run `make crds`" in capsys.readouterr().err


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_cluster_role_is_exactly_the_operators_rules(
    helm: Helm, values: dict[str, Any] | None
) -> None:
    objects = helm.render(values, release="shop", namespace="ops")
    role = one(objects, "ClusterRole")
    assert role["rules"] == rbac.RULES
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ops"}]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels only, as the policies use) matches these labels."""
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize(
    "values",
    [None, ALL_ON, {"nameOverride": "cdc", "fullnameOverride": "custom-op"}],
    ids=["defaults", "all-on", "renamed"],
)
def test_pipeline_network_policies_admit_the_charts_operator_pod(
    helm: Helm, values: dict[str, Any] | None
) -> None:
    """The broker's and producer's policies let the operator read depth and lag only if
    their operator podSelector matches the pod the chart actually runs: render both."""
    objects = helm.render(values, release="shop", namespace="ops")
    operator_pod = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pipeline = Pipeline.from_body(
        body("p", {**SPECS["three-node-broker"], "broker": {"managed": {"replicas": 1}}})
    )
    policies = {
        p["metadata"]["labels"][naming.COMPONENT_LABEL]: p["spec"]
        for p in build_network_policies(pipeline)
    }
    for component, port in (
        (naming.BROKER, rabbitmq.MANAGEMENT_PORT),
        (naming.PRODUCER, naming.METRICS_PORT),
    ):
        operator_rules = [
            peer
            for rule in policies[component]["ingress"]
            if any(p["port"] == port for p in rule.get("ports", []))
            for peer in rule["from"]
            if "podSelector" in peer
        ]
        assert operator_rules, f"no rule admits the operator to {component}:{port}"
        for peer in operator_rules:
            assert _selects(peer["podSelector"], operator_pod), (peer, operator_pod)
    # ...and no Pipeline child is taken for the operator.
    for manifest in build_all(pipeline, 2):
        template = manifest.get("spec", {}).get("template")
        if template is not None:
            assert not _selects(
                {"matchLabels": dict(naming.OPERATOR_POD_LABELS)}, template["metadata"]["labels"]
            )


def test_operator_deployment_is_hardened_and_probed(defaults: list[dict[str, Any]]) -> None:
    deployment = one(defaults, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two operators
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "cdcflow/operator:0.1.0"
    # The probes hit the endpoint the operator is told to serve (kopf's liveness).
    (liveness_arg,) = [a for a in container["args"] if a.startswith("--liveness=")]
    match = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)(/healthz)", liveness_arg)
    assert match
    (port,) = container["ports"]
    assert port["containerPort"] == int(match.group(1))
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": match.group(2), "port": port["name"]}
    assert container["args"][:2] == ["run", "--all-namespaces"]
    # The argument list is one the operator's own CLI accepts.
    parsed = operator_cli._parser().parse_args(container["args"])
    assert parsed.all_namespaces and parsed.liveness == liveness_arg.split("=", 1)[1]


def test_watched_namespaces_reach_the_operator_and_the_pod_monitors(
    all_on: list[dict[str, Any]],
) -> None:
    container = one(all_on, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    parsed = operator_cli._parser().parse_args(container["args"])
    assert parsed.namespace == ["team-a", "team-b"] and parsed.verbose
    assert container["image"] == "registry.example.com/cdcflow/operator:0.1.0"
    for monitor in by_kind(all_on)["PodMonitor"]:
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
        assert monitor["metadata"]["labels"]["release"] == "kps"


def test_dashboards_are_sidecar_configmaps_of_the_generated_files(
    all_on: list[dict[str, Any]],
) -> None:
    maps = by_kind(all_on)["ConfigMap"]
    contents = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "cdcflow"}
        ((key, text),) = config_map["data"].items()
        contents[key] = json.loads(text)
    assert contents == {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def test_prometheus_rule_carries_the_generated_alerts(all_on: list[dict[str, Any]]) -> None:
    rule = one(all_on, "PrometheusRule")
    committed = yaml.safe_load(alerts.RULE_CRD_FILE.read_text())
    assert rule["spec"] == committed["spec"]
    assert "{{ $labels" in json.dumps(rule["spec"])  # Prometheus templates, not Helm's
    assert rule["metadata"]["labels"]["release"] == "kps"


def test_pod_monitors_match_the_alert_rules_jobs(all_on: list[dict[str, Any]]) -> None:
    thresholds = alerts.Thresholds()
    monitors = {
        m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: m
        for m in by_kind(all_on)["PodMonitor"]
    }
    assert set(monitors) == {"producer", "consumer"}
    for component, pattern in (
        ("producer", thresholds.producer_job),
        ("consumer", thresholds.consumer_job),
    ):
        monitor = monitors[component]
        # Prometheus names a PodMonitor's job <namespace>/<name>.
        job = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
        assert re.fullmatch(pattern, job), (job, pattern)
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        targets = {r["targetLabel"] for r in endpoint["relabelings"]}
        assert "pipeline" in targets


def test_example_pipeline_is_a_valid_spec(all_on: list[dict[str, Any]]) -> None:
    from cdcflow_operator.models import PipelineSpec

    pipeline = one(all_on, "Pipeline")
    spec = PipelineSpec.model_validate(pipeline["spec"])
    assert spec.image == "cdcflow/workers:0.1.0"
    assert pipeline["metadata"] == {
        **pipeline["metadata"],
        "name": "demo",
        "namespace": "cdcflow-system",
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_valid_for_kubernetes(
    defaults: list[dict[str, Any]], all_on: list[dict[str, Any]], version: str
) -> None:
    checked = 0
    for obj in [*defaults, *all_on]:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked == 2 * (4 + len(DASHBOARDS))


def test_strict_validation_would_catch_a_bad_field(defaults: list[dict[str, Any]]) -> None:
    """The check above is not vacuous: a misplaced field fails it."""
    deployment = copy.deepcopy(one(defaults, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


@pytest.mark.parametrize(
    ("version", "accepted"), [("1.31.9", False), ("1.32.0", True), ("1.37.2", True)]
)
def test_kube_version_constraint(helm: Helm, version: str, accepted: bool) -> None:
    done = helm.run("template", "x", str(CHART), "--kube-version", version, check=False)
    assert (done.returncode == 0) is accepted, done.stderr
    if not accepted:
        assert "kubeVersion" in done.stderr or ">=1.32.0-0" in done.stderr


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicas": 2}, "replicas"),
    (
        "typo in a nested key",
        {"image": {"repository": "x", "pullPolicy": "IfNotPresent", "tagg": "1"}},
        "tagg",
    ),
    (
        "pull policy not an enum value",
        {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
        "pullPolicy",
    ),
    (
        "image repository with a tag in it",
        {"image": {"repository": "cdcflow/operator:1", "pullPolicy": "Always"}},
        "repository",
    ),
    ("watch nothing", {"watch": {"allNamespaces": False, "namespaces": []}}, "namespaces"),
    (
        "namespace not a DNS label",
        {"watch": {"allNamespaces": False, "namespaces": ["Team_A"]}},
        "namespaces",
    ),
    ("interval zero", {"reconcileIntervalSeconds": 0}, "reconcileIntervalSeconds"),
    ("interval a string", {"reconcileIntervalSeconds": "5s"}, "reconcileIntervalSeconds"),
    ("no service account to use", {"serviceAccount": {"create": False}}, "name"),
    ("privileged liveness port", {"liveness": {"port": 80}}, "port"),
    ("memory not a quantity", {"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ("unknown resource name", {"resources": {"requests": {"gpu": "1"}}}, "gpu"),
    ("verbose a string", {"verbose": "yes"}, "verbose"),
    (
        "scrape interval not a duration",
        {"monitoring": {"podMonitors": {"enabled": True, "interval": "often"}}},
        "interval",
    ),
    ("label value too long", {"podLabels": {"team": "x" * 64}}, "team"),
    (
        "example name over 40 characters",
        {"examplePipeline": {"enabled": True, "name": "p" * 41}},
        "name",
    ),
    (
        "example secret key not a key",
        {"examplePipeline": {"mongoUriSecret": {"name": "mongo", "key": "a b"}}},
        "key",
    ),
    ("dashboards enabled not a boolean", {"dashboards": {"enabled": "true"}}, "enabled"),
]


@pytest.mark.parametrize(
    ("values", "path"), [(v, p) for _, v, p in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES]
)
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, Any], path: str) -> None:
    done = helm.template(values, check=False)
    assert done.returncode != 0, f"accepted: {values}"
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert path in done.stderr, done.stderr


def test_schema_accepts_every_documented_value(helm: Helm) -> None:
    """values.yaml itself and the all-on set pass (the refusals above are not blanket)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    helm.template(defaults)
    helm.template(ALL_ON)


def test_packaged_chart_carries_its_generated_files(helm: Helm, tmp_path: Path) -> None:
    """``helm package`` keeps crds/, files/ and the dashboards (the templates read them)
    and leaves out the promtool twin of the rules (.helmignore)."""
    import tarfile

    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("cdcflow-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "cdcflow/crds/pipeline.yaml" in names
    assert "cdcflow/files/rbac-rules.yaml" in names
    assert "cdcflow/alerts/cdcflow-rules.yaml" in names
    assert {f"cdcflow/dashboards/{p.name}" for p in DASHBOARDS} <= names
    assert not any(name.endswith(".prom.yaml") for name in names)
