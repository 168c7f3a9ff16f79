"""The workers' collector settings: only their entry points change them."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from cdcflow import gctuning
before = gc.get_threshold()
gctuning.refreeze()  # not tuned: a no-op
assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
gctuning.tune()
assert gc.get_threshold() == gctuning.THRESHOLDS
frozen = gc.get_freeze_count()
assert frozen > 0
kept = [[index] for index in range(1000)]  # more long-lived state
gctuning.refreeze()
assert gc.get_freeze_count() >= frozen + 1000
"""


def test_tune_freezes_the_heap_and_raises_thresholds_in_its_own_process() -> None:
    subprocess.run([sys.executable, "-c", SCRIPT], check=True, timeout=60)
