"""Alert rules: committed files equal the generator, every rule is complete and documented,
names come from cdcflow.metrics, and every alert has promtool cases that fire and stay silent.

promtool itself runs in tests/integration/test_promtool.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdcflow import alerts, metrics

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = sorted((ROOT / "tests" / "prometheus").glob("*.yaml"))
METRIC_NAME = re.compile(r"\b(cdcflow_[a-z0-9_]+|up)\b")


def _rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def _github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_committed_rule_files_match_the_generator() -> None:
    for path, text in alerts.rendered().items():
        assert path.exists(), f"{path} missing: run python -m cdcflow.alerts --write"
        assert path.read_text() == text, f"{path} is stale: run python -m cdcflow.alerts --write"


def test_prometheus_rule_resource_carries_the_same_groups() -> None:
    resource = yaml.safe_load(alerts.RULE_CRD_FILE.read_text())
    plain = yaml.safe_load(alerts.RULE_FILE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "cdcflow"
    assert resource["spec"]["groups"] == plain["groups"] == alerts.rule_groups()


def test_the_required_alerts_exist() -> None:
    assert alerts.alert_names() == [
        "CdcflowCaptureLagHigh",
        "CdcflowCaptureStopped",
        "CdcflowConsumerDown",
        "CdcflowEventsSkippedOrFailed",
        "CdcflowFailedQueueNotEmpty",
        "CdcflowLoadStalled",
        "CdcflowProducerDown",
        "CdcflowQueueDepthGrowing",
        "CdcflowResumeTokenAgeHigh",
    ]


def test_every_rule_has_summary_description_runbook_and_severity() -> None:
    for rule in _rules(alerts.rule_groups()):
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert all(text.strip() for text in annotations.values()), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["labels"]["component"] in {"producer", "consumer"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_runbook_urls_point_at_headings_in_the_operations_doc() -> None:
    anchors = _github_anchors(alerts.OPERATIONS_DOC.read_text())
    for rule in _rules(alerts.rule_groups()):
        base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert base == "docs/operations.md"
        assert anchor in anchors, f"docs/operations.md has no heading for #{anchor}"


def test_every_metric_in_an_expression_exists() -> None:
    known = metrics.exposed_names() | alerts.BUILTIN_SERIES
    used = set()
    for rule in _rules(alerts.rule_groups()):
        names = set(METRIC_NAME.findall(rule["expr"]))
        assert names, f"{rule['alert']} reads no metric"
        assert names <= known, f"{rule['alert']}: unknown {names - known}"
        used |= names
    assert used >= {"up", "cdcflow_queue_depth_messages", "cdcflow_rows_loaded_total"}


def test_thresholds_are_parameters() -> None:
    custom = alerts.Thresholds(
        capture_lag_seconds=300,
        queue_depth_floor=50_000,
        oplog_window_seconds=24 * 3600,
        consumer_job="my-consumer",
        pipeline_labels=("namespace", "pipeline"),
        runbook_base_url="https://runbooks.example/cdcflow.md",
    )
    rules = {(r["alert"], r["labels"]["severity"]): r for r in _rules(alerts.rule_groups(custom))}
    assert rules["CdcflowCaptureLagHigh", "warning"]["expr"].endswith("> 300")
    assert "> 50000" in rules["CdcflowQueueDepthGrowing", "warning"]["expr"]
    assert rules["CdcflowResumeTokenAgeHigh", "warning"]["expr"].endswith("> 43200")
    assert rules["CdcflowResumeTokenAgeHigh", "critical"]["expr"].endswith("> 64800")
    assert 'up{job=~"my-consumer"}' in rules["CdcflowConsumerDown", "critical"]["expr"]
    assert "by (namespace, pipeline)" in rules["CdcflowLoadStalled", "critical"]["expr"]
    assert rules["CdcflowLoadStalled", "critical"]["annotations"]["runbook_url"] == (
        "https://runbooks.example/cdcflow.md#cdcflowloadstalled"
    )


def test_metric_helper_refuses_names_the_registry_does_not_expose() -> None:
    assert alerts.metric(metrics.ROWS_LOADED) == "cdcflow_rows_loaded_total"
    assert alerts.metric(metrics.CAPTURE_LAG_SECONDS) == "cdcflow_capture_lag_seconds"
    assert alerts.metric(metrics.FRESHNESS_SECONDS, "_bucket") == "cdcflow_freshness_seconds_bucket"
    with pytest.raises(ValueError, match="not exposed"):
        alerts.metric(metrics.ROWS_LOADED, "_bucket")


def test_durations_add_up_in_descriptions() -> None:
    assert alerts._seconds("90s") == 90
    assert alerts._seconds("5m") + alerts._seconds("5m") == 600
    assert alerts._duration(600) == "10m"
    assert alerts._duration(90) == "90s"
    with pytest.raises(ValueError, match="unsupported duration"):
        alerts._seconds("1h30m")


def test_every_alert_has_promtool_cases_that_fire_and_stay_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in PROMTOOL_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../../helm/cdcflow/alerts/cdcflow-rules.prom.yaml"]
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == set(alerts.alert_names()), "alerts without a firing promtool case"
    assert silent == set(alerts.alert_names()), "alerts without a silent promtool case"


def test_metrics_reference_in_the_operations_doc_is_in_sync() -> None:
    document = alerts.OPERATIONS_DOC.read_text()
    assert alerts.with_metrics_reference(document) == document, (
        "docs/operations.md metrics table is stale: run python -m cdcflow.alerts --write"
    )
    for info in metrics.catalog():
        assert f"`{info.name}" in alerts.metrics_reference()


def test_write_all_rewrites_only_what_changed(tmp_path: Path) -> None:
    doc = tmp_path / "operations.md"
    shutil.copy(alerts.OPERATIONS_DOC, doc)
    doc.write_text(alerts.with_metrics_reference(doc.read_text()).replace("| gauge |", "| ? |"))
    written = alerts.write_all(tmp_path / "alerts", doc)
    assert sorted(p.name for p in written) == [
        "cdcflow-rules.prom.yaml",
        "cdcflow-rules.yaml",
        "operations.md",
    ]
    assert doc.read_text() == alerts.OPERATIONS_DOC.read_text()
    assert alerts.write_all(tmp_path / "alerts", doc) == []
