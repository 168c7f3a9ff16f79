"""Every kind of bad input in the corpus gets its specific outcome (batch level)."""

from __future__ import annotations

import pytest

from cdcflow.consumer.batches import process_batch
from tests.corpus import CASES, COLLECTION, Case, change


def test_the_corpus_covers_at_least_thirty_kinds() -> None:
    assert len({case.name for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_has_a_specific_outcome_and_its_neighbours_load(case: Case) -> None:
    bodies = [change(100, "before"), case.body, change(101, "after")]
    types = [case.content_type if index == 1 else None for index in range(3)]
    batch = process_batch(bodies, types, collection=COLLECTION)
    loaded = batch.rows.column("doc_id").to_pylist()
    if case.outcome == "dead":
        assert [(r.index, r.reason) for r in batch.rejections] == [(1, case.reason)]
        assert loaded == ["before", "after"]
    elif case.outcome == "fixed":
        assert batch.rejections == []
        assert batch.fixes[case.reason] >= 1
        assert loaded == ["before", case.doc_id, "after"]
    else:
        assert batch.rejections == []
        assert batch.ignored[case.reason] == 1
        assert loaded == ["before", "after"]


def test_a_batch_of_only_bad_input_does_not_crash() -> None:
    batch = process_batch(
        [case.body for case in CASES], [case.content_type for case in CASES], collection=COLLECTION
    )
    assert len(batch.rejections) == sum(case.outcome == "dead" for case in CASES)
