"""Status like core controllers: conditions, observedGeneration, a derived phase.

Pure: :func:`set_condition` keeps ``lastTransitionTime`` unless the status flips, and
:func:`phase` is derived from the conditions, never stored on its own.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from cdcflow_operator.models import Condition

READY = "Ready"
RECONCILED = "Reconciled"
SCALING = "Scaling"
DEGRADED = "Degraded"
PAUSED = "Paused"
CONDITION_TYPES = (READY, RECONCILED, SCALING, DEGRADED, PAUSED)

Status = Literal["True", "False", "Unknown"]


def timestamp(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    now: float,
    generation: int | None = None,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; the transition time moves only on a flip."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else timestamp(now)
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_]
    ordered = sorted([*others, new], key=lambda c: _order(c.type))
    return ordered


def _order(type_: str) -> int:
    return CONDITION_TYPES.index(type_) if type_ in CONDITION_TYPES else len(CONDITION_TYPES)


def get(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    condition = get(conditions, type_)
    return condition is not None and condition.status == "True"


def phase(conditions: list[Condition]) -> str:
    """One word for ``kubectl get``: Paused, Failed, Degraded, Scaling, Running or Pending."""
    if is_true(conditions, PAUSED):
        return "Paused"
    ready = get(conditions, READY)
    if ready is not None and ready.reason in ("InvalidSpec", "ApplyFailed"):
        return "Failed"
    if is_true(conditions, DEGRADED):
        return "Degraded"
    if is_true(conditions, SCALING):
        return "Scaling"
    if ready is not None and ready.status == "True":
        return "Running"
    return "Pending"
