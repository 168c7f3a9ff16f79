"""Process-wide state the consumer's DoFns share: the stop flag and open connections.

Beam instantiates DoFns from pickled copies, so they cannot hold references to
each other. The source, the sink and the dead-letter step of one pipeline run in
one fused stage of one worker process, so they meet here instead: the source
registers its RabbitMQ connection under a key that travels with each batch, and
a SIGTERM handler sets :data:`STOP` for all of them.

Connections belong to the *restriction* (one competing consumer), not to a DoFn
instance (:class:`Slot`). Beam's SDK worker keeps a bundle's DoFn instances aside
until the bundle is finalized, and on Flink that is after the next checkpoint:
meanwhile the next bundle of the same restriction runs on fresh instances. A
connection per instance would strand its prefetched messages in an instance that
may never run again (what stalled the first Flink runs); a connection per
restriction hands them to whichever instance runs next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from cdcflow.consumer.rabbitmq import RabbitConsumer

log = logging.getLogger(__name__)
T = TypeVar("T")

STOP = threading.Event()
"""Set on SIGTERM: sources stop taking messages, retry loops give up."""

_consumers: dict[str, RabbitConsumer] = {}
_closers: list[Callable[[], None]] = []
_slots: dict[str, Slot] = {}
_lock = threading.Lock()
_pending_acks = 0
_acks_changed = threading.Condition(_lock)


class Abandoned(RuntimeError):
    """A batch given up because the process is stopping; it was not acked, so the
    broker delivers it again to the next consumer."""


class Slot:
    """One competing consumer: its connection and its progress, shared by every DoFn
    instance that runs its restriction (see the module docstring)."""

    def __init__(self, key: str, now: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.consumer: RabbitConsumer | None = None
        self.taken = 0
        self.last_message_at = now()
        self.finished = False


def slot(key: str) -> Slot:
    """The slot named ``key`` (created on first use, kept until :func:`close_all`)."""
    with _lock:
        found = _slots.get(key)
        if found is None:
            found = _slots[key] = Slot(key)
        return found


def finished_slots() -> int:
    """How many restrictions have ended (a stop condition was met)."""
    with _lock:
        return sum(1 for each in _slots.values() if each.finished)


def ack_registered(count: int = 1) -> None:
    """A bundle registered an ack to run on finalization."""
    global _pending_acks
    with _acks_changed:
        _pending_acks += count


def ack_done(count: int = 1) -> None:
    """A registered ack ran (or was given up)."""
    global _pending_acks
    with _acks_changed:
        _pending_acks = max(0, _pending_acks - count)
        _acks_changed.notify_all()


def pending_acks() -> int:
    with _lock:
        return _pending_acks


def wait_for_acks(timeout: float) -> bool:
    """Wait until every registered ack ran; False if some are still pending."""
    deadline = time.monotonic() + timeout
    with _acks_changed:
        while _pending_acks > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _acks_changed.wait(remaining)
        return True


def register(key: str, consumer: RabbitConsumer) -> None:
    with _lock:
        _consumers[key] = consumer


def unregister(key: str) -> RabbitConsumer | None:
    with _lock:
        return _consumers.pop(key, None)


def lookup(key: str) -> RabbitConsumer:
    with _lock:
        consumer = _consumers.get(key)
    if consumer is None:
        raise RuntimeError(
            f"no RabbitMQ consumer {key!r} in this process: the dead-letter step must be "
            "fused with the source (do not put a shuffle between them)"
        )
    return consumer


def on_close(closer: Callable[[], None]) -> None:
    """Run ``closer`` at :func:`close_all`: for what a DoFn opened and may never get to
    close. A cancelled Flink job never tears its DoFns down (the SDK harness's streams
    just break), and a chdb warehouse left open in this process blocks the next one."""
    with _lock:
        _closers.append(closer)


def close_all() -> None:
    """Close every connection and forget every slot (the end of a consumer run)."""
    global _pending_acks
    with _lock:
        consumers = list(_consumers.items())
        closers = list(_closers)
        _consumers.clear()
        _closers.clear()
        _slots.clear()
        _pending_acks = 0
    for _, consumer in consumers:
        consumer.close()
    for closer in closers:
        try:
            closer()
        except Exception:  # closing what is gone already: nothing to do
            log.debug("closing a DoFn resource failed", exc_info=True)


def retry_until_done(
    action: Callable[[], T],
    *,
    what: str,
    on_failure: Callable[[Exception], None] | None = None,
    initial_s: float = 0.5,
    max_s: float = 15.0,
    sleep: Callable[[float], bool] = STOP.wait,
) -> T:
    """Run ``action`` until it succeeds, backing off exponentially (with jitter).

    For transient failures (a warehouse or broker that is down): nothing is acked
    meanwhile, so waiting loses nothing. Gives up only when :data:`STOP` is set,
    raising :class:`Abandoned`. ``sleep`` returns True to stop (Event.wait). The
    retrying is tenacity's, as everywhere in cdcflow; this adds the log line per
    retry and the stop.
    """
    started = time.monotonic()
    last: BaseException | None = None

    def before_sleep(state: RetryCallState) -> None:
        nonlocal last
        last = error = state.outcome.exception() if state.outcome else None
        if on_failure is not None and isinstance(error, Exception):
            on_failure(error)
        text = str(error) if error is not None else ""
        log.warning(
            "%s failed (%s: %s); retry %d in %.1f s (down for %.0f s so far)",
            what,
            type(error).__name__,
            text.splitlines()[0][:200] if text else "",
            state.attempt_number,
            state.upcoming_sleep,
            time.monotonic() - started,
            extra={"stage": "consumer", "attempt": state.attempt_number},
        )

    def pause(seconds: float) -> None:
        if sleep(seconds):
            raise Abandoned(f"{what}: stopping before it succeeded") from last

    retrying = Retrying(
        retry=retry_if_exception_type(Exception),  # every failure of the action
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s / 2),
        stop=stop_never,
        sleep=pause,
        before_sleep=before_sleep,
        reraise=True,
    )
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return action()

    result = retrying(attempt)
    if attempts > 1:
        log.info(
            "%s succeeded after %d attempts (%.1f s)",
            what,
            attempts,
            time.monotonic() - started,
            extra={"stage": "consumer", "attempt": attempts},
        )
    return result
