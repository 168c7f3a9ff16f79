"""Grafana dashboards: committed JSON equals the generator, panels are well formed, use the
datasource variable, and read only metrics that cdcflow.metrics defines; every metric is
on a dashboard unless the reviewed allow-list below says why not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cdcflow import alerts, metrics
from cdcflow_build import dashboards

METRIC_NAME = re.compile(r"\b(cdcflow_[a-z0-9_]+|up)\b")

# Metrics defined in cdcflow.metrics but shown on no dashboard, each with the reason it was
# left off. Adding a metric to cdcflow.metrics fails test_unused_metrics_are_the_reviewed_allow_list
# until it is put on a dashboard or listed here.
UNUSED_ALLOWED: dict[str, str] = {}


def _committed() -> dict[str, dict[str, Any]]:
    files = sorted(dashboards.DASHBOARDS_DIR.glob("*.json"))
    return {path.name: json.loads(path.read_text()) for path in files}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def _exprs(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in _panels(board) for target in panel["targets"]]


def _family(sample: str) -> str:
    families = [info.name for info in metrics.catalog()]
    return max((f for f in families if sample == f or sample.startswith(f + "_")), key=len)


def test_committed_dashboards_match_the_generator() -> None:
    rendered = dashboards.render_all()
    assert sorted(p.name for p in rendered) == sorted(_committed())
    for path, text in rendered.items():
        assert path.read_text() == text, (
            f"{path} is stale: run python -m cdcflow_build.dashboards --write"
        )


def test_write_all_regenerates_into_a_directory(tmp_path: Path) -> None:
    written = dashboards.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(_committed())
    for path in written:
        assert path.read_text() == (dashboards.DASHBOARDS_DIR / path.name).read_text()
    assert dashboards.write_all(tmp_path) == []


def test_one_overview_and_one_dashboard_per_component() -> None:
    boards = _committed()
    assert sorted(board["uid"] for board in boards.values()) == [
        "cdcflow-consumer",
        "cdcflow-overview",
        "cdcflow-producer",
    ]
    for name, board in boards.items():
        assert name == f"{board['uid']}.json"
        assert "id" not in board, "a numeric id breaks provisioning into another Grafana"
        assert dashboards.TAG in board["tags"]
        assert board["schemaVersion"] >= 39


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    for name, board in _committed().items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']}"
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area
        for panel in _panels(board):
            assert panel["title"] and panel["description"], f"{name}: panel {panel['id']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"


def test_every_query_uses_the_datasource_variable() -> None:
    for name, board in _committed().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in _panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']}"
        uids = re.findall(r'"uid": "([^"]*)"', json.dumps(board))
        assert set(uids) == {board["uid"], "${datasource}"}, f"{name}: a fixed datasource uid"


def test_every_metric_on_a_dashboard_exists() -> None:
    known = metrics.exposed_names() | alerts.BUILTIN_SERIES
    for name, board in _committed().items():
        for expr in _exprs(board):
            used = set(METRIC_NAME.findall(expr))
            assert used, f"{name}: {expr} reads no metric"
            assert used <= known, f"{name}: unknown metric {used - known} in {expr}"


def test_unused_metrics_are_the_reviewed_allow_list() -> None:
    used = {
        _family(sample)
        for board in _committed().values()
        for expr in _exprs(board)
        for sample in METRIC_NAME.findall(expr)
        if sample != "up"
    }
    unused = {info.name for info in metrics.catalog()} - used
    assert unused == set(UNUSED_ALLOWED), (
        "put these metrics on a dashboard or add them, with a reason, to UNUSED_ALLOWED: "
        f"{sorted(unused - set(UNUSED_ALLOWED))}; no longer unused: "
        f"{sorted(set(UNUSED_ALLOWED) - unused)}"
    )


SCOPE = '{namespace=~"$namespace", pipeline=~"$pipeline"'


def test_overview_shows_the_whole_pipeline() -> None:
    overview = _committed()["cdcflow-overview.json"]
    exprs = "\n".join(_exprs(overview))
    for stage in ("events_captured", "events_published", "messages_consumed", "rows_loaded"):
        assert f"rate(cdcflow_{stage}_total{SCOPE}}}[$__rate_interval])" in exprs
    assert (
        "sum by (reason, namespace, pipeline) (rate(cdcflow_messages_dead_lettered_total" in exprs
    )
    assert "cdcflow_capture_lag_seconds" in exprs
    for q in ("0.5", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, namespace, pipeline) "
            "(rate(cdcflow_freshness_seconds_bucket" in exprs
        )
    assert f'cdcflow_queue_depth_messages{SCOPE}, queue="main"}}' in exprs
    assert f'cdcflow_queue_depth_messages{SCOPE}, queue="failed"}}' in exprs
    assert "sum by (job, service, namespace, pipeline) (rate(cdcflow_reconnects_total" in exprs


def test_panel_thresholds_follow_the_alert_thresholds() -> None:
    overview = _committed()["cdcflow-overview.json"]
    lag = next(p for p in _panels(overview) if p["title"] == "Capture lag" and p["type"] == "stat")
    steps = lag["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "red", "value": alerts.DEFAULT_THRESHOLDS.capture_lag_seconds}


def test_descriptions_quote_the_metric_help_text() -> None:
    producer = _committed()["cdcflow-producer.json"]
    saves = next(p for p in _panels(producer) if p["title"] == "Resume token saves")
    help_text = next(i.help for i in metrics.catalog() if i.name == "cdcflow_resume_token_saves")
    assert f"cdcflow_resume_token_saves_total: {help_text}" in saves["description"]


def test_sidecar_labels_follow_the_grafana_convention() -> None:
    assert dashboards.SIDECAR_LABELS == {"grafana_dashboard": "1"}


def test_every_cdcflow_series_is_scoped_to_the_chosen_namespace_and_pipeline() -> None:
    """Two pipelines, even in one namespace, never add up in a panel."""
    for name, board in _committed().items():
        variables = {item["name"]: item for item in board["templating"]["list"]}
        for label in ("namespace", "pipeline"):
            assert variables[label]["query"] == f"label_values(cdcflow_build_info, {label})"
            assert variables[label]["includeAll"] and variables[label]["allValue"] == ".*"
        for expr in _exprs(board):
            for match in re.finditer(r"cdcflow_[a-z0-9_]+", expr):
                rest = expr[match.end() :]
                assert rest.startswith(SCOPE), f"{name}: {match.group()} unscoped in {expr}"


AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile)\s*"
    r"(?:(by|without)\s*\(([^)]*)\))?\s*\("
)


def _merged(expr: str) -> list[str]:
    """The aggregations in ``expr`` that would add pipelines up (no ``by (namespace,
    pipeline)``)."""
    merged = []
    for match in AGGREGATION.finditer(expr):
        how, labels = match.group(2), {label.strip() for label in (match.group(3) or "").split(",")}
        if how != "by" or not {"namespace", "pipeline"} <= labels:
            merged.append(match.group(0))
    return merged


def test_the_aggregation_check_catches_a_merging_query() -> None:
    assert _merged("sum(rate(cdcflow_x_total[5m]))") == ["sum("]
    assert _merged("max by (queue) (cdcflow_y)") == ["max by (queue) ("]
    assert _merged("sum without (pipeline) (cdcflow_y)")
    assert not _merged("sum by (reason, namespace, pipeline) (rate(cdcflow_x_total[5m]))")


def test_every_aggregated_panel_keeps_pipelines_apart_and_names_them() -> None:
    """Choosing "All" shows one line per pipeline, with a legend saying which, never their
    sum. Heatmaps alone bucket by ``le`` (Grafana reads each series as one bucket row)."""
    for name, board in _committed().items():
        for panel in _panels(board):
            for target in panel["targets"]:
                expr = target["expr"]
                if panel["type"] == "heatmap":
                    assert target["legendFormat"] == "{{le}}", f"{name}: {panel['title']}"
                    continue
                merged = _merged(expr)
                assert not merged, f"{name}: {panel['title']}: {merged} merges pipelines in {expr}"
                if AGGREGATION.search(expr):
                    legend = target.get("legendFormat", "")
                    assert "{{namespace}}" in legend and "{{pipeline}}" in legend, (
                        f"{name}: {panel['title']}: legend {legend!r} does not name the pipeline"
                    )
