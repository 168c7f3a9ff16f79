"""Every shell script the repository tracks passes shellcheck: the cluster, engine, kind,
Flink and install scripts, the images' entrypoints and CI's own entry point.

`make test` installs shellcheck first (scripts/install-shellcheck.sh); where it cannot,
this test skips with the reason, except under CI, where a skipped check would hide a
broken script."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tracked_shell_scripts() -> list[Path]:
    """Files git tracks that are shell scripts: `*.sh`, or a bash/sh shebang."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    scripts = []
    for name in filter(None, listed):
        path = REPO / name.decode()
        if not path.is_file():
            continue
        if path.suffix == ".sh":
            scripts.append(path)
        elif not path.suffix:
            with path.open("rb") as handle:
                first = handle.readline(100)
            if first.startswith(b"#!") and first.rstrip().endswith((b"bash", b"/sh")):
                scripts.append(path)
    return sorted(scripts)


def test_every_shell_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        reason = "shellcheck is not installed (make shellcheck, or apt-get install shellcheck)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    scripts = tracked_shell_scripts()
    names = {str(p.relative_to(REPO)) for p in scripts}
    # The list is found, not written by hand: these must be among what was found.
    assert {
        ".ci/run",
        "scripts/cluster/start.sh",
        "scripts/engine/up.sh",
        "scripts/kind/up.sh",
        "scripts/flink-setup.sh",
        "scripts/pytest.sh",
        "images/rabbitmq/entrypoint.sh",
    } <= names, names
    done = subprocess.run(
        [shellcheck, "-x", *map(str, scripts)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout
