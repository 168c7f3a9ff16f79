"""Reading the workers' /metrics from their pods: only Running pods that answer count,
and the consumers' changes per message is their mean over every consumed message."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cdcflow import metrics, naming
from cdcflow_operator import observation
from cdcflow_operator.models import Pipeline
from cdcflow_operator.scaling import DepthReading
from tests.operator_suite.specs import SPECS, body

SUM = metrics.sample_name(metrics.CHANGES_PER_MESSAGE, "_sum")
COUNT = metrics.sample_name(metrics.CHANGES_PER_MESSAGE, "_count")
LAG = metrics.sample_name(metrics.CAPTURE_LAG_SECONDS)


class Pods:
    """The one Cluster call the observers make, over a fixed list of pods."""

    def __init__(self, pods: dict[str, list[tuple[str | None, str]]]) -> None:
        self.by_component = pods
        self.selectors: list[dict[str, str]] = []

    def pods(self, namespace: str, selector: dict[str, str]) -> list[Any]:
        self.selectors.append(selector)
        component = selector[naming.COMPONENT_LABEL]
        return [
            SimpleNamespace(status=SimpleNamespace(pod_ip=ip, phase=phase))
            for ip, phase in self.by_component.get(component, [])
        ]


def reader(answers: dict[str, dict[str, float]]) -> observation.MetricsReader:
    def read(url: str) -> dict[str, float]:
        host = url.split("//", 1)[1].split(":", 1)[0]
        if host not in answers:
            raise OSError("connection refused")
        return answers[host]

    return read


def pipeline() -> Pipeline:
    return Pipeline.from_body(body("p", SPECS["defaults"]))


def test_changes_per_message_is_the_mean_over_answering_running_consumers() -> None:
    pods = Pods(
        {
            naming.CONSUMER: [
                ("10.0.0.1", "Running"),
                ("10.0.0.2", "Running"),
                ("10.0.0.3", "Running"),  # does not answer
                ("10.0.0.4", "Pending"),  # answers, but is not running
                (None, "Running"),
            ]
        }
    )
    answers = {
        "10.0.0.1": {SUM: 1000.0, COUNT: 10.0},
        "10.0.0.2": {SUM: 500.0, COUNT: 40.0},
        "10.0.0.4": {SUM: 1.0, COUNT: 1.0},
    }
    seen = observation.Observed(reading=DepthReading(ready=5, unacked=0, source="test"))
    observation._observe_changes_per_message(pipeline(), pods, seen, reader(answers))  # type: ignore[arg-type]
    assert seen.reading is not None and seen.reading.changes_per_message == 1500 / 50
    assert all(s[naming.COMPONENT_LABEL] == naming.CONSUMER for s in pods.selectors)


def test_unknown_when_no_consumer_answers_and_lag_from_the_producer() -> None:
    pods = Pods(
        {
            naming.CONSUMER: [("10.0.0.3", "Running")],
            naming.PRODUCER: [("10.0.0.8", "Running"), ("10.0.0.9", "Running")],
        }
    )
    seen = observation.Observed(reading=DepthReading(ready=5, unacked=0, source="test"))
    read = reader({"10.0.0.9": {LAG: 2.5}})
    observation._observe_changes_per_message(pipeline(), pods, seen, read)  # type: ignore[arg-type]
    assert seen.reading is not None and seen.reading.changes_per_message is None
    observation._observe_producer(pipeline(), pods, seen, read)  # type: ignore[arg-type]
    assert seen.capture_lag_seconds == 2.5  # the second pod answered where the first did not
