"""Where the workers' time goes: py-spy stacks and per-thread CPU, while they run.

``python -m bench --profile DIR`` attaches py-spy (a sampling profiler that
needs no change to the worker; not a project dependency: ``pip install
py-spy`` anywhere and pass ``--py-spy PATH`` if it is not on PATH) to the
producer and consumer during the end-to-end run, and to the consumer while it
drains the backlog. For each it writes the collapsed stacks
(``<phase>-<worker>.txt``, for flamegraph tools), a summary of the frames that
take the most samples, and the CPU seconds of each of the process's threads
from /proc (the native ClickHouse threads inside chdb are invisible to a
Python profiler but not to /proc).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench.stack import Worker

_TICKS = os.sysconf("SC_CLK_TCK")
Snapshot = dict[int, tuple[str, float]]
# Frames that say nothing about where time goes (the interpreter, the CLI, threads).
_NOISE = ("<frozen ", "threading.py", "typer/", "runpy", "cdcflow/cli.py", "cdcflow/__main__.py")
# Leaf frames that are a thread waiting (py-spy cannot always tell them from work).
_WAITING = ("selectors.py", "PollPoller.poll", "Condition.wait", "Event.wait", "queue.py")


def find_py_spy(explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("py-spy")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (name, CPU seconds)} of a process, from /proc."""
    threads: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return threads


def python_thread_names(collapsed: Path) -> dict[int, str]:
    """Thread ids to Python thread names, from py-spy's ``thread (tid): name`` frames."""
    names: dict[int, str] = {}
    if not collapsed.exists():
        return names
    for line in collapsed.read_text(errors="replace").splitlines():
        head = line.split(";", 1)[0]
        if head.startswith("thread (") and "): " in head:
            tid, name = head[len("thread (") :].split("): ", 1)
            if tid.isdigit():
                names[int(tid)] = name.rsplit(" ", 1)[0] if name[-1].isdigit() else name
    return names


def cpu_by_thread(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    names: dict[int, str],
) -> dict[str, float]:
    """CPU seconds per thread name between two snapshots (short-lived threads summed)."""
    used: collections.defaultdict[str, float] = collections.defaultdict(float)
    for tid, (name, seconds) in after.items():
        label = names.get(tid, name)
        if label.startswith("Thread-") and "(" in label:
            label = "beam bundle threads (" + label.split("(", 1)[1]
        used[label] += seconds - before.get(tid, (name, 0.0))[1]
    ranked = sorted(used.items(), key=lambda item: -item[1])
    return {name: round(seconds, 2) for name, seconds in ranked if seconds > 0}


def summarize(collapsed: Path, top: int = 40) -> str:
    """Inclusive share of samples per frame, per thread, from py-spy's raw output."""
    by_thread: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        kept = [frame for frame in parts[1:] if not any(n in frame for n in _NOISE)]
        # Waiting in Python, or in C with nothing of Python above it (Beam's state
        # sampler threads sleep in a Cython loop: py-spy sees them as running).
        if not kept or any(marker in parts[-1] for marker in _WAITING):
            waiting += count
            continue
        total += count
        by_thread[parts[0].split(": ", 1)[-1]] += count
        for frame in set(kept):
            frames[frame] += count
        leaves[kept[-1]] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples of work ({waiting} of threads waiting left out)", "", "by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_thread.most_common(10)]
    lines += ["", "inclusive (a frame and what it calls):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in frames.most_common(top)]
    lines += ["", "self (the frame itself):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in leaves.most_common(top // 2)]
    return "\n".join(lines) + "\n"


class Profiler:
    """Attach to workers for one phase; ``attach`` matches :data:`bench.pipeline.Attach`."""

    def __init__(self, out_dir: Path, py_spy: str | None, rate: int = 100) -> None:
        self.out_dir = out_dir
        self.py_spy = py_spy
        self.rate = rate
        out_dir.mkdir(parents=True, exist_ok=True)

    def attach(self, workers: list[Worker], phase: str) -> Callable[[], None]:
        started: list[tuple[Worker, subprocess.Popen[bytes] | None, Path, Snapshot]] = []
        for worker in workers:
            collapsed = self.out_dir / f"{phase}-{worker.name}.txt"
            spy = None
            if self.py_spy is not None:
                command = [self.py_spy, "record", "--pid", str(worker.pid)]
                command += ["--rate", str(self.rate), "--format", "raw", "--threads"]
                command += ["--output", str(collapsed)]
                spy = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            started.append((worker, spy, collapsed, thread_cpu(worker.pid)))

        def finish() -> None:
            for worker, spy, collapsed, before in started:
                after = thread_cpu(worker.pid)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    try:
                        spy.wait(60)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                threads = cpu_by_thread(before, after, python_thread_names(collapsed))
                lines = [f"CPU seconds by thread ({phase}, {worker.name}):"]
                lines += [f"  {seconds:8.2f}  {name}" for name, seconds in threads.items()]
                text = "\n".join(lines) + "\n\n"
                if collapsed.exists():
                    text += summarize(collapsed)
                (self.out_dir / f"{phase}-{worker.name}.summary.txt").write_text(text)

        return finish
