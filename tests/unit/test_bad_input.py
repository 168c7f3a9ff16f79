"""Every kind of bad input in the corpus gets its specific outcome (batch level)."""

from __future__ import annotations

import pytest

from cdcflow.consumer.batches import MAX_MESSAGE_BYTES, process_batch
from cdcflow.events import CONTENT_TYPE
from cdcflow.packing import BATCH_CONTENT_TYPE, pack
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


def packable(case: Case) -> bool:
    """Cases that can travel inside a batch message: a change's own bytes (the message-level
    cases, content type and size, are about the AMQP message, and a raw newline cannot occur
    in what the producer writes)."""
    return (
        case.content_type in (None, CONTENT_TYPE)
        and b"\n" not in case.body
        and (len(case.body) <= MAX_MESSAGE_BYTES)
    )


@pytest.mark.parametrize("last", [False, True], ids=["middle", "last"])
@pytest.mark.parametrize("case", [c for c in CASES if packable(c)], ids=lambda case: case.name)
def test_bad_input_inside_a_batch_message_has_the_same_outcome_alone(
    case: Case, last: bool
) -> None:
    """In the middle of a message, and last (where a bad change must not pass for a cut)."""
    order = [change(100, "before"), case.body, change(101, "after")]
    if last:
        order = [order[0], order[2], order[1]]
    batch = process_batch([pack(order)], [BATCH_CONTENT_TYPE], collection=COLLECTION)
    loaded = batch.rows.column("doc_id").to_pylist()
    if last and len(loaded) == 3:
        loaded = [loaded[0], loaded[2], loaded[1]]
    assert batch.accounted == batch.changes == 3
    if case.outcome == "dead":
        position = 2 if last else 1
        assert [(r.index, r.position, r.reason) for r in batch.rejections] == [
            (0, position, case.reason)
        ]
        assert batch.rejections[0].body == case.body  # its own bytes go to the failed queue
        assert loaded == ["before", "after"]
    elif case.outcome == "fixed":
        assert batch.rejections == []
        assert batch.fixes[case.reason] >= 1
        assert loaded == ["before", case.doc_id, "after"]
    else:
        assert batch.rejections == []
        assert batch.ignored[case.reason] == 1
        assert loaded == ["before", "after"]


def test_most_of_the_corpus_can_travel_in_a_batch() -> None:
    assert sum(packable(case) for case in CASES) >= 25
