"""The garbage collector's settings for the two long-running workers.

Both workers keep a large heap for their whole life (pymongo, pika, Beam, pyarrow,
chdb's client: ~180,000 objects the collector tracks in the consumer) and make a
burst of short-lived containers per change (parsed JSON, envelopes, decoded BSON).
With CPython's default thresholds (700, 10, 10) those bursts set off full
collections every bundle or two, each walking the whole long-lived heap: about a
third of the consumer's transform CPU, measured (issue 18). Reference counting
frees nearly everything here; the collector is only there for cycles.

So the worker entry points (``cdcflow produce``, ``cdcflow consume``) call
:func:`tune` once they are set up: collect once, move everything alive into the
permanent generation (``gc.freeze``: never walked again, still freed by reference
counting), and collect the young generation every 50,000 allocations instead of
700. A Beam worker calls :func:`refreeze` once its pipeline is built, to move that
state out of the way too. Library code, tests and tools keep the defaults.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 20)
_tuned = False


def tune() -> None:
    """Freeze the heap built so far and raise the collection thresholds (see module doc)."""
    global _tuned
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def refreeze() -> None:
    """Once more long-lived state exists (a worker's pipeline): freeze it too, if tuned."""
    if _tuned:
        gc.collect()
        gc.freeze()
