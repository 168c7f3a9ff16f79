"""``cdcflow verify``: is the warehouse what the source says it should be?

The expected warehouse is the source collection passed through the same cleaning
rules the consumer applies (:mod:`cdcflow.transforms`):

* a document the rules accept must be live in the warehouse's current view
  (``FINAL``, deleted rows excluded) exactly once, with the same cleaned values;
* a document the rules reject is expected absent (its change is in the failed
  queue); it is counted, not compared;
* anything live in the warehouse that the source no longer has should have been
  deleted.

Equality is on values, not versions: the source has no version to compare, and
a value match at the newest state is what analysts need.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcflow.config import Settings
from cdcflow.events import canonical_id, to_json_safe
from cdcflow.mongo import open_mongo_client
from cdcflow.packing import chunks
from cdcflow.rules import FIELD_NAMES
from cdcflow.transforms import clean_documents
from cdcflow.warehouse.client import Warehouse

COMPARED = (*FIELD_NAMES, "completion_rate")
_CHUNK = 5000


@dataclass(frozen=True)
class Difference:
    doc_id: str
    kind: str  # missing | different | extra | duplicate
    detail: str


@dataclass
class VerifyReport:
    source_documents: int = 0
    expected_live: int = 0
    rejected_by_rules: int = 0
    warehouse_live: int = 0
    missing: int = 0
    different: int = 0
    extra: int = 0
    duplicates: int = 0
    examples: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.different or self.extra or self.duplicates)

    @property
    def lost(self) -> int:
        """Source documents missing or stale in the warehouse (the chaos suite's 'lost')."""
        return self.missing + self.different

    def summary(self) -> str:
        if self.equal:
            return (
                f"verify: equal ({self.expected_live} documents live in source and warehouse; "
                f"{self.rejected_by_rules} rejected by cleaning rules, expected absent)"
            )
        return (
            f"verify: NOT equal: missing={self.missing} different={self.different} "
            f"extra={self.extra} duplicates={self.duplicates} "
            f"(source {self.source_documents}, expected live {self.expected_live}, "
            f"warehouse live {self.warehouse_live})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "source_documents": self.source_documents,
            "expected_live": self.expected_live,
            "rejected_by_rules": self.rejected_by_rules,
            "warehouse_live": self.warehouse_live,
            "missing": self.missing,
            "different": self.different,
            "extra": self.extra,
            "duplicates": self.duplicates,
            "examples": [vars(example) for example in self.examples],
        }


def expected_rows(documents: Sequence[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], int]:
    """Cleaned rows by canonical id, and how many documents the rules reject."""
    cleaned = clean_documents([to_json_safe(document) for document in documents])
    names = list(cleaned.columns)
    values = [cleaned.columns[name].to_pylist() for name in names]
    rows: dict[str, dict[str, Any]] = {}
    for position, source_index in enumerate(cleaned.kept):
        doc_id = canonical_id(documents[source_index]["_id"])
        rows[doc_id] = {name: column[position] for name, column in zip(names, values, strict=True)}
    return rows, len(cleaned.rejected)


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, dt.datetime) and isinstance(actual, dt.datetime):
        if expected.tzinfo is None:
            expected = expected.replace(tzinfo=dt.UTC)
        if actual.tzinfo is None:
            actual = actual.replace(tzinfo=dt.UTC)
        return bool(abs((expected - actual).total_seconds()) < 0.001)
    return bool(expected == actual)


def compare(
    expected: dict[str, dict[str, Any]],
    actual: dict[str, dict[str, Any]],
    duplicates: dict[str, int],
    report: VerifyReport,
    *,
    rejected_ids: set[str] | frozenset[str] = frozenset(),
    max_examples: int = 10,
) -> VerifyReport:
    """Fill ``report`` with the differences between expected and actual rows.

    ``rejected_ids``: source documents the rules reject; the warehouse may still
    hold an older, valid state of them (their newer change is in the failed
    queue), so they are not "extra".
    """

    def note(doc_id: str, kind: str, detail: str) -> None:
        if len(report.examples) < max_examples:
            report.examples.append(Difference(doc_id, kind, detail))

    for doc_id, row in expected.items():
        found = actual.get(doc_id)
        if found is None:
            report.missing += 1
            note(doc_id, "missing", "live in source, not in the warehouse")
            continue
        changed = [name for name in COMPARED if not _same(row.get(name), found.get(name))]
        if changed:
            report.different += 1
            name = changed[0]
            note(
                doc_id,
                "different",
                f"{name}: source {row.get(name)!r}, warehouse {found.get(name)!r}",
            )
    for doc_id in actual.keys() - expected.keys():
        if doc_id in rejected_ids:
            continue
        report.extra += 1
        note(doc_id, "extra", "live in the warehouse, deleted (or never present) in source")
    for doc_id, count in duplicates.items():
        report.duplicates += 1
        note(doc_id, "duplicate", f"{count} rows in the current view")
    return report


def verify(settings: Settings, *, warehouse: Warehouse | None = None) -> VerifyReport:
    """Compare the source collection with the warehouse (see the module doc)."""
    report = VerifyReport()
    expected: dict[str, dict[str, Any]] = {}
    rejected_ids: set[str] = set()
    client = open_mongo_client(settings)
    try:
        collection = client[settings.mongo_db][settings.mongo_collection]
        projection = dict.fromkeys(FIELD_NAMES, 1)
        for chunk in chunks(collection.find({}, projection), _CHUNK):
            rows, _ = expected_rows(chunk)
            report.source_documents += len(chunk)
            for document in chunk:
                doc_id = canonical_id(document["_id"])
                if doc_id not in rows:
                    rejected_ids.add(doc_id)
            expected.update(rows)
    finally:
        client.close()
    report.expected_live = len(expected)
    report.rejected_by_rules = len(rejected_ids)

    own = warehouse is None
    store = warehouse or Warehouse(settings)
    try:
        columns = ", ".join(("doc_id", *COMPARED))
        table = store.arrow(f"SELECT {columns} FROM {store.qualified}_current")
        duplicates = {
            str(doc_id): int(count)
            for doc_id, count in store.rows(
                f"SELECT doc_id, count() AS c FROM {store.qualified}_current "
                "GROUP BY doc_id HAVING c > 1"
            )
        }
    finally:
        if own:
            store.close()
    actual = {str(row["doc_id"]): row for row in table.to_pylist()}
    report.warehouse_live = table.num_rows
    return compare(expected, actual, duplicates, report, rejected_ids=rejected_ids)
