"""kopf handlers: thin, each parses, calls the reconciler, maps errors for kopf.

kopf keeps its progress and last-handled spec in annotations (``cdcflow.io/...``),
never in ``status``, which belongs to the reconciler. Transient API failures are
``TemporaryError`` (kopf retries with backoff); an invalid spec is ``PermanentError``
on create/update (nothing to retry until the spec changes) and is re-checked by
the timer, so a fixed Secret or spec is picked up without an edit. A child the server
refuses is reported in the status first (``Reconciled=False, reason=ApplyFailed``), then
mapped the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Any

import kopf

from cdcflow_operator import kube, reconciler
from cdcflow_operator.models import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)
RESOURCE = (GROUP, VERSION, PLURAL)
TIMER_INTERVAL_S = float(os.environ.get("CDCFLOW_OPERATOR_INTERVAL_S", "5"))
_cluster: kube.Cluster | None = None
# One reconcile of a Pipeline at a time: kopf runs the change handlers and the timer of
# one object concurrently (sync handlers in a thread pool).
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def cluster() -> kube.Cluster:
    global _cluster  # one client per process, made on first use
    if _cluster is None:
        _cluster = kube.Cluster(kube.api_client())
    return _cluster


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60


def _run(body: Any, *, scale: bool, permanent: bool) -> None:
    try:
        with _locks[body["metadata"]["uid"]]:
            reconciler.reconcile(body, cluster(), time.time(), scale=scale)
    except reconciler.InvalidSpec as error:
        if permanent:
            raise kopf.PermanentError(f"invalid spec: {error}") from None
        log.warning("invalid spec: %s", error)
    except reconciler.ApplyFailed as error:
        # The status already says Reconciled=False, ApplyFailed, with the server's words.
        if error.temporary:
            raise kopf.TemporaryError(str(error), delay=10) from None
        if permanent:
            raise kopf.PermanentError(f"a child was refused: {error}") from None
        log.warning("a child was refused: %s", error)
    except kube.KubeError as error:
        if error.temporary:
            raise kopf.TemporaryError(str(error), delay=10) from None
        raise kopf.PermanentError(str(error)) from None


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.resume(*RESOURCE)
def pipeline_changed(body: kopf.Body, **_: Any) -> None:
    """Apply the spec now; the consumer count is left to the timer."""
    _run(body, scale=False, permanent=True)


@kopf.timer(*RESOURCE, interval=TIMER_INTERVAL_S, initial_delay=1.0)
def pipeline_tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Level-based: repair drift every tick; scale at the spec's poll interval."""
    spec = body.get("spec") or {}
    poll = float((spec.get("scaling") or {}).get("pollIntervalSeconds") or 15)
    uid = body["metadata"]["uid"]
    last = memo.setdefault("polled", {}).get(uid, 0.0)
    due = time.monotonic() - last >= poll
    if due:
        memo["polled"][uid] = time.monotonic()
    _run(body, scale=due, permanent=False)


@kopf.on.delete(*RESOURCE, optional=True)
def pipeline_deleted(body: kopf.Body, **_: Any) -> None:
    """Nothing to do: children go by ownership, volumes by spec.deletionPolicy."""
    meta = body["metadata"]
    policy = (body.get("spec") or {}).get("deletionPolicy", "Retain")
    log.info("Pipeline %s/%s deleted; data volumes: %s", meta["namespace"], meta["name"], policy)
