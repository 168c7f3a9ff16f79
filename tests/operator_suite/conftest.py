"""Fixtures for the operator on the real control plane (tests/control_plane.py).

The CRD is installed once per session from crds/pipeline.yaml. The operator runs as
a separate process (``cdcflow-operator run -n <test namespace>``) under a
ServiceAccount kubeconfig bound to exactly :data:`cdcflow_operator.rbac.RULES`, the
rules the chart ships: anything it does beyond them fails with 403 here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from cdcflow_operator import crd, rbac
from cdcflow_operator.models import GROUP, PLURAL, VERSION
from tests.control_plane import ControlPlane, wait_for


@pytest.fixture(scope="session")
def pipeline_crd(control_plane: ControlPlane) -> str:
    """crds/pipeline.yaml applied and Established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(crd.CRD_PATH))
    name = f"{PLURAL}.{GROUP}"
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return name


@pytest.fixture(scope="session")
def operator_account(control_plane: ControlPlane, pipeline_crd: str) -> Iterator[Path]:
    """A ServiceAccount with the chart's ClusterRole, and a kubeconfig for it."""
    namespace = control_plane.create_namespace("cdcflow-system")
    suffix = uuid.uuid4().hex[:6]
    role = f"cdcflow-operator-{suffix}"
    control_plane.kubectl("create", "serviceaccount", "cdcflow-operator", "-n", namespace)
    control_plane.apply(
        [rbac.cluster_role(role), rbac.cluster_role_binding(namespace, "cdcflow-operator", role)]
    )
    try:
        yield control_plane.service_account_kubeconfig(namespace, "cdcflow-operator")
    finally:
        control_plane.kubectl("delete", "clusterrolebinding,clusterrole", role, check=False)
        control_plane.delete_namespace(namespace)


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def run_operator(
    control_plane: ControlPlane,
    operator_account: Path,
    k8s_namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[], RunningOperator]]:
    """Start the operator for the test's namespace (a callable: start it when ready)."""
    started: list[RunningOperator] = []

    def start() -> RunningOperator:
        log = tmp_path / "operator.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(operator_account),
            "CDCFLOW_OPERATOR_INTERVAL_S": "1",
        }
        command = [sys.executable, "-m", "cdcflow_operator", "run", "-n", k8s_namespace]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        running = RunningOperator(process, log)
        started.append(running)
        return running

    yield start
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    if failed:  # before the Pipelines (and so their pods) are deleted
        sys.stderr.write(f"\n--- cluster ---\n{control_plane.snapshot(k8s_namespace)}\n")
    try:
        if started:
            _delete_pipelines(control_plane, k8s_namespace)
    finally:  # the operators stop even when their Pipelines could not be deleted
        for running in started:
            running.stop()
            if failed:
                sys.stderr.write(f"\n--- operator log ---\n{running.tail(120)}\n")


def _delete_pipelines(plane: ControlPlane, namespace: str) -> None:
    """Delete the test's Pipelines while the operator still runs: kopf puts a finalizer
    on every object with a timer, which only a running operator removes."""
    api = plane.custom_objects()
    api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    wait_for(
        f"the Pipelines in {namespace} to be deleted",
        lambda: not api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
        timeout=120,
    )


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[Any]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


class Pipelines:
    """The Pipelines API of one namespace, as the admin."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.api = plane.custom_objects()

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Pipeline",
            "metadata": {"name": name},
            "spec": spec,
        }
        return dict(
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        )

    def get(self, name: str) -> dict[str, Any]:
        return dict(
            self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        )

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, patch
            )
        )

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        conditions = (self.get(name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 120
    ) -> dict[str, Any]:
        seen: list[dict[str, Any] | None] = [None]

        def probe() -> dict[str, Any] | None:
            found = seen[0] = self.condition(name, type_)
            if (
                found
                and found["status"] == status
                and (reason is None or found["reason"] == reason)
            ):
                return found
            return None

        try:
            return wait_for(f"{name} {type_}={status} {reason or ''}", probe, timeout=timeout)
        except AssertionError as error:
            # Say what the condition did say (its reason and message name what is missing).
            raise AssertionError(f"{error}; the condition was {seen[0]!r}") from None


@pytest.fixture
def pipelines(control_plane: ControlPlane, k8s_namespace: str, pipeline_crd: str) -> Pipelines:
    return Pipelines(control_plane, k8s_namespace)


def secret(plane: ControlPlane, namespace: str, name: str, data: dict[str, str]) -> None:
    plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": data,
        }
    )


def gone(read: Callable[..., Any], *args: Any) -> bool:
    try:
        read(*args)
        return False
    except ApiException as error:
        if error.status == 404:
            return True
        raise


def yaml_of(obj: Any) -> str:
    return yaml.safe_dump(obj)
