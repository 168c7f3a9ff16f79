"""The cleaning rules: docs/cleaning.md is generated from them and each example does
what the table says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdcflow.rules import FIELDS, MESSAGE_REASONS, RULES, Action, Rule, render_markdown
from cdcflow.transforms import clean_one

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cleaning.md"

GOOD: dict[str, Any] = {
    "video_id": "vid_0001",
    "user_id": "user_1",
    "device": "ios",
    "country": "PT",
    "started_at": {"$date": "2026-11-25T10:00:00.000Z"},
    "updated_at": {"$date": "2026-11-25T10:05:00.000Z"},
    "watched_time": 120,
    "total_video_time": 300,
}


def test_docs_cleaning_md_is_generated_from_the_rules() -> None:
    assert DOCS.read_text() == render_markdown(), "run: cdcflow rules --markdown > docs/cleaning.md"


def test_every_rule_and_reason_code_is_unique() -> None:
    codes = [rule.code for rule in RULES] + [code for code, _ in MESSAGE_REASONS]
    assert len(codes) == len(set(codes))


def test_the_good_document_passes_untouched() -> None:
    row, reason = clean_one(GOOD)
    assert reason is None and row is not None
    assert row["watched_time"] == 120.0
    assert row["completion_rate"] == pytest.approx(40.0)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.code)
def test_rule_example_is_fixed_or_rejected_as_documented(rule: Rule) -> None:
    document: Any = [1, 2] if rule.code == "document_not_object" else {**GOOD, **rule.example}
    row, reason = clean_one(document)
    if rule.action is Action.rejected:
        assert row is None
        assert reason == rule.code
    else:
        assert reason is None, f"{rule.code} should be fixed, was rejected as {reason}"
        assert row is not None
        assert 0.0 <= row["completion_rate"] <= 100.0


def test_fixed_values_are_the_documented_ones() -> None:
    def cleaned(**fields: Any) -> dict[str, Any]:
        row, reason = clean_one({**GOOD, **fields})
        assert reason is None and row is not None
        return row

    assert cleaned(video_id=42)["video_id"] == "42"
    assert cleaned(video_id=" vid_1 ")["video_id"] == "vid_1"
    assert cleaned(watched_time="120")["watched_time"] == 120.0
    assert cleaned(watched_time=400, total_video_time=312)["completion_rate"] == 100.0
    assert cleaned(device="iOS")["device"] == "ios"
    assert cleaned(device="smart-fridge")["device"] == "unknown"
    assert cleaned(device=None)["device"] == "unknown"
    assert cleaned(country="pt")["country"] == "PT"
    assert cleaned(country="Portugal")["country"] == "ZZ"
    assert cleaned(started_at="yesterday")["started_at"] is None


def test_every_required_field_is_required() -> None:
    for field in FIELDS:
        if field.required:
            document = {key: value for key, value in GOOD.items() if key != field.name}
            assert clean_one(document)[1] == "missing_field", field.name


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"watched_time": float("inf")}, "number_not_finite"),
        ({"watched_time": {"$numberDouble": "NaN"}}, "number_not_finite"),
        ({"total_video_time": -1}, "total_video_time_not_positive"),
        ({"total_video_time": "0"}, "total_video_time_not_positive"),
        ({"watched_time": False}, "number_is_boolean"),
        ({"watched_time": [1]}, "number_not_numeric"),
        ({"user_id": ""}, "blank_key"),
        ({"user_id": 1.5}, "key_wrong_type"),
    ],
)
def test_more_rejections(fields: dict[str, Any], reason: str) -> None:
    assert clean_one({**GOOD, **fields}) == (None, reason)


def test_extended_json_numbers_are_numbers_not_fixes() -> None:
    row, reason = clean_one({**GOOD, "watched_time": {"$numberLong": "90"}})
    assert reason is None and row is not None and row["watched_time"] == 90.0
