"""Helpers for the chart's tests: helm from the pinned build, rendering, value sets.

helm is the binary ``make cluster-build`` built (tests/control_plane.py finds it), run
with its config and caches in a temporary folder. Rendering needs no cluster; the tests
that need the API server use the ``control_plane`` fixture and are marked ``cluster``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.control_plane import ControlPlane, binaries_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "cdcflow"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
AUDIT_LOG_ENV = "CDCFLOW_TEST_AUDIT_LOG"


def pytest_configure(config: pytest.Config) -> None:
    """Turn on the API server's audit log (ServiceAccounts' requests, metadata only) for
    this session's control plane, so test_install.py can list every call the operator
    made with the chart's RBAC. The cluster starts lazily, after collection, and
    start.sh passes CDCFLOW_KUBE_APISERVER_ARGS to kube-apiserver."""
    if AUDIT_LOG_ENV in os.environ:
        return
    folder = Path(tempfile.mkdtemp(prefix="cdcflow-audit-"))
    policy = folder / "policy.yaml"
    policy.write_text(AUDIT_POLICY)
    log = folder / "audit.log"
    extra = f"--audit-policy-file={policy} --audit-log-path={log} --audit-log-format=json"
    os.environ["CDCFLOW_KUBE_APISERVER_ARGS"] = (
        f"{os.environ.get('CDCFLOW_KUBE_APISERVER_ARGS', '')} {extra}".strip()
    )
    os.environ[AUDIT_LOG_ENV] = str(log)


def audited_calls(username: str) -> list[dict[str, Any]]:
    """The audit events of one user (each: verb, objectRef, responseStatus)."""
    path = Path(os.environ[AUDIT_LOG_ENV])
    if not path.exists():
        pytest.fail(
            f"no audit log at {path}: the control plane started before tests/chart/conftest.py "
            "could enable it (run the chart tests in their own session)",
            pytrace=False,
        )
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if (
            event.get("user", {}).get("username") == username
            and event.get("stage") == "ResponseComplete"
        ):
            events.append(event)
    return events


ALL_ON: dict[str, Any] = {
    "image": {"repository": "registry.example.com/cdcflow/operator", "tag": "0.1.0"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]},
    "verbose": True,
    "serviceAccount": {"annotations": {"example.com/role": "cdcflow"}},
    "podAnnotations": {"example.com/scrape": "false"},
    "podLabels": {"team": "data"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "cdc", "effect": "NoSchedule"}
    ],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                        ]
                    },
                }
            ]
        }
    },
    "priorityClassName": "system-cluster-critical",
    "monitoring": {
        "podMonitors": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
    },
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "cdcflow"}},
    "examplePipeline": {"enabled": True, "name": "demo", "image": "cdcflow/workers:0.1.0"},
}
"""Every optional feature of values.yaml switched on (and every free-form key used)."""


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    path = binaries_dir() / "helm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make cluster-build`", pytrace=False)
    return path


class Helm:
    """helm with private config/cache folders (nothing written to ~/.config/helm)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.home = home

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=120
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}\n{done.stdout}")
        return done

    def values_file(self, values: dict[str, Any]) -> Path:
        path = self.home / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def template(
        self,
        values: dict[str, Any] | None = None,
        *,
        release: str = "cdcflow",
        namespace: str = "cdcflow-system",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if values is not None:
            args += ["--values", str(self.values_file(values))]
        return self.run(*args, check=check)

    def render(self, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """The rendered objects (templates only: crds/ is not rendered by helm template)."""
        text = self.template(values, **kwargs).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def helm(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_bin, tmp_path_factory.mktemp("helm"))


def prometheus_operator_crds() -> list[Path]:
    """The real monitoring.coreos.com CRDs (PodMonitor, PrometheusRule), from the
    prometheus-operator Go module (scripts/kind/prometheus-crds.sh fetches it through the
    Go module proxy into cdcflow's cache, once)."""
    script = REPO / "scripts" / "kind" / "prometheus-crds.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"{script} failed:\n{done.stderr}", pytrace=False)
    folder = Path(done.stdout.strip())
    return [
        folder / f"monitoring.coreos.com_{kind}.yaml" for kind in ("podmonitors", "prometheusrules")
    ]


@pytest.fixture(scope="session")
def monitoring_crds(control_plane: ControlPlane) -> Iterator[list[Path]]:
    """PodMonitor and PrometheusRule CRDs installed in the control plane (real schemas)."""
    files = prometheus_operator_crds()
    for path in files:
        control_plane.kubectl("apply", "--server-side", "-f", str(path))
    for name in ("podmonitors", "prometheusrules"):
        control_plane.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{name}.monitoring.coreos.com",
            "--timeout=60s",
        )
    yield files


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the audit folder made by pytest_configure (after the cluster has stopped)."""
    log = os.environ.get(AUDIT_LOG_ENV)
    if log and Path(log).parent.name.startswith("cdcflow-audit-"):
        shutil.rmtree(Path(log).parent, ignore_errors=True)
