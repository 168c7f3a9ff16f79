"""``helm install`` into the real control plane, then the operator with exactly the
chart's RBAC reconciling examples/pipeline.yaml to Ready.

No container runs on kwok nodes, so the operator's pod is Running without the process
in it; the operator itself runs here, as a local process, under a kubeconfig of the
ServiceAccount the chart created (a TokenRequest token: what the pod would mount). Any
call the chart's ClusterRole does not allow fails with 403 and keeps the Pipeline from
Ready (the operator says so in its log and in the Pipeline's conditions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from cdcflow import naming
from cdcflow_operator import rbac
from tests.chart.conftest import CHART, REPO, audited_calls
from tests.chart.rbac_calls import Call, code_calls, delegated, expand
from tests.control_plane import ControlPlane
from tests.operator_suite.conftest import Pipelines, RunningOperator, _delete_pipelines, secret

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "pipeline.yaml"


def test_helm_install_and_the_charts_account_reconciles_the_example(
    control_plane: ControlPlane, k8s_namespace: str, tmp_path: Path
) -> None:
    plane, ns = control_plane, k8s_namespace
    release = f"cdcflow-{uuid.uuid4().hex[:6]}"
    system = plane.create_namespace("cdcflow-system")
    installed = False
    operator: RunningOperator | None = None
    try:
        done = plane.helm(
            "install", release, str(CHART), "--namespace", system, "--wait", "--timeout", "3m"
        )
        installed = True
        assert "kubectl get pipelines --watch" in done.stdout  # NOTES.txt, what to run next
        assert f"deployment/{release}-operator" in done.stdout
        # The CRD is there (from crds/, or an earlier test of this session), Established.
        plane.kubectl("wait", "--for=condition=Established", "crd/pipelines.cdcflow.io")

        pods = (
            plane.core_v1()
            .list_namespaced_pod(system, label_selector=f"app.kubernetes.io/instance={release}")
            .items
        )
        assert [(p.status.phase, p.spec.node_name in plane.node_names) for p in pods] == [
            ("Running", True)
        ]
        (pod,) = pods
        assert pod.spec.service_account_name == f"{release}-operator"
        assert pod.spec.containers[0].security_context.read_only_root_filesystem is True

        # The operator, as that ServiceAccount, on the example.
        kubeconfig = plane.service_account_kubeconfig(system, f"{release}-operator")
        denied = plane.kubectl(
            "auth", "can-i", "list", "secrets", "-n", ns, kubeconfig=kubeconfig, check=False
        )
        assert denied.stdout.strip() == "no"  # least privilege: get, never list
        plane.provision_volumes(ns, 2, capacity="20Gi", storage_class="")
        secret(plane, ns, "mongo", {"uri": "mongodb://mongodb-0.mongodb:27017/?replicaSet=rs0"})
        log = tmp_path / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CDCFLOW_OPERATOR_INTERVAL_S": "1"}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "cdcflow_operator", "run", "-n", ns],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        operator = RunningOperator(process, log)
        plane.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
        name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
        pipelines = Pipelines(plane, ns)
        try:
            pipelines.wait_condition(name, "Ready", "True", timeout=240)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- operator log ---\n{operator.tail()}") from None
        status = pipelines.get(name)["status"]
        assert status["observedGeneration"] == 1
        ready, total = status["ready"].split("/")
        assert ready == total
        running = {
            p.metadata.labels[naming.COMPONENT_LABEL]
            for p in plane.core_v1()
            .list_namespaced_pod(ns, label_selector=f"{naming.PIPELINE_LABEL}={name}")
            .items
            if p.status.phase == "Running"
        }
        assert running >= {"producer", "consumer", "rabbitmq", "clickhouse"}
        text = log.read_text(errors="replace")
        refused = ("lacks this permission", "HTTP 403", "Forbidden")
        assert not any(word in text for word in refused), operator.tail()
        _delete_pipelines(plane, ns)
        operator.stop()
        check_rbac_against_calls(f"system:serviceaccount:{system}:{release}-operator")
    finally:
        if operator is not None:
            operator.stop()
        if installed:
            plane.helm("uninstall", release, "--namespace", system, "--wait", check=False)
        plane.delete_namespace(system)
    # Uninstall removed the cluster-scoped RBAC too (the CRD stays: Helm never deletes crds/).
    left = plane.kubectl("get", "clusterrole,clusterrolebinding", "-o", "name").stdout
    assert release not in left


def check_rbac_against_calls(username: str) -> None:
    """The ClusterRole is exactly what the operator calls: every request it made was
    allowed, and every grant is a request it made in this run (kopf's and the code's,
    from the audit log), a call in kube.py (paths this run does not take: deleting
    leftovers...), or a permission it hands on to a child's Role."""
    events = audited_calls(username)
    assert events, f"no audited request of {username}"
    denied = [
        f"{e['verb']} {e['requestURI']}" for e in events if e["responseStatus"]["code"] == 403
    ]
    assert not denied, f"the chart's RBAC refused: {denied}"
    observed: set[Call] = set()
    for event in events:
        ref = event.get("objectRef")
        if not ref or ref.get("apiGroup") == "authorization.k8s.io":
            # Discovery and /version (non-resource URLs), and the test's own `kubectl
            # auth can-i` (self reviews): the default roles give these to every account.
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        observed.add((ref.get("apiGroup", ""), resource, event["verb"]))
    granted = expand(rbac.RULES)
    assert observed <= granted, sorted(observed - granted)
    unexplained = granted - observed - code_calls() - delegated()
    assert not unexplained, (
        "operator/cdcflow_operator/rbac.py grants what the operator never calls "
        f"(remove it, then `make crds`): {sorted(unexplained)}; observed: {sorted(observed)}"
    )
