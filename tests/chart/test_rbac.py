"""The chart's RBAC against the operator's code, without a cluster: every call in
kube.py (and every permission the operator hands to a child's Role) is granted, and the
call reader itself sees every method. test_install.py adds the requests kopf makes and
shows, from the audit log, that nothing granted goes unused.
"""

from __future__ import annotations

import ast

from cdcflow_operator import kube, rbac
from tests.chart.rbac_calls import KUBE_SOURCE, code_calls, code_calls_by_method, delegated, expand


def test_every_call_in_kube_py_is_granted() -> None:
    missing = (code_calls() | delegated()) - expand(rbac.RULES)
    assert not missing, (
        f"add to operator/cdcflow_operator/rbac.py, then `make crds`: {sorted(missing)}"
    )


def test_the_call_reader_sees_every_api_method() -> None:
    """Each public method of kube.Cluster makes at least one call the reader found, and
    the dynamic ones cover every child kind (a new call shape fails here, not silently)."""
    by_method = code_calls_by_method()
    tree = ast.parse(KUBE_SOURCE.read_text())
    cluster = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Cluster")
    public = [
        m.name
        for m in cluster.body
        if isinstance(m, ast.FunctionDef)
        and not m.name.startswith("_")
        and not any(isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list)
    ]
    assert public and all(by_method[name] for name in public), {n: by_method[n] for n in public}
    for method, verbs in (
        ("apply", {"patch", "create"}),
        ("list_children", {"list"}),
        ("delete", {"delete"}),
    ):
        seen = {(group, resource) for group, resource, verb in by_method[method] if verb in verbs}
        assert len(seen) == len(kube.CHILD_KINDS), (method, seen)


def test_secrets_are_never_listed_or_watched() -> None:
    """The operator reads the Secrets a Pipeline names, one by one; it cannot enumerate them."""
    secret_verbs = {
        verb for group, resource, verb in expand(rbac.RULES) if (group, resource) == ("", "secrets")
    }
    assert secret_verbs == {verb for group, resource, verb in code_calls() if resource == "secrets"}
    assert not secret_verbs & {"list", "watch", "update", "patch", "delete"}


def test_no_wildcards_and_no_cluster_scoped_writes() -> None:
    granted = expand(rbac.RULES)
    assert not any("*" in part for call in granted for part in call)
    cluster_scoped = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
    assert {verb for g, r, verb in granted if (g, r) in cluster_scoped} == {"list", "watch"}
