"""The built binaries are the pinned versions, the fake nodes are what tests expect,
and helm installs a chart into the cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import yaml

from tests.control_plane import SCRIPTS, ControlPlane, pinned_versions, wait_for

# kube-controller-manager's --node-monitor-grace-period (its default, which start.sh keeps):
# a node whose heartbeat is older than this is marked Unknown, and its pods NotReady.
NODE_MONITOR_GRACE_S = 50


def test_binaries_report_the_pinned_versions(control_plane: ControlPlane) -> None:
    pins = pinned_versions()
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == pins["K8S_VERSION"]
    assert version["serverVersion"]["gitVersion"] == pins["K8S_VERSION"]
    helm = control_plane.helm("version", "--template", "{{.Version}}").stdout.strip()
    assert helm == pins["HELM_VERSION"]
    etcd = subprocess.run(
        [str(control_plane.bin_dir / "etcd"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"etcd Version: {pins['ETCD_VERSION'].removeprefix('v')}" in etcd


def test_kwok_nodes_are_ready_with_room_for_pods(control_plane: ControlPlane) -> None:
    core = control_plane.core_v1()
    nodes = core.list_node(label_selector="type=kwok").items
    assert sorted(n.metadata.name for n in nodes) == control_plane.node_names
    for node in nodes:
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        assert int(node.status.allocatable["pods"]) >= 100
        assert node.status.addresses[0].address == "127.0.0.1"


def test_kwok_renews_a_lease_per_node_well_within_the_grace_period(
    control_plane: ControlPlane,
) -> None:
    """Nodes stay Ready through a long session by their Leases. Without them kwok posts
    node status about every 55 s, past the grace period: now and then the controller
    manager marks a node Unknown and its pods NotReady, and they stay so for good
    (kwok readies only Pending pods), so an operator waiting for Ready never gets it."""
    leases: Any = k8s.CoordinationV1Api(control_plane.api_client())

    def node_leases() -> dict[str, Any]:
        items: list[Any] = leases.list_namespaced_lease("kube-node-lease").items
        return {lease.metadata.name: lease for lease in items}

    def every_node_has_one() -> dict[str, Any] | None:
        found = node_leases()
        return found if set(found) >= set(control_plane.node_names) else None

    first = wait_for("a Lease for every kwok node", every_node_has_one, timeout=60)
    for name in control_plane.node_names:
        lease = first[name]
        assert lease.spec.lease_duration_seconds < NODE_MONITOR_GRACE_S
        assert lease.spec.holder_identity, name
        assert [ref.name for ref in lease.metadata.owner_references] == [name]
    # Renewed: every lease's renewTime moves within half the grace period.
    wait_for(
        "every node Lease to be renewed",
        lambda: all(
            node_leases()[name].spec.renew_time > first[name].spec.renew_time
            for name in control_plane.node_names
        ),
        timeout=NODE_MONITOR_GRACE_S / 2,
        interval=1.0,
    )


def test_helm_installs_and_uninstalls_a_chart(
    control_plane: ControlPlane, k8s_namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v2", "name": "probe", "version": "0.1.0"})
    )
    (chart / "values.yaml").write_text(yaml.safe_dump({"greeting": "hello"}))
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    control_plane.helm("lint", "--strict", str(chart))
    control_plane.helm(
        "install",
        "probe",
        str(chart),
        "-n",
        k8s_namespace,
        "--set",
        "greeting=hi",
        "--wait",
        "--timeout",
        "2m",
    )
    core = control_plane.core_v1()
    assert core.read_namespaced_config_map("probe-settings", k8s_namespace).data == {
        "greeting": "hi"
    }
    releases = json.loads(control_plane.helm("list", "-n", k8s_namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("probe", "deployed")]

    control_plane.helm("uninstall", "probe", "-n", k8s_namespace, "--wait")
    assert not core.list_namespaced_config_map(
        k8s_namespace, field_selector="metadata.name=probe-settings"
    ).items


def test_sa_kubeconfig_script_authenticates_as_the_service_account(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    control_plane.kubectl("create", "serviceaccount", "operator", "-n", k8s_namespace)
    out = subprocess.run(
        [
            str(SCRIPTS / "sa-kubeconfig.sh"),
            "--state-dir",
            str(control_plane.state_dir),
            k8s_namespace,
            "operator",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    kubeconfig = Path(out.stdout.strip())
    whoami = control_plane.kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=kubeconfig
    ).stdout
    assert whoami == f"system:serviceaccount:{k8s_namespace}:operator"
    # No Role is bound to it: not even reading pods in its own namespace.
    denied = control_plane.kubectl("get", "pods", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
