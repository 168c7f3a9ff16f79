"""Grafana dashboards for cdcflow, built as code with Grafana's foundation SDK.

Why code: every query names its metric through the collector object in
:mod:`cdcflow.metrics` (via :func:`cdcflow.alerts.metric`, which refuses a name the
registry does not expose), a panel's description is the HELP text of the metrics it
shows (so the hover text and ``/metrics`` never disagree), panel thresholds reuse the
alert thresholds of :mod:`cdcflow.alerts`, and the committed JSON under
``helm/cdcflow/dashboards/`` is checked against a fresh build by a test;
``python -m cdcflow_build.dashboards --write`` (or :func:`write_all`) regenerates it.

Why the SDK (``grafana-foundation-sdk``, the build for Grafana 11.6): Grafana publishes
it, it is typed (mypy catches a misspelt option) and has no dependencies; it emits the
dashboard JSON model with ``schemaVersion`` 41. Pin it exactly (``==1769699379!11.6.0``):
its versions carry a build-time epoch, so "newest" means the last build, not the newest
Grafana.

Deployment: every panel and query uses the data source ``${datasource}``, a template
variable of type ``datasource`` (query ``prometheus``), so the same JSON works in any
Grafana. The chart puts the files in a ConfigMap labelled :data:`SIDECAR_LABELS`
(``grafana_dashboard: "1"``), which Grafana's dashboard sidecar watches, with
:data:`SIDECAR_ANNOTATIONS` to file them in a "cdcflow" folder. Dashboards carry no
numeric ``id`` (Grafana assigns one) and a fixed ``uid``, so links and re-imports hold.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from prometheus_client.metrics import MetricWrapperBase

from cdcflow import metrics as m
from cdcflow.alerts import DEFAULT_THRESHOLDS as T
from cdcflow.alerts import ROOT, metric, write_changed
from cdcflow.naming import PIPELINE_METRIC_LABEL

DASHBOARDS_DIR = ROOT / "helm" / "cdcflow" / "dashboards"
SIDECAR_LABELS = {"grafana_dashboard": "1"}
SIDECAR_ANNOTATIONS = {"grafana_folder": "cdcflow"}
TAG = "cdcflow"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
JOBS = '{job=~".*cdcflow.*"}'


# --- PromQL: every metric name comes from a cdcflow.metrics collector ---------------------
# Every series is selected by the namespace and pipeline variables, so two pipelines
# (even in one namespace) never add up in a panel. "All" is ".*", which also matches
# series without the label (a Prometheus that does not relabel pods).
SCOPE = f'namespace=~"$namespace", {PIPELINE_METRIC_LABEL}=~"${PIPELINE_METRIC_LABEL}"'


def scoped(name: str, matchers: str = "") -> str:
    """``name{namespace=~..., pipeline=~..., <matchers>}``."""
    inner = f"{SCOPE}, {matchers}" if matchers else SCOPE
    return f"{name}{{{inner}}}"


# And every aggregation keeps namespace and pipeline, with legends naming them: when
# "All" (or several) are chosen, each pipeline is its own line, never a sum of them.
APART = f"namespace, {PIPELINE_METRIC_LABEL}"
WHO = "{{namespace}}/{{" + PIPELINE_METRIC_LABEL + "}}"
"""The legend prefix of an aggregated series: which pipeline it is."""


def _agg(op: str, inner: str, by: str) -> str:
    return f"{op} by ({by}, {APART}) ({inner})" if by else f"{op} by ({APART}) ({inner})"


def rate(collector: MetricWrapperBase, by: str = "") -> str:
    return _agg("sum", f"rate({scoped(metric(collector))}[{RATE}])", by)


def increase(collector: MetricWrapperBase, by: str = "", suffix: str | None = None) -> str:
    return _agg("sum", f"increase({scoped(metric(collector, suffix))}[{RATE}])", by)


def gauge(collector: MetricWrapperBase, by: str = "", matchers: str = "") -> str:
    return _agg("max", scoped(metric(collector), matchers), by)


def since(collector: MetricWrapperBase) -> str:
    return f"time() - {_agg('max', scoped(metric(collector)), '')}"


def quantiles(histogram: MetricWrapperBase, *qs: float) -> list[tuple[str, str]]:
    bucket = scoped(metric(histogram, "_bucket"))
    return [
        (
            f"histogram_quantile({q}, {_agg('sum', f'rate({bucket}[{RATE}])', 'le')})",
            f"p{round(q * 100)}",
        )
        for q in qs
    ]


def buckets(histogram: MetricWrapperBase) -> str:
    """Bucket counts for a heatmap: by ``le`` alone, since Grafana reads each series as one
    bucket row; the namespace and pipeline variables choose what it shows."""
    return f"sum by (le) (increase({scoped(metric(histogram, '_bucket'))}[{RATE}]))"


# --- panel specs --------------------------------------------------------------------------
Target = tuple[str, str]  # (PromQL, legend)
HELP = {info.name: info.help for info in m.catalog()}
_METRIC = re.compile(r"cdcflow_[a-z0-9_]+")


@dataclass(frozen=True)
class Panel:
    """One panel: kind is timeseries, stat, table or heatmap."""

    title: str
    targets: Sequence[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    thresholds: Sequence[float] = field(default_factory=tuple)
    note: str = ""

    @property
    def description(self) -> str:
        """The note, then the HELP text of every cdcflow metric the queries read."""
        names = _METRIC.findall(" ".join(expr for expr, _ in self.targets))
        texts = [self.note] if self.note else []
        for name in dict.fromkeys(names):
            family = max((f for f in HELP if name == f or name.startswith(f + "_")), key=len)
            texts.append(f"{name}: {HELP[family]}")
        return " ".join(dict.fromkeys(texts))


def ops(title: str, *targets: Target, note: str = "") -> Panel:
    """A time series of per-second rates."""
    return Panel(title, targets, "ops", note=note)


def series(title: str, *targets: Target, unit: str = "short", note: str = "") -> Panel:
    return Panel(title, targets, unit, note=note)


def big(title: str, target: Target, unit: str, *thresholds: float) -> Panel:
    """A small stat panel for the top row."""
    return Panel(title, [target], unit, "stat", 4, 4, thresholds)


Row = tuple[str, Sequence[Panel]]


def row(title: str, *panels: Panel) -> Row:
    return title, panels


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: Sequence[Row]


def _label_variable(label: str, title: str) -> db.QueryVariable:
    """A multi-value variable over one label of ``cdcflow_build_info`` (every worker
    sets it at start), "All" meaning any value or none."""
    build_info = metric(m.BUILD_INFO)
    return (
        db.QueryVariable(label)
        .label(title)
        .datasource(DATASOURCE)
        .query(f"label_values({build_info}, {label})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .all_value(".*")
        .multi(True)
    )


def _thresholds(values: Sequence[float]) -> db.ThresholdsConfig:
    steps = [dm.Threshold(value=None, color="green")]
    colors = ("orange", "red") if len(values) > 1 else ("red",)
    steps += [dm.Threshold(value=v, color=c) for v, c in zip(values, colors, strict=True)]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def _query(expr: str, legend: str, ref: str, kind: str) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        query = query.legend_format(legend)
    if kind in ("stat", "table"):
        query = query.instant()
    formats = {"table": pm.PromQueryFormat.TABLE, "heatmap": pm.PromQueryFormat.HEATMAP}
    return query.format(formats[kind]) if kind in formats else query


def _panel(spec: Panel) -> stat.Panel | table.Panel | heatmap.Panel | timeseries.Panel:
    builder: stat.Panel | table.Panel | heatmap.Panel | timeseries.Panel
    if spec.kind == "stat":
        reduce = cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
        builder = stat.Panel().graph_mode(cm.BigValueGraphMode.NONE).reduce_options(reduce)
    elif spec.kind == "table":
        builder = table.Panel()
    elif spec.kind == "heatmap":
        builder = heatmap.Panel().calculate(False).y_axis(heatmap.YAxisConfig().unit(spec.unit))
    else:
        legend = cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
        builder = timeseries.Panel().legend(legend.placement(cm.LegendPlacement.BOTTOM))
    builder = builder.title(spec.title).description(spec.description).datasource(DATASOURCE)
    builder = builder.unit("short" if spec.kind == "heatmap" else spec.unit)
    builder = builder.span(spec.width).height(spec.height)
    if spec.thresholds:
        builder = builder.thresholds(_thresholds(spec.thresholds))
    for index, (expr, label) in enumerate(spec.targets):
        if APART in expr:  # one series per pipeline: the legend says which
            label = f"{WHO} {label}" if label else WHO
        builder = builder.with_target(_query(expr, label, chr(ord("A") + index), spec.kind))
    return builder


def build(board: Board) -> dict[str, Any]:
    """The dashboard JSON model (a plain dict) for one :class:`Board`."""
    links = db.DashboardLink("cdcflow").type(dm.DashboardLinkType.DASHBOARDS).tags([TAG])
    builder = (
        db.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags([TAG])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(_label_variable("namespace", "Namespace"))
        .with_variable(_label_variable(PIPELINE_METRIC_LABEL, "Pipeline"))
        .with_variable(db.AdHocVariable("filters").label("Filters").datasource(DATASOURCE))
        .link(links.as_dropdown(True).include_vars(True).keep_time(True))
    )
    for row_title, panels in board.rows:
        builder = builder.with_row(db.Row(row_title))
        for spec in panels:
            builder = builder.with_panel(_panel(spec))
    model: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number  # the SDK leaves ids unset; Grafana needs them unique
    return model


# --- the dashboards -----------------------------------------------------------------------
CAPTURED = (rate(m.EVENTS_CAPTURED), "captured")
PUBLISHED = (rate(m.EVENTS_PUBLISHED), "published")
CONSUMED = (rate(m.MESSAGES_CONSUMED), "consumed")
LOADED = (rate(m.ROWS_LOADED), "loaded")
DEAD_LETTERED = (rate(m.MESSAGES_DEAD_LETTERED), "dead-lettered")
LAG = (gauge(m.CAPTURE_LAG_SECONDS), "lag")
LAG_LINES = (T.capture_lag_seconds / 2, T.capture_lag_seconds)
MAIN = (gauge(m.QUEUE_DEPTH, matchers='queue="main"'), "main")
FAILED = (gauge(m.QUEUE_DEPTH, matchers='queue="failed"'), "failed")
HISTORY_LOST = (increase(m.HISTORY_LOST), "history lost")
RECONNECTS = ops(
    "Reconnects by service", (rate(m.RECONNECTS, "job, service"), "{{job}} {{service}}")
)
DEAD_LETTERS = ops(
    "Dead letters by reason",
    (rate(m.MESSAGES_DEAD_LETTERED, "reason"), "{{reason}}"),
    note="Inspect them with `cdcflow dlq inspect`.",
)
QUEUES = Panel(
    "Queue depth", [(gauge(m.QUEUE_DEPTH, "queue"), "{{queue}}")], thresholds=(T.queue_depth_floor,)
)
CAPTURE_LAG = Panel(
    "Capture lag", [LAG], "s", thresholds=LAG_LINES, note="Red line: alert CdcflowCaptureLagHigh."
)
FRESHNESS = series(
    "End-to-end freshness", *quantiles(m.FRESHNESS_SECONDS, 0.5, 0.9, 0.99), unit="s"
)

OVERVIEW = Board(
    "cdcflow-overview",
    "cdcflow / Overview",
    "MongoDB change stream to ClickHouse: throughput per stage, lag, freshness, queues, errors.",
    [
        row(
            "Now",
            big("Captured/s", CAPTURED, "ops"),
            big("Loaded/s", LOADED, "ops"),
            big("Capture lag", LAG, "s", *LAG_LINES),
            big("Freshness p99", quantiles(m.FRESHNESS_SECONDS, 0.99)[0], "s"),
            big("Main queue", MAIN, "short", T.queue_depth_floor / 2, T.queue_depth_floor),
            big("Failed queue", FAILED, "short", T.failed_queue_floor + 1),
        ),
        row(
            "Flow",
            Panel(
                "Throughput per stage",
                [CAPTURED, PUBLISHED, CONSUMED, LOADED, DEAD_LETTERED],
                "ops",
                width=24,
                note="Per second, from MongoDB to ClickHouse.",
            ),
            CAPTURE_LAG,
            FRESHNESS,
            QUEUES,
            DEAD_LETTERS,
        ),
        row(
            "Health",
            RECONNECTS,
            series("Errors", (rate(m.WAREHOUSE_RETRIES), "warehouse retries/s"), HISTORY_LOST),
            series("Targets up", (f"up{JOBS}", "{{job}} {{instance}}"), note="Scrape health."),
            Panel("Versions", [(scoped(metric(m.BUILD_INFO)), "")], kind="table"),
        ),
    ],
)

PRODUCER = Board(
    "cdcflow-producer",
    "cdcflow / Producer",
    "Change stream capture, publishing with confirms, resume tokens and snapshots.",
    [
        row(
            "Capture",
            ops("Captured by operation", (rate(m.EVENTS_CAPTURED, "op"), "{{op}}")),
            ops(
                "Source writes (simulator)",
                (rate(m.SIMULATOR_WRITES, "op"), "{{op}}"),
                CAPTURED,
            ),
            CAPTURE_LAG,
            series("Time since last capture", (since(m.LAST_CAPTURE_TIMESTAMP), "idle"), unit="s"),
            ops("Skipped events by reason", (rate(m.EVENTS_SKIPPED, "reason"), "{{reason}}")),
            ops("Failed events by reason", (rate(m.EVENTS_FAILED, "reason"), "{{reason}}")),
            series("Capture stopped", (gauge(m.CAPTURE_STOPPED, "reason"), "{{reason}}")),
        ),
        row(
            "Publish",
            ops("Published", PUBLISHED, CAPTURED),
            series("Confirm latency", *quantiles(m.PUBLISH_CONFIRM_SECONDS, 0.5, 0.99), unit="s"),
            series("Unconfirmed publishes", (gauge(m.PUBLISH_UNCONFIRMED), "in flight")),
            RECONNECTS,
        ),
        row(
            "Resume tokens and snapshots",
            Panel(
                "Resume token age",
                [(gauge(m.RESUME_TOKEN_AGE_SECONDS), "age")],
                "s",
                thresholds=(T.resume_token_warning_seconds, T.resume_token_critical_seconds),
                note="Lines: alert CdcflowResumeTokenAgeHigh (warning, critical).",
            ),
            ops("Resume token saves", (rate(m.RESUME_TOKEN_SAVES), "saves")),
            series(
                "Snapshots",
                (gauge(m.SNAPSHOT_RUNNING), "running"),
                (rate(m.SNAPSHOT_DOCUMENTS), "documents/s"),
                (increase(m.SNAPSHOTS, "reason"), "started: {{reason}}"),
            ),
            series("History lost", HISTORY_LOST, note="Each one forces a snapshot."),
        ),
    ],
)

CONSUMER = Board(
    "cdcflow-consumer",
    "cdcflow / Consumer and warehouse",
    "Beam consumer: delivery from RabbitMQ, cleaning, dead letters, ClickHouse loads.",
    [
        row(
            "Consume",
            ops(
                "Consumed and acked",
                CONSUMED,
                (rate(m.MESSAGES_ACKED), "acked messages"),
                (rate(m.CHANGES_ACKED), "acked changes"),
                note="A message carries up to CDCFLOW_PACK_MAX_CHANGES changes.",
            ),
            QUEUES,
            series("Bundle size", *quantiles(m.BATCH_SIZE, 0.5, 0.99)),
            series(
                "Changes per message",
                *quantiles(m.CHANGES_PER_MESSAGE, 0.5, 0.99),
                note="Queue depth counts messages: depth times this is the backlog in changes.",
            ),
            RECONNECTS,
        ),
        row(
            "Clean and route",
            ops("Values fixed by rule", (rate(m.ROWS_FIXED, "rule"), "{{rule}}")),
            DEAD_LETTERS,
            ops("Ignored messages by reason", (rate(m.MESSAGES_IGNORED, "reason"), "{{reason}}")),
        ),
        row(
            "Warehouse",
            ops(
                "Rows loaded by operation",
                (rate(m.ROWS_LOADED, "op"), "{{op}}"),
                (rate(m.ROWS_SWEPT), "swept"),
            ),
            series("Load time per batch", *quantiles(m.LOAD_SECONDS, 0.5, 0.99), unit="s"),
            series(
                "Warehouse retries and idle time",
                (rate(m.WAREHOUSE_RETRIES), "retries/s"),
                (since(m.LAST_LOAD_TIMESTAMP), "seconds since last load"),
            ),
            FRESHNESS,
            Panel(
                "Freshness distribution",
                [(buckets(m.FRESHNESS_SECONDS), "{{le}}")],
                "s",
                "heatmap",
                width=24,
                note="Loaded changes per freshness bucket, of the pipelines chosen above "
                "(choose one to see one pipeline's).",
            ),
        ),
    ],
)

BOARDS = (OVERVIEW, PRODUCER, CONSUMER)


def render_all() -> dict[Path, str]:
    """Every dashboard as the exact text of its committed file."""
    return {
        DASHBOARDS_DIR / f"{b.uid}.json": json.dumps(build(b), indent=2, sort_keys=True) + "\n"
        for b in BOARDS
    }


def write_all(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write every dashboard into ``directory``; return the files whose content changed."""
    return write_changed({directory / path.name: text for path, text in render_all().items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdcflow.dashboards", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite helm/cdcflow/dashboards")
    args = parser.parse_args(argv)
    if not args.write:
        for path, text in render_all().items():
            print(f"--- {path.name}\n{text}", end="")  # noqa: T201
        return 0
    for path in write_all():
        print(f"wrote {path.relative_to(ROOT)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
