"""The source's restriction tracker and the ack ledger, driven directly."""

from __future__ import annotations

import pytest

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
