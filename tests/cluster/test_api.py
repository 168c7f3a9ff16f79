"""API-server behaviour the operator relies on, checked against the real thing: CRD
structural schemas with defaults and CEL rules, printer columns, garbage collection of
owned objects, and RBAC for a ServiceAccount's token.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.control_plane import ControlPlane, api_message, wait_for

RULE_MESSAGE = "spec.minReplicas must not exceed spec.maxReplicas"


def _gone(read: Any, *args: str) -> bool:
    try:
        read(*args)
        return False
    except ApiException as error:
        if error.status == 404:
            return True
        raise


@pytest.fixture
def widget_crd(control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    """A CRD in a group of its own (CRDs are cluster-scoped), removed afterwards."""
    group = f"t{uuid.uuid4().hex[:8]}.cdcflow.test"
    name = f"widgets.{group}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                        {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"},
                        {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["maxReplicas"],
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": RULE_MESSAGE,
                                        }
                                    ],
                                    "properties": {
                                        "mode": {
                                            "type": "string",
                                            "enum": ["batch", "stream"],
                                            "default": "stream",
                                        },
                                        "minReplicas": {
                                            "type": "integer",
                                            "minimum": 0,
                                            "default": 1,
                                        },
                                        "maxReplicas": {"type": "integer", "minimum": 1},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    control_plane.apply(crd)
    api = control_plane.apiextensions_v1()

    def established() -> bool:
        conditions = api.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(f"CRD {name} to be Established", established, timeout=60)
    try:
        yield {"group": group, "name": name, "resource": f"widgets.{group}"}
    finally:
        # Not waited for: the group is this test's own, and the cluster goes at the end.
        api.delete_custom_resource_definition(name)


def test_crd_schema_defaults_cel_rule_and_printer_columns(
    control_plane: ControlPlane, k8s_namespace: str, widget_crd: dict[str, str]
) -> None:
    custom = control_plane.custom_objects()
    group = widget_crd["group"]

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }

    # The CEL rule: rejected by the server, with the rule's own message.
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(
            group,
            "v1",
            k8s_namespace,
            "widgets",
            widget("bad", {"minReplicas": 5, "maxReplicas": 2}),
        )
    assert rejected.value.status == 422
    assert RULE_MESSAGE in api_message(rejected.value)
    # The structural schema: an enum violation is refused too.
    with pytest.raises(ApiException) as bad_enum:
        custom.create_namespaced_custom_object(
            group, "v1", k8s_namespace, "widgets", widget("bad2", {"mode": "x", "maxReplicas": 2})
        )
    assert bad_enum.value.status == 422
    assert "spec.mode" in api_message(bad_enum.value)

    # Defaults: filled in by the server for fields the object leaves out.
    created = custom.create_namespaced_custom_object(
        group, "v1", k8s_namespace, "widgets", widget("good", {"maxReplicas": 3})
    )
    assert created["spec"] == {"mode": "stream", "minReplicas": 1, "maxReplicas": 3}
    stored = custom.get_namespaced_custom_object(group, "v1", k8s_namespace, "widgets", "good")
    assert stored["spec"]["mode"] == "stream"

    # The rule holds on updates too: a patch that breaks it is refused, nothing stored.
    with pytest.raises(ApiException) as bad_patch:
        custom.patch_namespaced_custom_object(
            group, "v1", k8s_namespace, "widgets", "good", {"spec": {"minReplicas": 10}}
        )
    assert RULE_MESSAGE in api_message(bad_patch.value)
    after = custom.get_namespaced_custom_object(group, "v1", k8s_namespace, "widgets", "good")
    assert after["spec"]["minReplicas"] == 1

    # Printer columns, as `kubectl get` shows them.
    table = control_plane.kubectl("get", widget_crd["resource"], "-n", k8s_namespace).stdout
    header, *rows = table.strip().splitlines()
    assert header.split() == ["NAME", "MODE", "MIN", "MAX", "AGE"]
    assert [row.split()[:4] for row in rows] == [["good", "stream", "1", "3"]]


def test_owned_object_is_garbage_collected_after_its_owner_is_deleted(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    core = control_plane.core_v1()
    owner = core.create_namespaced_config_map(
        k8s_namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"), data={"a": "1"})
    )
    reference = k8s.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_secret(
        k8s_namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="owned", owner_references=[reference]),
            string_data={"b": "2"},
        ),
    )
    core.create_namespaced_secret(
        k8s_namespace,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="bystander"), string_data={"c": "3"}),
    )

    core.delete_namespaced_config_map("owner", k8s_namespace)
    wait_for(
        "the owned Secret to be garbage-collected",
        lambda: _gone(core.read_namespaced_secret, "owned", k8s_namespace),
    )
    # Only the owned object went: the garbage collector followed the reference.
    assert core.read_namespaced_secret("bystander", k8s_namespace).metadata.name == "bystander"


def test_service_account_kubeconfig_has_exactly_its_roles_rights(
    control_plane: ControlPlane, k8s_namespace: str
) -> None:
    control_plane.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "configmap-reader"},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "configmap-reader",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "reader", "namespace": k8s_namespace}
                ],
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}},
        ],
        namespace=k8s_namespace,
    )
    kubeconfig = control_plane.service_account_kubeconfig(k8s_namespace, "reader")
    core = control_plane.core_v1(kubeconfig)

    whoami = control_plane.kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=kubeconfig
    ).stdout
    assert whoami == f"system:serviceaccount:{k8s_namespace}:reader"

    # Allowed: what the Role grants (the authorizer may take a moment to see the binding).
    def can_list() -> list[str] | None:
        try:
            return [c.metadata.name for c in core.list_namespaced_config_map(k8s_namespace).items]
        except ApiException as error:
            if error.status == 403:
                return None
            raise

    assert "settings" in wait_for("the RoleBinding to take effect", can_list, timeout=60)
    assert core.read_namespaced_config_map("settings", k8s_namespace).metadata.name == "settings"

    # Refused: another verb, another resource, another namespace.
    refused: list[Callable[[], object]] = [
        lambda: core.create_namespaced_config_map(
            k8s_namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="new"))
        ),
        lambda: core.delete_namespaced_config_map("settings", k8s_namespace),
        lambda: core.list_namespaced_secret(k8s_namespace),
        lambda: core.list_namespaced_config_map("default"),
    ]
    for attempt in refused:
        with pytest.raises(ApiException) as denied:
            attempt()
        assert denied.value.status == 403
        assert f"system:serviceaccount:{k8s_namespace}:reader" in api_message(denied.value)

    result = control_plane.kubectl(
        "auth",
        "can-i",
        "create",
        "configmaps",
        "-n",
        k8s_namespace,
        kubeconfig=kubeconfig,
        check=False,
    )
    assert result.stdout.strip() == "no"
