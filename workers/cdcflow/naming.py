"""The naming contract both planes share: queues, tables, labels, ports, health paths.

The data plane derives its queue and table names here; the operator derives the
names of a Pipeline's children, their labels and their probes here. A name that
both sides must agree on is written once, in this module, and nowhere else.
Pure: no client library, no I/O (checked by import-linter).
"""

from __future__ import annotations

from typing import Final

# --- broker and warehouse names ------------------------------------------------------

FAILED_QUEUE_SUFFIX: Final = ".failed"


def queue_name(collection: str, override: str | None = None) -> str:
    """The main queue: named after the source collection unless set."""
    return override or collection


def failed_queue_name(queue: str) -> str:
    """Where poison messages of ``queue`` go, with their reason."""
    return f"{queue}{FAILED_QUEUE_SUFFIX}"


def routing_key(collection: str) -> str:
    """The exchange binds the main queue with the collection's name as key."""
    return collection


def table_name(collection: str, override: str | None = None) -> str:
    """The warehouse table: named after the source collection unless set."""
    return override or collection


# --- worker endpoints ----------------------------------------------------------------

METRICS_PORT: Final = 9464
"""Where every worker serves /metrics, /healthz and /readyz in a pod."""
LOCAL_CONSUMER_METRICS_PORT: Final = METRICS_PORT + 1
"""The consumer's port when both workers run on one machine (the demo, ``cdcflow
consume``, ``cdcflow status``): they cannot share one."""
METRICS_PATH: Final = "/metrics"
LIVENESS_PATH: Final = "/healthz"
READINESS_PATH: Final = "/readyz"

# --- Kubernetes ------------------------------------------------------------------------

GROUP: Final = "cdcflow.io"
PIPELINE_LABEL: Final = f"{GROUP}/pipeline"
"""Label on every child of a Pipeline (and so on its pods)."""
PIPELINE_METRIC_LABEL: Final = "pipeline"
"""The series label scrape configs copy ``cdcflow.io/pipeline`` into: alert rules and
dashboards group by it (with ``namespace``), so pipelines never merge."""
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
PRODUCT: Final = "cdcflow"
OPERATOR: Final = "cdcflow-operator"
OPERATOR_COMPONENT: Final = "operator"
OPERATOR_POD_LABELS: Final = {PART_OF_LABEL: PRODUCT, COMPONENT_LABEL: OPERATOR_COMPONENT}
"""Labels the chart's operator pod carries (helm/cdcflow/templates/_helpers.tpl) and the
NetworkPolicies admit the operator by. Neither the release name nor ``nameOverride``
changes them, and no Pipeline child has component ``operator``; tests/chart checks the
rendered pod carries them."""

PRODUCER: Final = "producer"
CONSUMER: Final = "consumer"
BROKER: Final = "rabbitmq"
WAREHOUSE: Final = "clickhouse"
SCHEMA_JOB: Final = "schema"
COMPONENTS: Final = (PRODUCER, CONSUMER, BROKER, WAREHOUSE, SCHEMA_JOB)


def child_name(pipeline: str, component: str) -> str:
    """``<pipeline>-<component>``: the name of a Pipeline's child object."""
    return f"{pipeline}-{component}"


def labels(pipeline: str, component: str) -> dict[str, str]:
    """The labels every child of ``pipeline`` carries (selector labels first)."""
    return {
        **selector(pipeline, component),
        NAME_LABEL: PRODUCT,
        PART_OF_LABEL: PRODUCT,
        MANAGED_BY_LABEL: OPERATOR,
    }


def selector(pipeline: str, component: str) -> dict[str, str]:
    """The labels that select one component's pods: stable for a Pipeline's life."""
    return {PIPELINE_LABEL: pipeline, INSTANCE_LABEL: pipeline, COMPONENT_LABEL: component}
