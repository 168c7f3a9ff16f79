"""The autoscaler's rules: KEDA's RabbitMQ-scaler cases, the rules beyond KEDA, properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdcflow_operator.models import ConsumerSpec, ScalingSpec
from cdcflow_operator.scaling import (
    DepthReading,
    History,
    Observation,
    desired_replicas,
    history_from_status,
    history_to_status,
    messages_per_replica,
    recommend,
)

NOW = 1_000_000.0


def spec(**overrides: Any) -> ScalingSpec:
    base: dict[str, Any] = {
        "min_replicas": 0,
        "max_replicas": 10,
        "target_messages_per_replica": 100,
        "activation_threshold": 0,
        "scale_up_stabilization_seconds": 0,
        "scale_down_stabilization_seconds": 300,
        "max_step": 100,
        "fallback_replicas": 2,
        "failure_threshold": 3,
        "poll_interval_seconds": 15,
    }
    return ScalingSpec(**{**base, **overrides})


def read(ready: int, unacked: int = 0, ack_rate: float | None = None) -> DepthReading:
    return DepthReading(ready=ready, unacked=unacked, source="test", ack_rate=ack_rate)


def decide(current: int, reading: DepthReading | None, policy: ScalingSpec, history=None, now=NOW):
    return desired_replicas(Observation(current, reading), policy, history or History(), now)


# --- KEDA's RabbitMQ scaler (QueueLength) and the HPA behaviour ------------------------


@pytest.mark.parametrize(
    ("current", "ready", "expected"),
    [
        (1, 0, 0),  # idle queue, minReplicas 0: scale to zero
        (1, 100, 1),  # exactly the target
        (1, 101, 2),  # ceil(101 / 100)
        (1, 950, 10),
        (1, 5000, 10),  # capped at maxReplicas
        (0, 1, 1),  # activation threshold 0: any message activates from zero
    ],
)
def test_ceil_depth_over_target_within_bounds(current: int, ready: int, expected: int) -> None:
    decision = decide(current, read(ready), spec(scale_down_stabilization_seconds=0))
    assert decision.replicas == expected


def test_min_replicas_is_a_floor() -> None:
    assert (
        decide(3, read(0), spec(min_replicas=2, scale_down_stabilization_seconds=0)).replicas == 2
    )


@pytest.mark.parametrize(
    ("current", "ready", "expected"),
    [
        (0, 50, 0),  # at zero, at the threshold: stays asleep
        (0, 51, 1),  # above it: activates (KEDA's activation)
        (0, 30, 0),
        (1, 30, 1),  # running: the threshold does not stop consumers with work queued
        (3, 30, 1),  # ...they scale on ceil(30 / 100) like any other depth
        (3, 250, 3),
        (1, 0, 0),  # an empty queue still lets them go to zero
    ],
)
def test_activation_threshold_gates_only_scaling_from_zero(
    current: int, ready: int, expected: int
) -> None:
    decision = decide(
        current, read(ready), spec(activation_threshold=50, scale_down_stabilization_seconds=0)
    )
    assert decision.replicas == expected
    if current == 0 and expected == 1:
        assert decision.reason == "ScaledUp"


def test_scale_down_waits_for_the_highest_in_the_window() -> None:
    policy = spec(scale_down_stabilization_seconds=300)
    first = decide(1, read(800), policy)
    assert first.replicas == 8
    # 100 s later the queue is nearly empty: the 8 of 100 s ago is still in the window.
    later = decide(8, read(100), policy, first.history, NOW + 100)
    assert later.replicas == 8
    assert later.reason == "Stabilizing"
    # Past the window the old recommendation has aged out.
    after = decide(8, read(100), policy, later.history, NOW + 301)
    assert after.replicas == 1
    assert after.reason == "ScaledDown"


def test_scale_up_window_takes_the_lowest_recommendation() -> None:
    policy = spec(scale_up_stabilization_seconds=60, scale_down_stabilization_seconds=0)
    quiet = decide(1, read(100), policy)
    spike = decide(1, read(900), policy, quiet.history, NOW + 30)
    assert spike.replicas == 1  # the 1 of 30 s ago is still in the up window
    sustained = decide(1, read(900), policy, spike.history, NOW + 61)
    assert sustained.replicas == 9


def test_max_step_limits_each_change() -> None:
    decision = decide(1, read(5000), spec(max_step=3))
    assert decision.replicas == 4
    assert "maxStep 3" in decision.message


def test_fallback_after_failure_threshold_failed_reads() -> None:
    policy = spec(fallback_replicas=3, failure_threshold=3)
    history = History()
    replicas = []
    for _ in range(3):
        decision = decide(7, None, policy, history)
        history = decision.history
        replicas.append(decision.replicas)
    assert replicas == [7, 7, 3]
    assert decision.reason == "FallbackReplicas"
    # A good read resets the count of failures.
    assert decide(3, read(300), policy, history).history.failed_reads == 0


def test_scaling_off_uses_the_manual_count() -> None:
    decision = desired_replicas(
        Observation(5, read(10_000)),
        spec(enabled=False),
        History(),
        NOW,
        consumer=ConsumerSpec(replicas=2),
    )
    assert (decision.replicas, decision.reason) == (2, "ManualReplicas")


# --- beyond KEDA -----------------------------------------------------------------------


def test_unacknowledged_messages_count_as_depth() -> None:
    # KEDA's QueueLength counts ready messages: 0 here, so it would scale to zero.
    decision = decide(4, read(0, unacked=400), spec(scale_down_stabilization_seconds=0))
    assert decision.replicas == 4


def test_never_to_zero_while_messages_are_unacknowledged() -> None:
    policy = spec(scale_down_stabilization_seconds=0, activation_threshold=100)
    held = decide(1, read(0, unacked=5), policy)
    assert held.replicas == 1
    assert held.reason == "UnackedMessages"
    assert decide(1, read(0, unacked=0), policy).replicas == 0


def test_no_scale_down_below_what_drains_the_backlog_within_the_window() -> None:
    policy = spec(scale_down_stabilization_seconds=0, target_messages_per_replica=1000)
    # 6 replicas ack 6 msg/s in all (1 each). The window is 0, so the poll interval
    # (15 s) is the horizon: ceil(1900 / (1 * 15)) = 127 > 6, hold all 6.
    held = decide(6, read(1900, ack_rate=6.0), policy)
    assert (held.replicas, held.reason) == (6, "DrainingBacklog")
    # At 600 msg/s (100 per replica), two replicas drain 1900 in 15 s: down to 2, not 6.
    assert decide(6, read(1900, ack_rate=600.0), policy).replicas == 2
    # A backlog (more than one replica's target) and no ack rate known: no scale-down.
    assert decide(6, read(1900), policy).replicas == 6
    # Less than one replica's worth is no backlog: the rule does not apply.
    assert decide(6, read(900), policy).replicas == 1


def test_scale_from_zero_uses_the_broker_reading() -> None:
    decision = decide(0, DepthReading(ready=250, unacked=0, source="rabbitmq-management"), spec())
    assert decision.replicas == 3
    assert "rabbitmq-management" in decision.message


def test_history_round_trips_through_status() -> None:
    decision = decide(1, read(800), spec())
    recs, failed = history_to_status(decision.history)
    assert history_from_status(recs, failed) == decision.history


# --- properties ------------------------------------------------------------------------

policies = st.builds(
    lambda lo, span, target, act, up, down, step: spec(
        min_replicas=lo,
        max_replicas=lo + span,
        target_messages_per_replica=target,
        activation_threshold=act,
        scale_up_stabilization_seconds=up,
        scale_down_stabilization_seconds=down,
        max_step=step,
        fallback_replicas=lo,
    ),
    st.integers(0, 5),
    st.integers(1, 20),
    st.integers(1, 5000),
    st.integers(0, 500),
    st.integers(0, 120),
    st.integers(0, 600),
    st.integers(1, 10),
)
readings = st.builds(
    read, st.integers(0, 200_000), st.integers(0, 5000), st.none() | st.floats(0, 1e5)
)
histories = st.lists(st.tuples(st.floats(NOW - 600, NOW), st.integers(0, 30)), max_size=20).map(
    lambda recs: History(recommendations=tuple(sorted(recs)))
)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 40), readings | st.none(), histories)
def test_always_within_min_and_max(policy: ScalingSpec, current, reading, history) -> None:
    decision = decide(current, reading, policy, history)
    if policy.min_replicas <= current <= policy.max_replicas or reading is None:
        assert policy.min_replicas <= decision.replicas <= policy.max_replicas or (
            reading is None and decision.reason == "DepthUnknown"
        )
    else:  # out of bounds (bounds just changed): back towards them by maxStep at most
        assert abs(decision.replicas - current) <= policy.max_step


@settings(max_examples=300, deadline=None)
@given(
    policies,
    st.integers(0, 40),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.integers(0, 2000),
    st.none() | st.floats(0.1, 1e5),
    histories,
)
def test_monotone_in_depth(policy, current, a, b, unacked, rate, history) -> None:
    low, high = sorted((a, b))
    fewer = decide(current, read(low, unacked, rate), policy, history)
    more = decide(current, read(high, unacked, rate), policy, history)
    assert fewer.replicas <= more.replicas


@settings(max_examples=150, deadline=None)
@given(
    policies,
    st.integers(100, 50_000),
    st.lists(st.floats(-0.1, 0.1), min_size=10, max_size=80),
)
def test_no_flapping_under_noisy_constant_depth(policy, depth, noise) -> None:
    """No scale-down within the scale-down window after a scale-up, and after the first
    window the count stays inside the noise's own range of recommendations."""
    current, history, now = policy.min_replicas, History(), NOW
    last_up: float | None = None
    counts = []
    for jitter in noise:
        decision = decide(current, read(max(0, round(depth * (1 + jitter)))), policy, history, now)
        if decision.replicas > current:
            last_up = now
        if decision.replicas < current and last_up is not None:
            assert now - last_up >= policy.scale_down_stabilization_seconds
        current, history = decision.replicas, decision.history
        counts.append(current)
        now += policy.poll_interval_seconds
    # The noise's own range, from where the run started: activation gates only a start
    # from zero, so a run that began with consumers running is not held by it.
    start = policy.min_replicas
    lows = [decide(start, read(round(depth * 0.9)), policy).recommendation or 0]
    highs = [decide(start, read(round(depth * 1.1) + 1), policy).recommendation or 0]
    settled = counts[len(counts) // 2 :] if policy.max_step >= policy.max_replicas else []
    assert all(lows[0] - 1 <= c <= highs[0] for c in settled)


@settings(max_examples=300, deadline=None)
@given(
    policies,
    st.integers(0, 40),
    st.integers(-60, 60),
    st.integers(0, 3),
    st.none() | st.floats(0, 1e5),
    histories,
)
def test_activation_threshold_only_matters_at_zero(
    policy, current, offset, unacked, rate, history
) -> None:
    """Running consumers decide as if there were no threshold; at zero, a depth at or
    below it keeps them at zero (minReplicas aside) and one above it decides as without.
    Depths are drawn around the threshold, where the two could differ."""
    reading = read(max(0, policy.activation_threshold + offset), unacked, rate)
    without = policy.model_copy(update={"activation_threshold": 0})
    gated = decide(current, reading, policy, history)
    ungated = decide(current, reading, without, history)
    if current > 0 or reading.depth > policy.activation_threshold:
        assert gated.replicas == ungated.replicas
    else:
        held = 1 if reading.unacked > 0 else 0  # step 5 still applies at zero
        assert gated.recommendation == max(policy.min_replicas, min(policy.max_replicas, held))
        assert gated.replicas <= ungated.replicas


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 40), st.integers(1, 10))
def test_fallback_when_reads_fail(policy: ScalingSpec, current: int, failures: int) -> None:
    history = History()
    decision = None
    for _ in range(failures):
        decision = decide(current, None, policy, history)
        history = decision.history
    assert decision is not None
    if failures >= policy.failure_threshold:
        assert decision.reason == "FallbackReplicas"
        assert decision.replicas == max(
            policy.min_replicas, min(policy.max_replicas, policy.fallback_replicas)
        )
    else:
        assert (decision.replicas, decision.reason) == (current, "DepthUnknown")


def test_the_worked_example_of_docs_operator_md() -> None:
    """The table in docs/operator.md, step by step (the docs must match the code)."""
    policy = ScalingSpec(
        min_replicas=1,
        max_replicas=10,
        target_messages_per_replica=1000,
        scale_down_stabilization_seconds=300,
        max_step=4,
    )
    steps = [
        (0, read(1500, 400), 2, "Steady"),
        (15, read(8000, 2000), 6, "ScaledUp"),
        (30, read(9000, 6000), 10, "ScaledUp"),
        (60, read(3000, 1000, 50.0), 10, "Stabilizing"),
        (330, read(1200, 800, 20.0), 6, "ScaledDown"),
        (345, read(0, 0), 4, "ScaledDown"),
    ]
    current, history = 2, History()
    for t, reading, replicas, reason in steps:
        decision = decide(current, reading, policy, history, float(t))
        assert (decision.replicas, decision.reason) == (replicas, reason), t
        current, history = decision.replicas, decision.history


# --- batch messages: the target is in changes, depth in messages ---------------------


@pytest.mark.parametrize(
    ("target_changes", "target_messages", "changes_per_message", "expected"),
    [
        (1000, None, None, 1000.0),  # not observed: one change per message
        (1000, None, 1.0, 1000.0),  # one change per message (pack_max_changes 1)
        (1000, None, 0.5, 1000.0),  # nonsense below 1: taken as 1, never fewer replicas
        (1000, None, 50.0, 20.0),  # 50 changes a message: 20 messages are 1,000 changes
        (1000, None, 4000.0, 1.0),  # at least one message
        (1000, 300, 50.0, 300.0),  # a target in messages is used as is
    ],
)
def test_target_in_changes_becomes_messages_at_the_observed_ratio(
    target_changes: int, target_messages: int | None, changes_per_message: float | None, expected
) -> None:
    policy = spec(
        target_changes_per_replica=target_changes, target_messages_per_replica=target_messages
    )
    assert messages_per_replica(policy, changes_per_message) == expected


def test_batch_messages_scale_on_the_changes_they_carry() -> None:
    policy = spec(target_changes_per_replica=1000, target_messages_per_replica=None)
    # 100 messages of 50 changes: 5,000 changes, five replicas' worth.
    batched = DepthReading(ready=100, unacked=0, source="test", changes_per_message=50.0)
    decision = decide(1, batched, policy)
    assert decision.replicas == 5 and decision.reason == "ScaledUp"
    assert "1000 changes = 20 messages at 50.0 changes per message" in decision.message
    # The same depth of one-change messages is a tenth of one replica's work.
    single = DepthReading(ready=100, unacked=0, source="test", changes_per_message=1.0)
    assert decide(1, single, policy).replicas == 1
    # Not observed yet (no consumer running): one change per message is assumed.
    unknown = DepthReading(ready=100, unacked=0, source="test")
    assert decide(0, unknown, policy).replicas == 1
    assert "changes per message not observed" in decide(0, unknown, policy).message


@given(
    depth=st.integers(min_value=0, max_value=10**6),
    ratio=st.floats(min_value=1.0, max_value=1000.0),
)
@settings(max_examples=200, deadline=None)
def test_more_changes_per_message_never_means_fewer_replicas(depth: int, ratio: float) -> None:
    policy = spec(
        max_replicas=1000, target_changes_per_replica=1000, target_messages_per_replica=None
    )
    fewer = recommend(
        DepthReading(ready=depth, unacked=0, source="t", changes_per_message=ratio), policy, 1
    )
    more = recommend(
        DepthReading(ready=depth, unacked=0, source="t", changes_per_message=ratio * 2), policy, 1
    )
    assert more >= fewer
