"""Batch cleaning keeps good rows around bad ones, in order, fast path and slow path alike."""

from __future__ import annotations

from typing import Any

import pytest

from cdcflow.transforms import clean_documents, parse_moment

from .test_rules import GOOD


def _doc(index: int, **fields: Any) -> dict[str, Any]:
    return {**GOOD, "video_id": f"vid_{index}", "watched_time": index % 300, **fields}


def test_a_clean_batch_keeps_every_row_in_order() -> None:
    result = clean_documents([_doc(i) for i in range(1000)])
    assert result.kept == list(range(1000))
    assert result.rejected == {}
    assert result.columns["video_id"].to_pylist()[:3] == ["vid_0", "vid_1", "vid_2"]
    rates = result.columns["completion_rate"].to_pylist()
    assert rates[150] == pytest.approx(150 / 300 * 100)


def test_bad_rows_are_rejected_and_their_neighbours_kept() -> None:
    documents: list[Any] = [_doc(i) for i in range(10)]
    documents[3] = _doc(3, watched_time="two minutes")
    documents[7] = _doc(7, total_video_time=0)
    documents[8] = "not a document"
    result = clean_documents(documents)
    assert result.kept == [0, 1, 2, 4, 5, 6, 9]
    assert {index: reason for index, (reason, _) in result.rejected.items()} == {
        3: "number_not_numeric",
        7: "total_video_time_not_positive",
        8: "document_not_object",
    }
    assert result.columns["video_id"].to_pylist() == [f"vid_{i}" for i in result.kept]
    assert len(result.columns["completion_rate"]) == len(result.kept)


def test_a_mixed_type_column_takes_the_slow_path_with_the_same_result() -> None:
    fast = clean_documents([_doc(i) for i in range(5)])
    mixed = clean_documents([_doc(i, watched_time=str(i % 300)) for i in range(5)])
    assert mixed.columns["watched_time"].to_pylist() == fast.columns["watched_time"].to_pylist()
    assert mixed.fixes["number_as_text"] == 5


def test_fix_counts_are_per_rule() -> None:
    documents = [_doc(1, device="TV"), _doc(2, country="de"), _doc(3, watched_time=999)]
    result = clean_documents(documents)
    assert result.fixes["device_unknown"] == 1
    assert result.fixes["country_invalid"] == 1
    assert result.fixes["watched_time_exceeds_total"] == 1
    assert result.columns["device"].to_pylist()[0] == "tv"


def test_empty_batch() -> None:
    result = clean_documents([])
    assert result.kept == [] and result.rejected == {}


@pytest.mark.parametrize(
    "dates",
    [
        ["2026-12-04T18:04:00.444999", None, "2026-12-04"],  # nx-27017: no zone
        ["2026-12-04T18:04:00.444Z", "2026-12-04T18:04:00+01:00"],
        ["1969-12-31T23:59:59.9999", "2026-01-01T00:00:00"],
        ["1800-01-01T00:00:00", "2026-01-01T00:00:00"],
        ["2026-12-04T18:04:00", "2026-12-04T18:04:00Z"],
        ["2026-12-04T18:04:00.444000000", "2026-W49-5", "not a date"],
    ],
)
def test_whole_column_dates_read_as_value_by_value(dates: list[str | None]) -> None:
    """The one-cast path for ``{"$date": text}`` columns agrees with ``parse_moment``."""
    documents = [
        _doc(i, started_at={"$date": text} if text else None) for i, text in enumerate(dates)
    ]
    column = clean_documents(documents).columns["started_at"].to_pylist()
    for text, value in zip(dates, column, strict=True):
        expected = parse_moment({"$date": text})[0] if text else None
        if expected is not None:
            expected = expected.replace(microsecond=expected.microsecond // 1000 * 1000)
        assert value == expected, text
