"""Analytics over the warehouse: the demo's terminal tables and a one-file HTML report.

Why it reads what it reads: the raw table keeps every state of a document, so
anything about *documents* (completion, videos, devices, countries) goes through
``<table>_current`` or the views built on it, and a superseded or deleted state
never counts. The load history reads what was loaded: events over time from the
load log (``<table>_loads``, counted as each insert arrives), freshness from the
raw table's stored rows. Every number is aggregated in ClickHouse: Python only
receives a few hundred rows, whatever the table's size.

Why it prints nothing: the CLI decides how to show things; here we return data
(rich tables, file paths). Charts are drawn on bare ``Figure`` objects (Agg
canvas, no pyplot global state), so the report is safe in any process.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text

from cdcflow.warehouse.client import Warehouse

MIN_VIEWS = 5  # a video needs this many live views to rank: one view at 100% is no signal
MAX_COUNTRIES = 15
MAX_BUCKETS = 120  # time buckets per chart: enough detail, still legible
_BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
_CHANGE_OPS = "('insert', 'update', 'replace')"  # ops whose updated_at is the new state's
_OPS = ("insert", "update", "replace", "delete", "snapshot", "sweep")  # legend order
_COLORS = ("#2a9d8f", "#457b9d", "#8ab17d", "#e63946", "#f4a261", "#6c757d")
_OP_COLORS = dict(zip(_OPS, _COLORS, strict=True))
# Section headings of the HTML page, and the PNG each one shows (the summary has none).
CHARTS = {
    "Completion rate distribution": "completion_histogram.png",
    "Top videos": "top_videos.png",
    "Bottom videos": "bottom_videos.png",
    "Completion by device": "by_device.png",
    "Completion by country": "by_country.png",
    "Events over time": "events.png",
    "Freshness": "freshness.png",
}
SECTIONS = ("Summary", *CHARTS)


class Group(NamedTuple):
    """Live views of one video, device or country and their average completion (%)."""

    key: str
    views: int
    avg_completion: float


@dataclass(frozen=True)
class Summary:
    live: int  # documents whose newest state is not deleted
    deleted: int  # documents whose newest state is a delete (or a sweep tombstone)
    rows: int  # rows in the raw table (ClickHouse may already have merged some away)
    first_load: dt.datetime | None
    last_load: dt.datetime | None

    @property
    def span_s(self) -> float:
        if self.first_load is None or self.last_load is None:
            return 0.0
        return (self.last_load - self.first_load).total_seconds()


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    pngs: tuple[Path, ...]  # the charts drawn, in page order

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.html, *self.pngs)


# --- queries ------------------------------------------------------------------------


def has_table(warehouse: Warehouse) -> bool:
    """False before the first ``init_schema``: the report then says "no data yet"."""
    return bool(warehouse.scalar(f"EXISTS TABLE {warehouse.qualified}"))


def summary(warehouse: Warehouse) -> Summary:
    if not has_table(warehouse):
        return Summary(0, 0, 0, None, None)
    live = warehouse.count_current()
    # FINAL hides deleted documents, so "deleted" is every document minus the live ones.
    docs, rows, first, last = warehouse.rows(
        f"SELECT uniqExact(doc_id), count(), min(loaded_at), max(loaded_at) "
        f"FROM {warehouse.qualified}"
    )[0]
    if not rows:
        return Summary(live, 0, 0, None, None)
    # max(): on a server, rows can land between the two queries.
    return Summary(live, max(0, int(docs) - live), int(rows), _utc(first), _utc(last))


def _utc(moment: dt.datetime) -> dt.datetime:
    """chdb returns naive UTC, a server may return aware times: make both aware."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def top_videos(
    warehouse: Warehouse, limit: int = 10, *, best: bool = True, min_views: int = MIN_VIEWS
) -> list[Group]:
    """Videos with at least ``min_views`` live views, by average completion (from the view)."""
    return _groups(
        warehouse,
        f"SELECT video_id, views, avg_completion_rate FROM {warehouse.qualified}_by_video "
        f"WHERE views >= {int(min_views)} ORDER BY avg_completion_rate "
        f"{'DESC' if best else 'ASC'}, views DESC, video_id LIMIT {int(limit)}",
    )


def by_device(warehouse: Warehouse) -> list[Group]:
    return _groups(
        warehouse,
        f"SELECT device, views, avg_completion_rate FROM {warehouse.qualified}_by_device "
        "ORDER BY views DESC, device",
    )


def by_country(warehouse: Warehouse, limit: int = MAX_COUNTRIES) -> list[Group]:
    """The countries with the most live views (there is no view for this one)."""
    return _groups(
        warehouse,
        f"SELECT country, count() AS views, round(avg(completion_rate), 2) "
        f"FROM {warehouse.qualified}_current GROUP BY country "
        f"ORDER BY views DESC, country LIMIT {int(limit)}",
    )


def _groups(warehouse: Warehouse, sql: str) -> list[Group]:
    return [Group(str(key), int(views), float(rate)) for key, views, rate in warehouse.rows(sql)]


def completion_histogram(warehouse: Warehouse) -> list[int]:
    """Live documents per 5%-wide completion bin (20 bins; 100% falls in the last one)."""
    counts = [0] * 20
    for bin_, count in warehouse.rows(
        "SELECT least(greatest(floor(completion_rate / 5), 0), 19) AS bin, count() "
        f"FROM {warehouse.qualified}_current GROUP BY bin"
    ):
        counts[int(bin_)] = int(count)
    return counts


def bucket_seconds(span_s: float) -> int:
    """The smallest round bucket that keeps a run within ``MAX_BUCKETS`` buckets."""
    return next((b for b in _BUCKETS_S if span_s / b <= MAX_BUCKETS), _BUCKETS_S[-1])


def events_over_time(warehouse: Warehouse, bucket_s: int) -> dict[str, dict[int, int]]:
    """Rows loaded per op per bucket start (unix seconds).

    Read from the load log (``<table>_loads``, see sql/004_loads.sql), which counts
    each insert as it arrives: the raw table cannot say how many rows a past second
    loaded, because ReplacingMergeTree merges superseded versions away. A warehouse
    whose schema predates the log falls back to the rows that survived.
    """
    interval = f"INTERVAL {int(bucket_s)} SECOND"
    if warehouse.scalar(f"EXISTS TABLE {warehouse.qualified}_loads"):
        query = (
            f"SELECT toUnixTimestamp(toStartOfInterval(second, {interval})) AS t, op, sum(rows)"
            f" FROM {warehouse.qualified}_loads GROUP BY t, op ORDER BY t"
        )
    else:
        query = (
            f"SELECT toUnixTimestamp(toStartOfInterval(loaded_at, {interval})) AS t, op, count()"
            f" FROM {warehouse.qualified} GROUP BY t, op ORDER BY t"
        )
    series: dict[str, dict[int, int]] = {}
    for start, op, count in warehouse.rows(query):
        series.setdefault(str(op), {})[int(start)] = int(count)
    return series


# Bucket starts (unix seconds), then [p50, p95, p99] per bucket for each of two lags.
Lags = tuple[list[int], list[list[float]], list[list[float]]]


def freshness(warehouse: Warehouse, bucket_s: int) -> Lags:
    """Per bucket: p50/p95/p99 seconds from source time to load, two ways.

    ``source``: loaded_at − cluster_time (captured_at for snapshot rows, which have
    none); sweep tombstones are not events and are left out. ``updated``:
    loaded_at − the document's own updated_at, for inserts and updates only (a
    delete's or a snapshot's updated_at is an older state's). NaN where a bucket
    has no such row.
    """
    lag = "dateDiff('microsecond', {0}, loaded_at) / 1e6"
    rows = warehouse.rows(
        f"SELECT toUnixTimestamp(toStartOfInterval(loaded_at, INTERVAL {int(bucket_s)} SECOND))"
        f" AS t, quantilesIf(0.5, 0.95, 0.99)({lag.format('coalesce(cluster_time, captured_at)')}"
        f", op != 'sweep'), quantilesIf(0.5, 0.95, 0.99)({lag.format('updated_at')}, "
        f"op IN {_CHANGE_OPS} AND updated_at IS NOT NULL) "
        f"FROM {warehouse.qualified} GROUP BY t ORDER BY t"
    )
    return ([int(r[0]) for r in rows], [list(r[1]) for r in rows], [list(r[2]) for r in rows])


# --- terminal tables ----------------------------------------------------------------


def _group_table(title: str, key: str, groups: Sequence[Group], empty: str) -> Table:
    table = Table(title=title, caption=None if groups else empty, min_width=len(title) + 2)
    table.add_column(key)
    table.add_column("views", justify="right")
    table.add_column("avg completion", justify="right")
    for group in groups:
        # Text(), not a str: an id like "[bold]" is data, not rich markup.
        table.add_row(Text(group.key), f"{group.views:,}", f"{group.avg_completion:.1f}%")
    return table


def analytics_tables(warehouse: Warehouse, top: int = 10) -> list[Table]:
    """Top and bottom videos by completion (≥ ``MIN_VIEWS`` views) and completion by device."""
    best: list[Group] = []
    worst: list[Group] = []
    devices: list[Group] = []
    if has_table(warehouse):
        best, worst = top_videos(warehouse, top), top_videos(warehouse, top, best=False)
        devices = by_device(warehouse)
    few = f"no video has {MIN_VIEWS} live views yet"
    suffix = f"videos by completion (≥ {MIN_VIEWS} views)"
    return [
        _group_table(f"Top {top} {suffix}", "video", best, few),
        _group_table(f"Bottom {top} {suffix}", "video", worst, few),
        _group_table("Completion by device", "device", devices, "no data yet"),
    ]


# --- charts -------------------------------------------------------------------------


def _label(text: str, width: int = 24) -> str:
    """Chart-safe text: ids are user data, "$" would start matplotlib's mathtext."""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$") or "(blank)"


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, facecolor="white")
    return path


def _bars(groups: Sequence[Group], title: str, path: Path) -> Path:
    """Horizontal bars of average completion, first group on top, annotated with views."""
    figure = Figure(figsize=(8, 1.2 + 0.38 * len(groups)), layout="constrained")
    axes = figure.add_subplot()
    shown = list(reversed(groups))  # barh draws bottom-up
    # Positions, not the labels, place the bars: two ids may shorten to the same label.
    bars = axes.barh(
        range(len(shown)),
        [g.avg_completion for g in shown],
        tick_label=[_label(g.key) for g in shown],
        color="#457b9d",
    )
    labels = [f"{g.avg_completion:.1f}%  ({g.views:,} views)" for g in shown]
    axes.bar_label(bars, labels=labels, padding=4, fontsize=9)
    axes.set_xlim(0, 100)  # labels of bars near 100% stick out; the layout makes room
    axes.set_xlabel("average completion rate (%)")
    axes.set_title(title, loc="left")
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def _histogram(counts: Sequence[int], path: Path) -> Path:
    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(range(0, 100, 5), counts, width=5, align="edge", color="#2a9d8f", edgecolor="white")
    axes.set_xlim(0, 100)
    axes.set_xticks(range(0, 101, 10))
    axes.set_xlabel("completion rate (%), 5% bins")
    axes.set_ylabel("live documents (views)")
    axes.set_title(f"Completion rate distribution ({sum(counts):,} live views)")
    return _save(figure, path)


def _times(starts: Sequence[int]) -> npt.NDArray[np.datetime64]:
    """Unix seconds as datetime64: naive, which matplotlib draws as UTC."""
    return np.array(starts, dtype="datetime64[s]")


def _duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def _time_axis(axes: Axes) -> None:
    locator = AutoDateLocator(maxticks=8)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes.set_xlabel("load time (UTC)")
    axes.grid(alpha=0.3)


def _events_chart(series: dict[str, dict[int, int]], bucket_s: int, path: Path) -> Path:
    """Stacked load rate per op; empty buckets are drawn as zero, not interpolated over."""
    first = min(min(counts) for counts in series.values())
    last = max(max(counts) for counts in series.values())
    # One bucket past the last: a "post" step draws a value up to the next point only.
    starts = list(range(first, last + 2 * bucket_s, bucket_s))
    per, unit = (60, "minute") if bucket_s >= 60 else (1, "second")
    ops = [op for op in _OP_COLORS if op in series] + sorted(set(series) - set(_OP_COLORS))
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.stackplot(
        _times(starts),
        [[series[op].get(s, 0) * per / bucket_s for s in starts] for op in ops],
        labels=ops,
        colors=[_OP_COLORS.get(op, "#999999") for op in ops],
        step="post",
    )
    axes.set_ylabel(f"rows loaded per {unit}")
    axes.set_title(f"Rows loaded over time by operation ({_duration(bucket_s)} buckets)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="op")
    _time_axis(axes)
    return _save(figure, path)


def _freshness_chart(lags: Lags, bucket_s: int, path: Path) -> Path:
    """One panel per lag that has data; p50/p95/p99 lines, so spikes and tails both show."""
    starts, source, updated = lags
    panels = [("loaded_at − cluster_time (captured_at for snapshot rows)", source)]
    if any(not math.isnan(q[0]) for q in updated):
        panels.append(("loaded_at − document updated_at (inserts and updates)", updated))
    figure = Figure(figsize=(9, 2.2 + 2.4 * len(panels)), layout="constrained")
    times = _times(starts)
    first: Axes | None = None
    for index, (title, quantiles) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, index + 1, sharex=first)
        first = first or axes
        for position, (name, style) in enumerate((("p50", "-"), ("p95", "--"), ("p99", ":"))):
            values = [q[position] for q in quantiles]
            axes.plot(times, values, style, label=name, marker="." if len(times) <= 40 else "")
        axes.set_title(title, fontsize=10)
        axes.set_ylabel("lag (seconds)")
        axes.set_ylim(bottom=min(0.0, axes.get_ylim()[0]))
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        _time_axis(axes)
    figure.suptitle(f"Freshness: source-to-warehouse lag, percentiles per {_duration(bucket_s)}")
    return _save(figure, path)


# --- HTML ---------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222}h1{margin-bottom:.2rem}.meta{color:#666}section{margin:2rem 0}img{max-width:100%}
table{border-collapse:collapse}td,th{padding:.25rem .8rem;border-bottom:1px solid #ddd;
text-align:left}td.n{text-align:right}.note{color:#555;font-size:.9rem}"""


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{html.escape(heading)}</h2>{body}</section>"


def _image(path: Path, alt: str, note: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>{caption}"


def _summary_table(facts: Summary) -> str:
    def when(moment: dt.datetime | None) -> str:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"

    items = [
        ("documents live", f"{facts.live:,}"),
        ("documents deleted", f"{facts.deleted:,}"),
        ("rows stored (raw table)", f"{facts.rows:,}"),
        ("first load", when(facts.first_load)),
        ("last load", when(facts.last_load)),
        ("time span", f"{facts.span_s:,.1f} s"),
    ]
    rows = "".join(f"<tr><th>{k}</th><td class='n'>{html.escape(v)}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


_TITLES = {
    "Top videos": f"Top videos by average completion (≥ {MIN_VIEWS} live views)",
    "Bottom videos": f"Bottom videos by average completion (≥ {MIN_VIEWS} live views)",
    "Completion by device": "Average completion by device",
    "Completion by country": f"Average completion by country (top {MAX_COUNTRIES} by views)",
}
_NOTES = {
    "Top videos": f"Videos with at least {MIN_VIEWS} live views, best average first.",
    "Bottom videos": f"Videos with at least {MIN_VIEWS} live views, worst average first.",
    "Completion by country": f"The {MAX_COUNTRIES} countries with the most live views.",
    "Events over time": "Rows loaded per op, counted as each insert arrived (the load log): "
    "superseded versions count although ClickHouse has since merged them away, and a "
    "redelivered message counts again.",
    "Freshness": "cluster_time is MongoDB's commit time; on nx-27017 it is stamped when the "
    "producer reads the event, so that series leaves out the wait before capture. updated_at "
    "is written by the application with its own clock, so that series includes it.",
}


def _charts(warehouse: Warehouse, facts: Summary, out_dir: Path) -> dict[str, Path]:
    """Draw what there is data for; a heading without data has no entry."""
    charts: dict[str, Path] = {}

    def path(heading: str) -> Path:
        return out_dir / CHARTS[heading]

    if facts.live:
        heading = "Completion rate distribution"
        charts[heading] = _histogram(completion_histogram(warehouse), path(heading))
        for heading, groups in (
            ("Top videos", top_videos(warehouse)),
            ("Bottom videos", top_videos(warehouse, best=False)),
            ("Completion by device", by_device(warehouse)),
            ("Completion by country", by_country(warehouse)),
        ):
            if groups:
                charts[heading] = _bars(groups, _TITLES[heading], path(heading))
    if facts.rows:
        bucket_s = bucket_seconds(facts.span_s)
        heading = "Events over time"
        charts[heading] = _events_chart(
            events_over_time(warehouse, bucket_s), bucket_s, path(heading)
        )
        heading = "Freshness"
        charts[heading] = _freshness_chart(freshness(warehouse, bucket_s), bucket_s, path(heading))
    return charts


def write_report(
    warehouse: Warehouse, out_dir: Path, *, title: str = "cdcflow report"
) -> ReportFiles:
    """Write ``index.html`` (charts embedded, no external assets) and the PNGs beside it.

    Charts without data are skipped, and a PNG of ours left by an earlier run is
    removed, so the folder always matches the page.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = summary(warehouse)
    charts = _charts(warehouse, facts, out_dir)
    for heading, name in CHARTS.items():
        if heading not in charts:
            (out_dir / name).unlink(missing_ok=True)
    body = [_section("Summary", _summary_table(facts))]
    if not facts.rows:
        body.append("<p><strong>No data yet</strong>: the warehouse holds no rows.</p>")
    else:
        missing = "No live documents yet."
        if facts.live:
            missing = f"No video has {MIN_VIEWS} live views yet."
        for heading in CHARTS:
            if heading in charts:
                content = _image(charts[heading], heading, _NOTES.get(heading, ""))
            else:
                content = f"<p class='note'>{missing}</p>"
            body.append(_section(heading, content))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(warehouse.qualified)}"
        f" · generated {stamp}</p>{''.join(body)}</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return ReportFiles(index, tuple(charts.values()))
