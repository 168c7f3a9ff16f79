"""Packaging: the operator runs on the light core; every worker says which build it is."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path

from cdcflow import metrics
from cdcflow.health import Health, serve

ROOT = Path(__file__).resolve().parents[2]
METRIC_WORD = re.compile(r"\bcdcflow_[a-z0-9_]+")
HEAVY = {"apache-beam", "chdb", "nx-27017", "matplotlib", "numpy", "pyarrow", "clickhouse-connect"}
HEAVY_MODULES = sorted(
    {"apache_beam", "chdb", "nx_27017", "matplotlib", "numpy", "pyarrow", "clickhouse_connect"}
)

# Run in a fresh interpreter with the data-plane extras made unimportable, the way
# they are missing from the operator's image.
AUDIT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the light core)")
            return None

    sys.meta_path.insert(0, Missing())
    for name in sys.argv[2].split(","):
        importlib.import_module(name)
    import cdcflow_operator
    for info in pkgutil.walk_packages(cdcflow_operator.__path__, "cdcflow_operator."):
        importlib.import_module(info.name)
    print("imported")
    """
)


def _audit(*modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", AUDIT, ",".join(HEAVY_MODULES), ",".join(modules)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _name(requirement: str) -> str:
    for mark in "=<>!~[; ":
        requirement = requirement.split(mark, 1)[0]
    return requirement.strip().lower()


def test_the_core_dependencies_leave_out_the_data_plane_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(item) for item in project["dependencies"]}
    assert not core & HEAVY, f"heavy packages in the light core: {core & HEAVY}"
    workers = {_name(item) for item in project["optional-dependencies"]["workers"]}
    assert workers >= {"apache-beam", "chdb", "nx-27017", "matplotlib"}


def test_the_operator_and_the_shared_contract_import_without_the_extras() -> None:
    result = _audit("cdcflow.config", "cdcflow.naming", "cdcflow.urls", "cdcflow.metrics")
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-3000:]


def test_the_audit_would_catch_a_heavy_import() -> None:
    """The same audit fails for a module that needs Beam: it is not vacuous."""
    result = _audit("cdcflow.consumer.pipeline")
    assert result.returncode != 0
    assert "not in the light core" in result.stderr


def test_a_worker_records_its_version_and_role_at_start() -> None:
    assert serve(Health("producer"), "127.0.0.1", 0) is None  # port 0: no server, still recorded
    labels = {"version": version("cdcflow"), "role": "producer"}
    sample = next(
        s
        for family in metrics.REGISTRY.collect()
        if family.name == "cdcflow_build"
        for s in family.samples
    )
    assert sample.name == "cdcflow_build_info" and sample.value == 1.0
    assert {key: sample.labels[key] for key in labels} == labels
    assert sample.labels["python"].startswith("3.11")


def _docstrings(tree: ast.AST) -> set[int]:
    """The string statements of a module (docstrings, attribute docs): prose, not names."""
    return {
        id(statement.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        for statement in node.body
        if isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    }


def _raw_metric_names(source: str, exposed: set[str]) -> list[tuple[int, str]]:
    """Exposed metric names inside string literals (f-string parts too), docs aside."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    return [
        (node.lineno, name)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
        for name in METRIC_WORD.findall(node.value)
        if name in exposed
    ]


def test_the_raw_metric_name_check_finds_names_inside_longer_strings() -> None:
    exposed = {"cdcflow_rows_fixed_total"}
    source = (
        '"""Docs may say cdcflow_rows_fixed_total."""\n'
        'x = "counted in `cdcflow_rows_fixed_total{rule}`"\n'
        'y = f"{x} and cdcflow_rows_fixed_total"\n'
        'z = "cdcflow_rows_fixed_totals_other"\n'
    )
    assert _raw_metric_names(source, exposed) == [
        (2, "cdcflow_rows_fixed_total"),
        (3, "cdcflow_rows_fixed_total"),
    ]


def test_metric_names_are_written_only_in_the_metrics_module() -> None:
    """Status, demo, bench, generated docs and the consumer name metrics through
    metrics.sample_name: no string literal outside metrics.py holds one, even inside
    longer text (docstrings and comments aside)."""
    exposed = metrics.exposed_names() | {info.name for info in metrics.catalog()}
    offenders = []
    for root in (ROOT / "workers" / "cdcflow", ROOT / "bench", ROOT / "operator"):
        for path in root.rglob("*.py"):
            if path.name == "metrics.py" and path.parent.name == "cdcflow":
                continue
            for line, name in _raw_metric_names(path.read_text(), exposed):
                offenders.append(f"{path.relative_to(ROOT)}:{line} {name}")
    assert not offenders, "raw metric names: " + ", ".join(offenders)


OPERATOR_MAY_IMPORT = frozenset(
    {"cdcflow.config", "cdcflow.metrics", "cdcflow.naming", "cdcflow.urls"}
)
"""The shared contract modules: settings sections (and the URL type their fields use),
the naming contract, metric names. Anything else of the data plane stays out of the
operator; adding a module here is a reviewed decision."""


def test_the_operator_imports_only_the_contract_modules_of_cdcflow() -> None:
    """An allowlist (the import-linter contract is a blocklist, which a new data-plane
    module would slip past)."""
    import grimp

    graph = grimp.build_graph("cdcflow_operator", "cdcflow", cache_dir=None)
    imported: dict[str, set[str]] = {}
    for module in graph.find_descendants("cdcflow_operator") | {"cdcflow_operator"}:
        for target in graph.find_modules_directly_imported_by(module):
            if target == "cdcflow" or target.startswith("cdcflow."):
                imported.setdefault(target, set()).add(module)
    assert imported, "the operator reads the settings sections: the graph must show it"
    extra = {
        target: sorted(by) for target, by in imported.items() if target not in OPERATOR_MAY_IMPORT
    }
    assert not extra, f"the operator imports data-plane modules outside the contract: {extra}"
