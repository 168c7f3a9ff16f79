"""verify's comparison: missing, different, extra, duplicates, rejected documents."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cdcflow.verify import VerifyReport, compare, expected_rows

from .test_rules import GOOD

T = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)


def source(doc_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "_id": doc_id,
        **GOOD,
        "started_at": T,
        "updated_at": T,
        **fields,
    }


def test_expected_rows_apply_the_cleaning_rules() -> None:
    rows, rejected = expected_rows(
        [source("a"), source("b", total_video_time=0), source("c", device="iOS")]
    )
    assert set(rows) == {"a", "c"} and rejected == 1
    assert rows["c"]["device"] == "ios"
    assert rows["a"]["completion_rate"] == 40.0


def test_equal_when_the_same() -> None:
    expected, _ = expected_rows([source("a"), source("b")])
    report = compare(expected, {k: dict(v) for k, v in expected.items()}, {}, VerifyReport())
    assert report.equal and report.lost == 0


def test_every_kind_of_difference_is_counted() -> None:
    expected, _ = expected_rows([source("a"), source("b"), source("c")])
    actual = {k: dict(v) for k, v in expected.items() if k != "a"}
    actual["b"]["watched_time"] = 1.0
    actual["z"] = dict(expected["c"])
    actual["q"] = dict(expected["c"])
    report = compare(expected, actual, {"c": 2}, VerifyReport(), rejected_ids={"q"})
    assert (report.missing, report.different, report.extra, report.duplicates) == (1, 1, 1, 1)
    assert not report.equal
    assert report.lost == 2
    assert {example.kind for example in report.examples} == {
        "missing",
        "different",
        "extra",
        "duplicate",
    }
    assert "NOT equal" in report.summary()
