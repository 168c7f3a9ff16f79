"""The simulator's pure half: documents, bad kinds, the workload, pacing. No server."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter
from typing import Any

import pytest
from pymongo import DeleteOne, InsertOne, UpdateOne

from cdcflow.config import Settings
from cdcflow.rules import DEVICES, FIELD_NAMES, RULES_BY_CODE, Action
from cdcflow.simulator import (
    BAD_KINDS,
    Catalog,
    Op,
    SimulationStats,
    Workload,
    batch_size,
    make_bad_document,
    make_viewing,
    new_run_tag,
    pace,
)
from cdcflow.transforms import clean_documents, clean_one

NOW = dt.datetime(2026, 11, 5, 12, 0, tzinfo=dt.UTC)


def settings(**overrides: Any) -> Settings:
    return Settings(metrics_port=0, **overrides)


def run_workload(
    workload: Workload, batches: int, size: int, start: dt.datetime = NOW
) -> list[list[Op]]:
    return [
        workload.next_batch(size, start + dt.timedelta(seconds=index)) for index in range(batches)
    ]


def apply(store: dict[str, dict[str, Any]], op: Op, now: dt.datetime = NOW) -> None:
    """What MongoDB does with an op, on a dict; asserts updates and deletes find their doc."""
    if op.op == "insert":
        assert op.fields is not None
        assert op.doc_id not in store, "an insert reused an _id"
        store[op.doc_id] = dict(op.fields)
        return
    assert op.doc_id in store, f"{op.op} of a document that is not live"
    if op.op == "delete":
        del store[op.doc_id]
        return
    assert op.fields is not None
    store[op.doc_id].update(op.fields)
    for name in op.unset:
        store[op.doc_id].pop(name, None)
    store[op.doc_id]["updated_at"] = now  # $currentDate


# --- documents --------------------------------------------------------------------


def test_a_viewing_has_exactly_the_rule_fields_and_passes_every_rule() -> None:
    catalog = Catalog.build(500, 42)
    rng = random.Random(1)
    documents = [make_viewing(f"id{n}", rng, catalog, users=5000, now=NOW) for n in range(3000)]
    assert all(set(doc) == {"_id", *FIELD_NAMES} for doc in documents)
    result = clean_documents(documents)
    assert result.rejected == {}
    assert not result.fixes
    for doc in documents[:50]:
        assert isinstance(doc["_id"], str)
        assert doc["device"] in DEVICES
        assert 0 <= doc["watched_time"] <= doc["total_video_time"]
        assert doc["started_at"] <= doc["updated_at"] == NOW


def test_the_catalog_is_fixed_by_the_seed() -> None:
    assert Catalog.build(500, 42) == Catalog.build(500, 42)
    assert Catalog.build(500, 42).lengths != Catalog.build(500, 43).lengths
    catalog = Catalog.build(500, 42)
    assert catalog.video_ids[42] == "vid_0042"
    assert all(15 <= length <= 10_800 for length in catalog.lengths)
    assert Catalog.build(20_000, 1).video_ids[-1] == "vid_19999"


def test_popularity_is_zipf_like() -> None:
    workload = Workload(settings(insert_ratio=1.0, update_ratio=0.0, delete_ratio=0.0), "z")
    ops = [op for batch in run_workload(workload, 40, 500) for op in batch]
    views = Counter(op.fields["video_id"] for op in ops if op.fields)
    top = views["vid_0000"]
    assert top > 3 * views["vid_0009"] > 0
    assert views["vid_0009"] > views["vid_0099"]
    top_tenth = sum(count for _, count in views.most_common(50))
    assert top_tenth > 0.5 * len(ops)  # 10 % of the catalog, most of the views
    assert len(views) > 300  # but the long tail is watched too


def test_each_video_keeps_its_length() -> None:
    workload = Workload(settings(insert_ratio=1.0, update_ratio=0.0, delete_ratio=0.0), "z")
    lengths: dict[str, set[Any]] = {}
    for batch in run_workload(workload, 10, 500):
        for op in batch:
            assert op.fields is not None
            lengths.setdefault(op.fields["video_id"], set()).add(op.fields["total_video_time"])
    assert all(len(values) == 1 for values in lengths.values())


# --- bad documents ----------------------------------------------------------------


def test_there_are_many_bad_kinds_both_fixed_and_rejected() -> None:
    assert len(BAD_KINDS) >= 10
    assert len({kind.name for kind in BAD_KINDS}) == len(BAD_KINDS)
    assert {kind.action for kind in BAD_KINDS} == {Action.fixed, Action.rejected}
    assert all(kind.rule in RULES_BY_CODE for kind in BAD_KINDS)


@pytest.mark.parametrize("kind", BAD_KINDS, ids=lambda kind: kind.name)
def test_each_bad_kind_meets_its_cleaning_rule(kind: Any) -> None:
    catalog = Catalog.build(500, 7)
    for seed in range(60):  # every field and value variant of the kind
        rng = random.Random(seed)
        good = make_viewing(f"id{seed}", rng, catalog, users=100, now=NOW)
        bad = make_bad_document(kind, good, rng)
        assert repr(bad) != repr(good)  # (True == 1.0 for ==)
        row, code = clean_one(bad)
        if kind.action is Action.rejected:
            assert (row, code) == (None, kind.rule), bad
        else:
            assert code is None, bad
            assert kind.rule in clean_documents([bad]).fixes, bad


def test_a_bad_document_is_a_pure_function_of_kind_document_and_rng() -> None:
    good = make_viewing("id", random.Random(3), Catalog.build(50, 3), users=10, now=NOW)
    for kind in BAD_KINDS:
        first = make_bad_document(kind.name, good, random.Random(9))
        assert first == make_bad_document(kind, good, random.Random(9))
    assert good == make_viewing("id", random.Random(3), Catalog.build(50, 3), users=10, now=NOW)


# --- the workload -----------------------------------------------------------------


def test_same_seed_same_operations_apart_from_the_run_tag() -> None:
    config = settings(seed=5, bad_ratio=0.2)
    first = run_workload(Workload(config, "aaa"), 20, 100)
    assert first == run_workload(Workload(config, "aaa"), 20, 100)
    other_tag = run_workload(Workload(config, "bbb"), 20, 100)
    assert repr(first).replace("aaa-", "bbb-") == repr(other_tag)
    other_seed = run_workload(Workload(settings(seed=6, bad_ratio=0.2), "aaa"), 20, 100)
    assert first != other_seed


def test_ids_carry_the_run_tag_and_default_tags_differ() -> None:
    batch = Workload(settings(), "t1").next_batch(10, NOW)
    assert all(op.doc_id.startswith("t1-") for op in batch)
    assert new_run_tag() != new_run_tag()
    with pytest.raises(ValueError, match="run tag"):
        Workload(settings(), "has space")


@pytest.mark.parametrize("mix", [(0.6, 0.3, 0.1), (0.4, 0.2, 0.4), (0.5, 0.5, 0.0), (1.0, 0, 0)])
def test_the_mix_follows_the_ratios(mix: tuple[float, float, float]) -> None:
    config = settings(insert_ratio=mix[0], update_ratio=mix[1], delete_ratio=mix[2], seed=11)
    workload = Workload(config, "m")
    ops = [op for batch in run_workload(workload, 60, 500) for op in batch]
    counts = Counter(op.op for op in ops)
    # the first batch is all inserts (nothing is live yet); the rest follows the mix
    assert counts["insert"] / len(ops) == pytest.approx(mix[0], abs=0.03)
    assert counts["update"] / len(ops) == pytest.approx(mix[1], abs=0.03)
    assert counts["delete"] / len(ops) == pytest.approx(mix[2], abs=0.03)
    assert workload.live == counts["insert"] - counts["delete"]


def test_updates_and_deletes_hit_live_documents_once_per_batch() -> None:
    """An unordered bulk may apply in any order: so no _id twice in one batch."""
    workload = Workload(settings(seed=3, bad_ratio=0.1), "u")
    store: dict[str, dict[str, Any]] = {}
    batches = run_workload(workload, 200, 50)
    for index, batch in enumerate(batches):
        ids = [op.doc_id for op in batch]
        assert len(ids) == len(set(ids)), f"batch {index} writes an _id twice"
        for op in batch:
            apply(store, op)
    assert len(store) == workload.live
    assert Counter(op.op for batch in batches for op in batch)["update"] > 2000


def test_deletes_cannot_outnumber_inserts() -> None:
    """A mix with more deletes than inserts drains the live set: the rest become inserts."""
    workload = Workload(settings(insert_ratio=0.2, update_ratio=0.3, delete_ratio=0.5), "d")
    counts = Counter(op.op for batch in run_workload(workload, 40, 100) for op in batch)
    assert counts["delete"] <= counts["insert"]
    assert workload.live == counts["insert"] - counts["delete"] >= 0


def test_nothing_live_turns_updates_and_deletes_into_inserts() -> None:
    workload = Workload(settings(insert_ratio=0.0, update_ratio=0.5, delete_ratio=0.5), "e")
    batch = workload.next_batch(20, NOW)
    assert {op.op for op in batch} == {"insert"}
    later = [op for batch in run_workload(workload, 50, 20) for op in batch]
    assert {"update", "delete"} <= {op.op for op in later}


def test_updates_move_watched_time_forward_and_bump_updated_at() -> None:
    workload = Workload(settings(seed=8), "w")
    store: dict[str, dict[str, Any]] = {}
    updates = 0
    for index, batch in enumerate(run_workload(workload, 100, 30)):
        for op in batch:
            before = dict(store.get(op.doc_id, {}))
            apply(store, op, NOW + dt.timedelta(seconds=index))
            if op.op == "update":
                updates += 1
                after = store[op.doc_id]
                assert after["updated_at"] > before["updated_at"]
                assert before["watched_time"] <= after["watched_time"]
                assert after["watched_time"] <= after["total_video_time"]
    assert updates > 500


def test_bad_ratio_sets_the_share_of_bad_inserts_and_updates() -> None:
    workload = Workload(settings(seed=4, bad_ratio=0.25), "b")
    store: dict[str, dict[str, Any]] = {}
    ops, written = [], []
    for batch in run_workload(workload, 40, 500):
        for op in batch:
            apply(store, op)
            ops.append(op)
            if op.bad:
                written.append(dict(store[op.doc_id]))
    writes = [op for op in ops if op.op != "delete"]
    bad = [op for op in writes if op.bad]
    assert len(bad) / len(writes) == pytest.approx(0.25, abs=0.02)
    assert {op.bad for op in bad} == {kind.name for kind in BAD_KINDS}
    assert {"insert", "update"} == {op.op for op in bad}
    for document in written[:300]:  # as written, each breaks a rule (one by one: fixes)
        result = clean_documents([document])
        assert result.rejected or result.fixes, document


def test_an_op_becomes_the_pymongo_request() -> None:
    stamp = {"$currentDate": {"updated_at": True}}
    assert Op("insert", "a", {"_id": "a", "x": 1}).request() == InsertOne({"_id": "a", "x": 1})
    assert Op("update", "a", {"x": 2}, ("watched_time",)).request() == UpdateOne(
        {"_id": "a"}, {**stamp, "$set": {"x": 2}, "$unset": {"watched_time": ""}}
    )
    assert Op("update", "a", {}, ("video_id",)).request() == UpdateOne(
        {"_id": "a"}, {**stamp, "$unset": {"video_id": ""}}
    )
    assert Op("delete", "a").request() == DeleteOne({"_id": "a"})


# --- pacing -----------------------------------------------------------------------


def test_batch_size_gives_about_fifteen_writes_a_second() -> None:
    assert batch_size(350, 500) == 24  # 350/s: ~15 writes of 24, not one of 350
    assert batch_size(5, 500) == 1
    assert batch_size(1_000_000, 500) == 500
    assert batch_size(math.inf, 200) == 200


def simulate_pacing(rate: float, seconds: float, write_batch: int = 500) -> list[tuple[float, int]]:
    """Run pace() on a virtual clock (writes take no time): [(when, ops)]."""
    batch = batch_size(rate, write_batch)
    clock, done, writes = 0.0, 0, []
    while clock < seconds:
        count, wait = pace(rate, clock, done, batch, write_batch)
        if count:
            writes.append((clock, count))
            done += count
        else:
            assert wait > 0
            clock += wait
    return writes


def test_a_low_rate_is_spread_over_the_second() -> None:
    writes = simulate_pacing(350, 10.0)
    assert sum(count for _, count in writes) == pytest.approx(3500, abs=30)
    per_second = Counter(int(when) for when, _ in writes)
    assert all(10 <= per_second[second] <= 20 for second in range(10))
    assert max(count for _, count in writes) <= 30


def test_a_writer_behind_schedule_does_not_sleep() -> None:
    assert pace(10_000, 2.0, 5_000, 500, 500) == (500, 0.0)  # 15k due, 5k done
    assert pace(350, 1.0, 0, 24, 500) == (350, 0.0)  # a late start catches up at once
    count, wait = pace(350, 1.0, 350, 24, 500)
    assert count == 0 and wait == pytest.approx(24 / 350)
    assert pace(math.inf, 0.0, 10**9, 500, 500) == (500, 0.0)


def test_stats_events_and_rate() -> None:
    stats = SimulationStats(inserts=6, updates=3, deletes=1, seconds=2.0)
    assert (stats.events, stats.rate) == (10, 5.0)
    assert SimulationStats().rate == 0.0
