"""The source's restriction tracker and the ack ledger, driven directly."""

from __future__ import annotations

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, Histogram

from cdcflow import metrics
from cdcflow.consumer.rabbitmq import AckLedger
from cdcflow.consumer.source import _Lease, _LeaseTracker


def test_lease_claims_once_per_bundle_and_defers_the_rest() -> None:
    tracker = _LeaseTracker(_Lease())
    assert tracker.try_claim(0)
    split = tracker.try_split(0)
    assert split is not None
    primary, residual = split
    assert primary.done and not residual.done and residual.batches == 1
    assert not tracker.try_claim(0)  # nothing left in this bundle
    tracker.check_done()


def test_lease_refuses_dynamic_splits() -> None:
    tracker = _LeaseTracker(_Lease())
    assert tracker.try_split(0.5) is None


def test_finished_lease_is_done_and_cannot_split() -> None:
    tracker = _LeaseTracker(_Lease())
    tracker.finish()
    assert tracker.try_split(0) is None
    tracker.check_done()


def test_unfinished_lease_fails_check_done() -> None:
    with pytest.raises(ValueError):
        _LeaseTracker(_Lease()).check_done()


def test_ack_ledger_uses_one_multiple_ack_for_a_batch_that_follows_the_last() -> None:
    ledger = AckLedger()
    assert ledger.plan([1, 2, 3]) == [(3, True)]
    assert ledger.plan([4, 5]) == [(5, True)]
    assert ledger.acked_upto == 5


def test_ack_ledger_never_multiple_acks_over_an_unfinished_batch() -> None:
    ledger = AckLedger()
    # Batch [4, 5] finalizes before [1, 2, 3]: a multiple-ack of 5 would ack 1..3 too.
    assert ledger.plan([4, 5]) == [(4, False), (5, False)]
    assert ledger.plan([1, 2, 3]) == [(3, True)]
    assert ledger.acked_upto == 5
    assert ledger.plan([6, 7]) == [(7, True)]


def test_ack_ledger_ignores_tags_already_acked() -> None:
    ledger = AckLedger()
    ledger.plan([1, 2])
    assert ledger.plan([2]) == []
    assert ledger.plan([1, 2, 3]) == [(3, True)]


def test_retry_until_done_backs_off_logs_each_retry_and_returns() -> None:
    from cdcflow.consumer import runtime

    failures: list[Exception] = []
    pauses: list[float] = []
    outcomes = iter([OSError("down"), OSError("still down"), None])

    def action() -> str:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return "done"

    def sleep(seconds: float) -> bool:
        pauses.append(seconds)
        return False

    result = runtime.retry_until_done(
        action, what="insert", on_failure=failures.append, initial_s=0.5, max_s=15.0, sleep=sleep
    )
    assert result == "done"
    assert [str(error) for error in failures] == ["down", "still down"]
    assert len(pauses) == 2 and 0.5 <= pauses[0] <= 0.75 and 1.0 <= pauses[1] <= 1.25


def test_retry_until_done_gives_up_when_asked_to_stop() -> None:
    from cdcflow.consumer import runtime

    def action() -> None:
        raise OSError("down")

    with pytest.raises(runtime.Abandoned) as raised:
        runtime.retry_until_done(action, what="insert", sleep=lambda seconds: True)
    assert isinstance(raised.value.__cause__, OSError)


def _samples(histogram: Histogram) -> dict[str, float]:
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in histogram.collect()
        for sample in family.samples
    }


@pytest.mark.parametrize(
    "values",
    [[], [0.0], [0.05, 0.051, 0.3, 1.0, 299.9, 300.0, 300.1, 1e9], [0.2] * 1000],
)
def test_cumulative_observations_export_what_observing_each_value_does(
    values: list[float],
) -> None:
    buckets = (0.05, 0.1, 0.25, 0.5, 1.0, 300.0)
    one_by_one = Histogram("h", "h", buckets=buckets, registry=CollectorRegistry())
    at_once = Histogram("h", "h", buckets=buckets, registry=CollectorRegistry())
    for value in values:
        one_by_one.observe(value)
    bounds = metrics.upper_bounds(at_once)
    cumulative = [sum(1 for value in values if value <= bound) for bound in bounds]
    metrics.observe_cumulative(at_once, cumulative, sum(values))
    assert _samples(at_once) == pytest.approx(_samples(one_by_one))


def test_freshness_is_observed_per_loaded_row_with_a_source_time() -> None:
    from cdcflow.consumer.sink import _observe_freshness

    loaded_at = 1_800_000_000.0
    ages = [0.01, 0.2, 0.2, 0.7, 4.0, 50.0, 1000.0, -3.0]  # a clock skew counts as 0
    micros = [int((loaded_at - age) * 1_000_000) for age in ages] + [None]  # None: snapshot
    column = pa.chunked_array(
        [pa.array(micros[:3], pa.int64()), pa.array(micros[3:], pa.int64())]
    ).cast(pa.timestamp("us", tz="UTC"))
    expected = Histogram(
        "e",
        "e",
        buckets=metrics.upper_bounds(metrics.FRESHNESS_SECONDS)[:-1],
        registry=CollectorRegistry(),
    )
    for micro in micros:
        if micro is not None:
            expected.observe(max(0.0, loaded_at - micro / 1_000_000))
    before = _samples(metrics.FRESHNESS_SECONDS)
    _observe_freshness(column, loaded_at)
    after = _samples(metrics.FRESHNESS_SECONDS)
    grown = {
        name.replace("cdcflow_freshness_seconds", "e"): after[name] - before[name] for name in after
    }
    assert grown == pytest.approx(_samples(expected))
