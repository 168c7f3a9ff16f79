"""How many consumers a Pipeline needs: a pure decision from queue depth.

``desired_replicas(observation, spec, history, now)`` follows KEDA's RabbitMQ scaler
(``QueueLength`` mode) and the HPA's scaling behaviour, then adds what KEDA users
keep asking for. In order:

1. **Manual**: with ``scaling.enabled: false`` the count is ``consumer.replicas``.
2. **Failed reads**: a failed depth read keeps the current count; after
   ``failureThreshold`` failures in a row the count is ``fallbackReplicas`` (KEDA's
   fallback), clamped to [min, max].
3. **Depth** counts ready *plus unacknowledged* messages: work in flight is never
   invisible (KEDA counts ready messages only, so a busy consumer looks idle). A
   message carries many changes (the producer packs them), so the target is set in
   changes and turned into messages with the changes per message the consumers
   observe (:func:`messages_per_replica`).
4. **Recommendation** ``ceil(depth / messages per replica)``, clamped to [min, max].
   ``activationThreshold`` gates only the way up from zero: with no consumer running,
   depth at or below it recommends 0 (KEDA's activation). Running consumers are not
   stopped by it: they go to zero only when the queue is empty, so a depth hovering
   around the threshold does not start and stop them in turn.
5. **Never to zero while messages are unacknowledged** (KEDA's scale-to-zero requeue
   loop: killing the last consumer requeues its unacked messages, which activates the
   scaler again): at least one replica while ``unacked > 0``.
6. **Stabilization** like the HPA: scale up only to the lowest recommendation of the
   scale-up window, down only to the highest recommendation of the scale-down window.
7. **Draining backlog**: while more than one replica's target is queued, no
   scale-down below the replicas that drain it within the scale-down window at the
   measured per-replica ack rate; with such a backlog and no ack rate measured (or
   none at all), no scale-down.
8. **Max step**: at most ``maxStep`` replicas added or removed per decision.

Scale from zero reads the broker (the management API), never a consumer's metrics: a
consumer that is not running reports nothing. Time is a parameter: no clock here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from cdcflow_operator.models import ConsumerSpec, ScalingSpec


@dataclass(frozen=True)
class DepthReading:
    """One read of the queue, and where it came from."""

    ready: int
    unacked: int
    source: str
    ack_rate: float | None = None  # acknowledgements per second, all consumers
    # Mean changes per consumed message, from the consumers' cdcflow_changes_per_message
    # (None: not observed, e.g. no consumer running: taken as 1).
    changes_per_message: float | None = None

    @property
    def depth(self) -> int:
        return self.ready + self.unacked


@dataclass(frozen=True)
class Observation:
    """What the decision needs: the current count and the latest read (None: failed)."""

    current_replicas: int
    reading: DepthReading | None
    read_error: str | None = None


@dataclass(frozen=True)
class History:
    """Recommendations inside the stabilization windows, and failed reads in a row."""

    recommendations: tuple[tuple[float, int], ...] = ()
    failed_reads: int = 0


@dataclass(frozen=True)
class ScaleDecision:
    """The count to realize, why (a CamelCase reason and a sentence), the new history."""

    replicas: int
    reason: str
    message: str
    history: History = field(default_factory=History)
    recommendation: int | None = None

    def changes(self, current: int) -> bool:
        return self.replicas != current


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def messages_per_replica(spec: ScalingSpec, changes_per_message: float | None) -> float:
    """Step 3: the target queue depth per replica, in messages.

    ``targetMessagesPerReplica`` when set; else ``targetChangesPerReplica`` divided by
    the observed changes per message (unknown or below 1: 1, i.e. one change per
    message, which recommends more replicas rather than fewer), at least one message.
    """
    if spec.target_messages_per_replica is not None:
        return float(spec.target_messages_per_replica)
    ratio = changes_per_message if changes_per_message and changes_per_message > 1 else 1.0
    return max(1.0, spec.target_changes_per_replica / ratio)


def recommend(reading: DepthReading, spec: ScalingSpec, current: int) -> int:
    """Steps 3-5: the raw recommendation for one reading, clamped to [min, max].

    ``current`` is the running count: the activation threshold applies only at zero.
    """
    depth = reading.depth
    target = messages_per_replica(spec, reading.changes_per_message)
    dormant = current == 0 and depth <= spec.activation_threshold
    raw = 0 if dormant else math.ceil(depth / target)
    if reading.unacked > 0:
        raw = max(raw, 1)
    return _clamp(raw, spec.min_replicas, spec.max_replicas)


def _held_for_unacked(reading: DepthReading, spec: ScalingSpec, current: int) -> bool:
    """Step 5 is what keeps a replica: without the unacked messages it would be zero."""
    if reading.unacked == 0 or spec.min_replicas > 0:
        return False
    return recommend(replace(reading, unacked=0), spec, current) == 0


def _drain_floor(reading: DepthReading, current: int, spec: ScalingSpec) -> int:
    """Step 7: fewest replicas that still drain the backlog within the scale-down window."""
    if reading.depth <= messages_per_replica(spec, reading.changes_per_message) or current == 0:
        return 0  # no backlog: less than one replica's worth
    if not reading.ack_rate or reading.ack_rate <= 0:
        return current
    per_replica = reading.ack_rate / current
    window = max(spec.scale_down_stabilization_seconds, spec.poll_interval_seconds)
    needed = reading.depth / (per_replica * window) if per_replica * window > 0 else math.inf
    return current if not math.isfinite(needed) else min(current, math.ceil(needed))


def desired_replicas(
    observation: Observation,
    spec: ScalingSpec,
    history: History,
    now: float,
    *,
    consumer: ConsumerSpec | None = None,
) -> ScaleDecision:
    """The consumer count for ``now``; see the module's docstring for the rules."""
    current = observation.current_replicas
    if not spec.enabled:
        manual = consumer.replicas if consumer is not None else current
        return ScaleDecision(
            manual, "ManualReplicas", f"scaling is off: consumer.replicas is {manual}", History()
        )

    reading = observation.reading
    if reading is None:
        failed = history.failed_reads + 1
        kept = replace(history, failed_reads=failed)
        why = observation.read_error or "the queue depth could not be read"
        if failed >= spec.failure_threshold:
            fallback = _clamp(spec.fallback_replicas, spec.min_replicas, spec.max_replicas)
            return ScaleDecision(
                fallback,
                "FallbackReplicas",
                f"{failed} depth reads failed in a row ({why}): fallback to {fallback} replicas",
                kept,
            )
        return ScaleDecision(
            current,
            "DepthUnknown",
            f"depth read {failed} of {spec.failure_threshold} failed ({why}): keeping {current}",
            kept,
        )

    rec = recommend(reading, spec, current)
    horizon = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    kept_recs = tuple((t, r) for t, r in history.recommendations if now - t < horizon)
    new_history = History(recommendations=(*kept_recs, (now, rec)), failed_reads=0)

    up = min([rec] + [r for t, r in kept_recs if now - t < spec.scale_up_stabilization_seconds])
    down = max([rec] + [r for t, r in kept_recs if now - t < spec.scale_down_stabilization_seconds])
    target = current
    if target < up:
        target = up
    if target > down:
        target = down
    # An out-of-bounds current count (min or max just changed) comes back into bounds.
    target = _clamp(target, spec.min_replicas, spec.max_replicas)

    depth_text = (
        f"depth {reading.depth} ({reading.ready} ready + {reading.unacked} unacked, "
        f"{reading.source})"
    )
    reason, message = "Steady", f"{depth_text}: {current} replicas suffice"
    if target < current:
        floor = min(_drain_floor(reading, current, spec), spec.max_replicas)
        if floor > target:
            target = floor
            reason = "DrainingBacklog"
            message = (
                f"{depth_text}: holding {target} replicas so the backlog drains within the "
                f"{spec.scale_down_stabilization_seconds} s window"
            )
    if reason == "Steady" and rec != target and target == current:
        reason = "Stabilizing"
        message = f"{depth_text}: recommendation {rec} held by the stabilization window"

    stepped = _clamp(target, current - spec.max_step, current + spec.max_step)
    if stepped > current:
        reason = "ScaledUp"
        message = (
            f"{depth_text}: {current} -> {stepped} replicas "
            f"(target {_target_text(spec, reading)} per replica)"
        )
    elif stepped < current:
        reason = "ScaledDown"
        message = f"{depth_text}: {current} -> {stepped} replicas"
    if stepped != target:
        message += f", limited by maxStep {spec.max_step} (wanted {target})"
    if (
        reason in ("Steady", "Stabilizing")
        and stepped >= 1
        and _held_for_unacked(reading, spec, current)
    ):
        reason = "UnackedMessages"
        message = f"{depth_text}: not scaling to zero while messages are unacknowledged"
    return ScaleDecision(stepped, reason, message, new_history, rec)


def _target_text(spec: ScalingSpec, reading: DepthReading) -> str:
    messages = messages_per_replica(spec, reading.changes_per_message)
    if spec.target_messages_per_replica is not None:
        return f"{spec.target_messages_per_replica} messages"
    ratio = reading.changes_per_message
    seen = f"{ratio:.1f} changes per message" if ratio else "changes per message not observed: 1"
    return f"{spec.target_changes_per_replica} changes = {messages:.0f} messages at {seen}"


def history_from_status(recommendations: list[list[float]], failed_reads: int) -> History:
    """The history kept in ``status.scaling`` (it survives operator restarts)."""
    return History(
        recommendations=tuple((float(t), int(r)) for t, r in recommendations),
        failed_reads=failed_reads,
    )


def history_to_status(history: History) -> tuple[list[list[float]], int]:
    return [[t, float(r)] for t, r in history.recommendations], history.failed_reads
