"""The alert rules and the metrics against a real promtool and a real Prometheus.

Install both with scripts/install-prometheus.sh; these tests skip (with that hint) only
when the binaries are missing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from cdcflow import alerts, metrics
from tests.prometheus_support import (
    ROOT,
    free_port,
    promtool,
    requires_prometheus,
    requires_promtool,
    running_prometheus,
    serving_registry,
)

UNIT_TESTS = sorted((ROOT / "tests" / "prometheus").glob("*.yaml"))


@requires_promtool
def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = promtool("check", "rules", str(alerts.RULE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(group["rules"]) for group in alerts.rule_groups())
    assert f"SUCCESS: {rules} rules found" in result.stdout


@requires_promtool
def test_promtool_unit_tests_pass() -> None:
    assert len(UNIT_TESTS) >= 3
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


@requires_promtool
def test_promtool_unit_tests_fail_when_thresholds_change(tmp_path: Path) -> None:
    """Each alert's firing case depends on its threshold: the unit tests are not vacuous."""
    shifted = alerts.Thresholds(
        down_for="10m",
        capture_lag_seconds=200,
        oplog_window_seconds=72 * 3600,
        queue_depth_floor=5000,
        failed_queue_floor=5,
        stalled_window="15m",
        skipped_for="10m",
        capture_stopped_for="10m",
    )
    rules = tmp_path / "helm" / "cdcflow" / "alerts" / alerts.RULE_FILE.name
    rules.parent.mkdir(parents=True)
    rules.write_text(alerts.to_yaml({"groups": alerts.rule_groups(shifted)}))
    copies = tmp_path / "tests" / "prometheus"
    copies.mkdir(parents=True)
    for path in UNIT_TESTS:
        shutil.copy(path, copies / path.name)
    result = promtool("test", "rules", *map(str, sorted(copies.glob("*.yaml"))))
    assert result.returncode != 0
    report = result.stdout + result.stderr
    for name in alerts.alert_names():
        assert f"alertname: {name}," in report, f"no failing case for {name}"


@requires_prometheus
def test_prometheus_scrapes_the_cdcflow_registry(tmp_path: Path) -> None:
    loaded = 'cdcflow_rows_loaded_total{op="insert"}'
    before = metrics.REGISTRY.get_sample_value("cdcflow_rows_loaded_total", {"op": "insert"})
    metrics.ROWS_LOADED.labels(op="insert").inc(42)
    expected = (before or 0.0) + 42
    with (
        serving_registry(metrics.REGISTRY) as target,
        running_prometheus(tmp_path, [target]) as prometheus,
    ):
        result = prometheus.wait_for_series(loaded)
        assert len(result) == 1
        assert result[0]["metric"]["job"] == "cdcflow"
        assert result[0]["metric"]["instance"] == target
        assert float(result[0]["value"][1]) == expected
        assert prometheus.query(f'up{{instance="{target}"}}')[0]["value"][1] == "1"
        stored = set(prometheus.get("/api/v1/label/__name__/values"))
    # prometheus_client also exports a *_created series per counter and histogram (the
    # creation time); everything else Prometheus stored must be a name cdcflow.metrics knows.
    cdcflow_names = {n for n in stored if n.startswith("cdcflow_") and not n.endswith("_created")}
    assert "cdcflow_rows_loaded_total" in cdcflow_names
    assert cdcflow_names <= metrics.exposed_names()


@requires_prometheus
def test_prometheus_follows_a_counter_between_scrapes(tmp_path: Path) -> None:
    """A private registry, so the values are exact: rate() sees increments across scrapes."""
    registry = CollectorRegistry()
    counter = Counter("cdcflow_test_ticks", "Ticks made by this test.", registry=registry)
    with (
        serving_registry(registry) as target,
        running_prometheus(tmp_path, {"ticks": [target]}) as prometheus,
    ):
        counter.inc(5)
        prometheus.wait_for("5 ticks", lambda: prometheus.query("cdcflow_test_ticks_total == 5"))
        counter.inc(7)
        prometheus.wait_for("12 ticks", lambda: prometheus.query("cdcflow_test_ticks_total == 12"))
        increase = prometheus.wait_for(
            "an increase", lambda: prometheus.query("increase(cdcflow_test_ticks_total[1m]) > 0")
        )
        assert float(increase[0]["value"][1]) > 0


def _rules_evaluated(data: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    if not rules or any(rule["health"] != "ok" for rule in rules):
        return []
    return rules


@requires_prometheus
def test_prometheus_evaluates_the_rules_and_sees_a_dead_consumer(tmp_path: Path) -> None:
    """Load the rule file into Prometheus: every rule evaluates without error, and a
    consumer target that answers nothing puts CdcflowConsumerDown into pending (for: 2m)."""
    dead = f"127.0.0.1:{free_port()}"
    with (
        serving_registry(metrics.REGISTRY) as producer,
        running_prometheus(
            tmp_path,
            {"shop/cdcflow-producer": [producer], "shop/cdcflow-consumer": [dead]},
            rule_files=[alerts.RULE_FILE],
        ) as prometheus,
    ):
        rules = prometheus.wait_for(
            "healthy rule evaluations",
            lambda: _rules_evaluated(prometheus.get("/api/v1/rules")),
        )
        assert {rule["name"] for rule in rules} == set(alerts.alert_names())
        assert len(rules) == sum(len(group["rules"]) for group in alerts.rule_groups())
        # Before the first scrape no consumer series exists, so the absent() branch may be
        # pending first (without an instance label); wait for the dead target's own alert.
        pending = prometheus.wait_for(
            "CdcflowConsumerDown pending for the dead target",
            lambda: [
                alert
                for alert in prometheus.get("/api/v1/alerts")["alerts"]
                if alert["labels"]["alertname"] == "CdcflowConsumerDown"
                and alert["labels"].get("instance") == dead
            ],
        )
        time.sleep(2)  # a few more evaluations: the producer, which is up, stays quiet
        active = prometheus.get("/api/v1/alerts")["alerts"]
    assert len(pending) == 1
    assert pending[0]["state"] == "pending"
    assert pending[0]["labels"]["job"] == "shop/cdcflow-consumer"
    assert pending[0]["labels"]["severity"] == "critical"
    assert pending[0]["annotations"]["runbook_url"] == "docs/operations.md#cdcflowconsumerdown"
    assert not [a for a in active if a["labels"]["alertname"] == "CdcflowProducerDown"]
