"""The API calls the operator's code makes, read from its source, as RBAC triples.

``(apiGroup, resource[/subresource], verb)``. operator/cdcflow_operator/kube.py is the
one module that calls the API (its docstring and the import contracts say so); its
calls are of two shapes, both read here from the syntax tree:

- typed clients: ``self.core.<verb>_namespaced_<kind>(...)`` and ``self.custom.
  <verb>_namespaced_custom_object[_status](...)`` (the Pipeline);
- the dynamic client on every child kind (``CHILD_KINDS``): ``server_side_apply``
  (RBAC ``patch``, and ``create`` when the child does not exist yet: the API server
  authorizes an apply that creates as a create), ``get`` with a label selector (``list``)
  and ``delete``.

kopf's own calls (watching the Pipelines, finalizers, namespaces, CRD scanning) are not
in this code: test_install.py observes them in the API server's audit log.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cdcflow_operator import kube, manifests
from cdcflow_operator.models import GROUP, PLURAL, Pipeline

Call = tuple[str, str, str]
KUBE_SOURCE = Path(kube.__file__)
TYPED_VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
DYNAMIC_VERBS = {"server_side_apply": ("patch", "create"), "get": ("list",), "delete": ("delete",)}


def plural(kind: str) -> str:
    """The resource name of a kind (every kind here follows the regular English rule)."""
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _is_resource_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_resource"
    )


def code_calls_by_method() -> dict[str, set[Call]]:
    """For each method of kube.Cluster, the calls it makes."""
    tree = ast.parse(KUBE_SOURCE.read_text())
    cluster = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == kube.Cluster.__name__
    )
    children = {(_group(v), plural(k)) for v, k in kube.CHILD_KINDS}
    found: dict[str, set[Call]] = {}
    for method in cluster.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        calls: set[Call] = set()
        # Locals bound to a dynamic resource: ``resource = self._resource(...)``.
        dynamic_names = {
            target.id
            for node in ast.walk(method)
            if isinstance(node, ast.Assign) and _is_resource_call(node.value)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(method):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            target, name = node.func.value, node.func.attr
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and target.attr in ("core", "custom")
            ):
                match = re.fullmatch(
                    r"(read|list|create|patch|replace|delete)_namespaced_(\w+)", name
                )
                assert match, f"kube.py calls {target.attr}.{name}: teach tests/chart/rbac_calls.py"
                verb, rest = TYPED_VERBS[match.group(1)], match.group(2)
                if target.attr == "custom":
                    sub = "/status" if rest.endswith("_status") else ""
                    calls.add((GROUP, PLURAL + sub, verb))
                else:
                    calls.add(("", plural(rest.replace("_", "")), verb))
            elif _is_resource_call(target) or (
                isinstance(target, ast.Name) and target.id in dynamic_names
            ):
                assert name in DYNAMIC_VERBS, (
                    f"kube.py calls dynamic .{name}(): teach rbac_calls.py"
                )
                for group, resource in children:
                    calls.update((group, resource, verb) for verb in DYNAMIC_VERBS[name])
        found[method.name] = calls
    return found


def code_calls() -> set[Call]:
    return set().union(*code_calls_by_method().values())


def delegated() -> set[Call]:
    """What the operator grants to its children's Roles: RBAC lets one grant only what
    one holds (no escalation), so the operator must hold these too."""
    from tests.operator_suite.specs import SPECS, body

    grants: set[Call] = set()
    for name, spec in SPECS.items():
        pipeline = Pipeline.from_body(body(name.replace("-", "")[:20], spec))
        for child in manifests.build_all(pipeline, 1):
            if child["kind"] in ("Role", "ClusterRole"):
                grants |= expand(child["rules"])
    return grants


def expand(rules: list[dict[str, object]]) -> set[Call]:
    out: set[Call] = set()
    for rule in rules:
        for group in rule["apiGroups"]:  # type: ignore[attr-defined]
            for resource in rule["resources"]:  # type: ignore[attr-defined]
                for verb in rule["verbs"]:  # type: ignore[attr-defined]
                    out.add((group, resource, verb))
    return out
