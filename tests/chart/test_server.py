"""Every object the chart renders, and every example, accepted by the real API server
(server-side dry run: admission, defaulting, CRD schemas and CEL rules, nothing stored).

The Pipeline meets its CRD from helm/cdcflow/crds/; PodMonitor and PrometheusRule meet
the Prometheus Operator's real CRDs (scripts/kind/prometheus-crds.sh), so a field they
do not know fails here as it would in a cluster with kube-prometheus-stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdcflow_operator.chart import CHART_CRD_PATH
from tests.chart.conftest import ALL_ON, EXAMPLES, Helm
from tests.control_plane import ControlPlane, ControlPlaneError

pytestmark = pytest.mark.usefixtures("monitoring_crds")


@pytest.fixture(scope="module")
def chart_crd(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART_CRD_PATH))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/pipelines.cdcflow.io", "--timeout=60s"
    )


def dry_run(plane: ControlPlane, objects: list[dict[str, Any]], namespace: str) -> list[str]:
    """Server-side dry run of each object (one call each, so an error names its object)."""
    accepted = []
    for obj in objects:
        done = plane.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=chart-test",
            "-n",
            namespace,
            "-o",
            "name",
            "-f",
            "-",
            stdin=yaml.safe_dump(obj),
        )
        accepted.append(done.stdout.strip())
    return accepted


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_rendered_objects_pass_a_server_dry_run(
    control_plane: ControlPlane,
    k8s_namespace: str,
    helm: Helm,
    chart_crd: None,
    values: dict[str, Any] | None,
) -> None:
    objects = helm.render(values, namespace=k8s_namespace)
    accepted = dry_run(control_plane, objects, k8s_namespace)
    assert len(accepted) == len(objects)
    assert all(accepted), accepted


def test_a_bad_monitoring_field_is_refused_by_its_crd(
    control_plane: ControlPlane, k8s_namespace: str, helm: Helm
) -> None:
    """The dry runs above check something: the real PodMonitor schema refuses a typo."""
    monitor = next(
        o for o in helm.render(ALL_ON, namespace=k8s_namespace) if o["kind"] == "PodMonitor"
    )
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "5s"
    with pytest.raises(ControlPlaneError, match="intervall"):
        control_plane.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            k8s_namespace,
            "-f",
            "-",
            stdin=yaml.safe_dump(monitor),
        )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_accepted_by_the_api_server(
    control_plane: ControlPlane, k8s_namespace: str, chart_crd: None, path: Path
) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    done = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        k8s_namespace,
        "-f",
        str(path),
    )
    assert done.stdout.count("serverside-applied") == len(documents), done.stdout


def test_every_example_has_a_pipeline_or_is_its_mongodb() -> None:
    kinds = {p.name: {d["kind"] for d in yaml.safe_load_all(p.read_text()) if d} for p in EXAMPLES}
    assert {
        "pipeline.yaml",
        "atlas.yaml",
        "autoscaling.yaml",
        "external.yaml",
        "mongodb.yaml",
    } <= set(kinds)
    for name, found in kinds.items():
        assert "Pipeline" in found or name == "mongodb.yaml", (name, found)
