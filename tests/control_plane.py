"""A real Kubernetes control plane for tests: the ``control_plane`` fixture (issue 13).

Why real: the operator and the chart depend on what the API server does — structural
schemas, CEL rules, defaulting, RBAC, admission, garbage collection, the Deployment and
StatefulSet controllers. A hand-written fake would only test our assumptions about them.
Nodes are simulated by kwok (no container runs): pods are scheduled, then marked Running
and Ready by kwok's stages.

The cluster is started by ``scripts/cluster/start.sh`` (the same script as ``make
cluster``) from binaries built once per machine by ``scripts/cluster/build.sh`` (``make
cluster-build``; ``make test`` runs it first). It starts lazily, the first time a test
asks for ``control_plane``, once per pytest session, in a temporary state folder, and is
stopped (by PID, ports waited free, folder removed) when the session ends.

Registered as a plugin in ``tests/conftest.py``, so any test under ``tests/`` can use:

- ``control_plane`` (session): a :class:`ControlPlane`;
- ``k8s_namespace`` (function): a fresh namespace, deleted (with the test's volumes)
  afterwards; the deletion finishes in the background.

Every test that uses ``control_plane`` is marked ``cluster`` (``-m "not cluster"``
leaves them out).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "cluster"
VERSIONS_FILE = SCRIPTS / "versions.env"
# Label on the PersistentVolumes provisioned for a namespace: they are cluster-scoped,
# so deleting the namespace alone would leave them behind.
VOLUME_OWNER_LABEL = "cdcflow.test/namespace"
START_TIMEOUT = 300.0
T = TypeVar("T")


def api_message(error: ApiException) -> str:
    """The ``message`` of an API error's Status body (what kubectl would print)."""
    try:
        status = json.loads(error.body or "{}")
    except ValueError:
        return str(error.body)
    return str(status.get("message", "")) if isinstance(status, dict) else str(status)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or used; the message says why."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blanks skipped), as the cluster scripts write them."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def pinned_versions() -> dict[str, str]:
    """The versions pinned in ``scripts/cluster/versions.env`` (the one place they live)."""
    return read_env_file(VERSIONS_FILE)


def binaries_dir() -> Path:
    """Where build.sh puts the binaries for the pinned Kubernetes version."""
    out = subprocess.run(
        [str(SCRIPTS / "build.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float = 120.0,
    interval: float = 0.5,
) -> T:
    """Poll ``probe`` until it returns something truthy and return that.

    Timeouts are generous on purpose: the machine is shared, and a slow controller is
    not a failure. On timeout the error names what was awaited and the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


@dataclass
class ControlPlane:
    """A running local control plane and the tools to use it.

    ``kubeconfig`` is the admin's (``system:masters``); :meth:`service_account_kubeconfig`
    issues one for a ServiceAccount, for running code with exactly a chart's RBAC.
    """

    state_dir: Path
    env: dict[str, str]
    _clients: list[Any] = field(default_factory=list, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return Path(self.env["KUBECONFIG"])

    @property
    def server(self) -> str:
        return self.env["SERVER"]

    @property
    def ca_file(self) -> Path:
        return Path(self.env["CA_FILE"])

    @property
    def bin_dir(self) -> Path:
        return Path(self.env["BIN_DIR"])

    @property
    def volumes_dir(self) -> Path:
        return Path(self.env["VOLUMES_DIR"])

    @property
    def version(self) -> str:
        return self.env["K8S_VERSION"]

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(int(self.env["NODES"]))]

    # -- clients and CLIs ---------------------------------------------------------------

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin (or the given kubeconfig).

        Clients are closed when the session's cluster stops.
        """
        api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )
        self._clients.append(api)
        return api

    # Typed as Any on purpose: the client's generated annotations make every field
    # Optional, which would bury the tests in None checks the server never needs.
    def core_v1(self, kubeconfig: Path | None = None) -> Any:
        """``CoreV1Api`` as the admin (or as the given kubeconfig's user)."""
        return k8s.CoreV1Api(self.api_client(kubeconfig))

    def apps_v1(self, kubeconfig: Path | None = None) -> Any:
        return k8s.AppsV1Api(self.api_client(kubeconfig))

    def custom_objects(self, kubeconfig: Path | None = None) -> Any:
        return k8s.CustomObjectsApi(self.api_client(kubeconfig))

    def apiextensions_v1(self, kubeconfig: Path | None = None) -> Any:
        return k8s.ApiextensionsV1Api(self.api_client(kubeconfig))

    def _run(
        self,
        binary: str,
        args: Sequence[str],
        *,
        kubeconfig: Path | None,
        stdin: str | None,
        check: bool,
        timeout: float,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig), **(extra_env or {})}
        command = [str(self.bin_dir / binary), *args]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"{binary} {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stderr.strip()}\n{result.stdout.strip()}"
            )
        return result

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (admin unless ``kubeconfig``)."""
        return self._run(
            "kubectl", args, kubeconfig=kubeconfig, stdin=stdin, check=check, timeout=timeout
        )

    def helm(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster, with its config and caches kept in
        the state folder (nothing written to the user's ~/.config/helm or ~/.cache/helm).
        """
        helm_home = self.state_dir / "helm"
        return self._run(
            "helm",
            args,
            kubeconfig=kubeconfig,
            stdin=stdin,
            check=check,
            timeout=timeout,
            extra_env={
                "HELM_CONFIG_HOME": str(helm_home / "config"),
                "HELM_CACHE_HOME": str(helm_home / "cache"),
                "HELM_DATA_HOME": str(helm_home / "data"),
            },
        )

    def apply(
        self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None
    ) -> None:
        """``kubectl apply`` one object or several (given as Python dicts)."""
        docs = manifest if isinstance(manifest, list) else [manifest]
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        self.kubectl(*args, stdin=yaml.safe_dump_all(docs))

    # -- identities ---------------------------------------------------------------------

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The token comes from the TokenRequest API (what a pod's projected token is), so
        the holder has exactly the RBAC granted to that ServiceAccount — nothing more.
        """
        core = self.core_v1()
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        token = core.create_namespaced_service_account_token(name, namespace, request).status.token
        user = f"system:serviceaccount:{namespace}:{name}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cdcflow-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(
                            self.ca_file.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": user,
                    "context": {"cluster": "cdcflow-local", "user": user, "namespace": namespace},
                }
            ],
            "current-context": user,
        }
        folder = self.state_dir / "service-accounts"
        folder.mkdir(exist_ok=True)
        path = folder / f"{namespace}.{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- namespaces and volumes ---------------------------------------------------------

    def create_namespace(self, prefix: str = "test") -> str:
        """Create a uniquely named namespace and wait for its ``default`` ServiceAccount
        (pods are refused until the controller manager has made it)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        core = self.core_v1()
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))

        def has_default_sa() -> bool:
            try:
                core.read_namespaced_service_account("default", name)
                return True
            except ApiException as error:
                if error.status == 404:
                    return False
                raise

        wait_for(f"the default ServiceAccount in {name}", has_default_sa, timeout=60)
        return name

    def delete_namespace(self, name: str, *, wait: bool = False, timeout: float = 180.0) -> None:
        """Delete a namespace and the PersistentVolumes provisioned for it.

        Without ``wait`` this returns once the deletion is accepted: the namespace
        controller and kwok finish it in the background (5-20 s a namespace, most of a
        test's time if waited for), and the whole cluster goes at the session's end
        anyway. The volumes carry the pv-protection finalizer, so each goes only once
        its claim has. ``wait=True`` waits until both are gone.
        """
        core = self.core_v1()
        try:
            core.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise
        selector = f"{VOLUME_OWNER_LABEL}={name}"
        core.delete_collection_persistent_volume(label_selector=selector)
        if not wait:
            return

        def namespace_gone() -> bool:
            try:
                core.read_namespace(name)
                return False
            except ApiException as error:
                if error.status == 404:
                    return True
                raise

        wait_for(f"namespace {name} to be deleted", namespace_gone, timeout=timeout)
        wait_for(
            f"the volumes of {name} to be deleted",
            lambda: not core.list_persistent_volume(label_selector=selector).items,
            timeout=timeout,
        )

    def provision_volumes(
        self,
        namespace: str,
        count: int,
        *,
        capacity: str = "1Gi",
        storage_class: str | None = None,
    ) -> str:
        """Create ``count`` hostPath PersistentVolumes for ``namespace``'s claims.

        Nothing provisions volumes in this cluster, so StatefulSet tests get them from
        here. They carry the storage class returned (``local-<namespace>`` unless given;
        no StorageClass object is needed for static binding), so that only this test's
        claims bind them. The folders live under the cluster's state folder; nothing is
        ever written there (no container runs).
        """
        storage_class = storage_class if storage_class is not None else f"local-{namespace}"
        core = self.core_v1()
        for i in range(count):
            name = f"{namespace}-pv-{i}"
            path = self.volumes_dir / namespace / name
            path.mkdir(parents=True, exist_ok=True)
            core.create_persistent_volume(
                k8s.V1PersistentVolume(
                    metadata=k8s.V1ObjectMeta(name=name, labels={VOLUME_OWNER_LABEL: namespace}),
                    spec=k8s.V1PersistentVolumeSpec(
                        capacity={"storage": capacity},
                        access_modes=["ReadWriteOnce"],
                        persistent_volume_reclaim_policy="Retain",
                        storage_class_name=storage_class,
                        host_path=k8s.V1HostPathVolumeSource(
                            path=str(path), type="DirectoryOrCreate"
                        ),
                    ),
                )
            )
        return storage_class

    def log_tail(self, component: str, lines: int = 30) -> str:
        """The end of a component's log (``kube-apiserver``, ``kwok``, ...), for failures."""
        path = self.state_dir / "logs" / f"{component}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def snapshot(self, namespace: str) -> str:
        """Nodes, their Leases and a namespace's pods with their Ready condition, as text
        for a failure report: a workload that is not ready says here whether its pods or
        their node are why (``kubectl get pods`` READY counts containers, not the pod's
        Ready condition, which the node lifecycle controller sets)."""
        ready = '.status.conditions[?(@.type=="Ready")]'
        views = [
            (
                "get",
                "nodes",
                "-o",
                f"custom-columns=NODE:.metadata.name,READY:{ready}.status,"
                f"REASON:{ready}.reason,HEARTBEAT:{ready}.lastHeartbeatTime",
            ),
            (
                "get",
                "leases",
                "-n",
                "kube-node-lease",
                "-o",
                "custom-columns=LEASE:.metadata.name,RENEWED:.spec.renewTime",
            ),
            (
                "get",
                "pods",
                "-n",
                namespace,
                "-o",
                f"custom-columns=POD:.metadata.name,"
                f"NODE:.spec.nodeName,PHASE:.status.phase,READY:{ready}.status,"
                f"REASON:{ready}.reason,SINCE:{ready}.lastTransitionTime",
            ),
        ]
        out = []
        for args in views:
            try:  # a report must not fail the teardown that prints it
                result = self.kubectl(*args, check=False, timeout=30)
                text = (result.stdout or result.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as error:
                text = f"(could not run kubectl: {error})"
            out.append(f"$ kubectl {' '.join(args[:2])}\n{text}")
        return "\n".join(out)

    def close(self) -> None:
        for api in self._clients:
            api.close()
        self._clients.clear()


def start_control_plane(
    state_dir: Path, *, nodes: int = 3, owner_pid: int | None = None
) -> ControlPlane:
    """Start a cluster with ``scripts/cluster/start.sh`` in ``state_dir``, stopped at the
    latest when process ``owner_pid`` (default: this one) ends.

    Raises :class:`ControlPlaneError` with the script's own explanation (the failing
    component and its log tail, or how to build the binaries) when it does not come up.
    """
    result = subprocess.run(
        [
            str(SCRIPTS / "start.sh"),
            *("--state-dir", str(state_dir), "--nodes", str(nodes)),
            # If this process dies without running the fixture's teardown (killed,
            # crashed), the cluster stops anyway.
            *("--stop-with-pid", str(owner_pid or os.getpid())),
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    if result.returncode != 0:
        raise ControlPlaneError(
            f"the local Kubernetes control plane did not start (scripts/cluster/start.sh "
            f"exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return ControlPlane(state_dir=state_dir, env=read_env_file(state_dir / "cluster.env"))


def stop_control_plane(state_dir: Path, *, purge: bool = True) -> None:
    """Stop the cluster in ``state_dir`` by PID and wait until its ports are free."""
    args = [str(SCRIPTS / "stop.sh"), "--state-dir", str(state_dir), "--quiet"]
    subprocess.run(args + (["--purge"] if purge else []), check=True, timeout=120)


# -- pytest plugin --------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (directly or through other fixtures) uses the cluster."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane per session, started on first use, stopped at the end."""
    state_dir = tmp_path_factory.mktemp("control-plane")
    started = time.monotonic()
    try:
        plane = start_control_plane(state_dir)
    except ControlPlaneError as error:
        pytest.fail(str(error), pytrace=False)
    elapsed = time.monotonic() - started
    print(f"\ncontrol plane {plane.version} up in {elapsed:.1f} s at {plane.server}")
    try:
        yield plane
    finally:
        plane.close()
        stop_control_plane(state_dir)


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; its deletion (with its volumes) is started
    afterwards and finishes in the background."""
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    prefix = prefix[:30].strip("-")
    name = control_plane.create_namespace(prefix or "test")
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)
