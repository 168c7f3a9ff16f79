"""Session fixtures for the container tests: the engine, started through `make engine`'s
script, and every image built once per session (Docker's layer cache makes a rebuild of
unchanged sources take seconds).

The tests run wherever a container engine can: the private engine needs root (it installs
Debian's docker.io when missing); a user's own engine is used when DOCKER_HOST is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "scripts" / "engine"
IMAGES = ("workers", "flink", "operator", "nx27017", "rabbitmq")
TAG = "0.1.0"


@dataclass(frozen=True)
class Engine:
    """How to reach the engine the images were built with."""

    docker: str
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS`, output captured as text."""
        return subprocess.run(
            [self.docker, *args],
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def ref(name: str) -> str:
    """The tag `make images` gives an image."""
    return f"cdcflow/{name}:{TAG}"


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The private engine (started, or reused, by scripts/engine/up.sh) or the user's."""
    env = dict(os.environ)
    if not env.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        if os.geteuid() != 0 and shutil.which("dockerd") is None:
            pytest.skip("no container engine: run `sudo make engine` or set DOCKER_HOST")
        done = subprocess.run(
            ["bash", str(ENGINE / "up.sh")], capture_output=True, text=True, timeout=900
        )
        # Stop at the end only a daemon this session started (one already running is reused).
        started = "starting dockerd" in done.stderr
        assert done.returncode == 0, f"make engine failed:\n{done.stderr}"
        exports = [ln for ln in done.stdout.splitlines() if ln.startswith("export DOCKER_HOST=")]
        assert exports, f"make engine printed no DOCKER_HOST:\n{done.stdout}"
        env["DOCKER_HOST"] = exports[-1].split("=", 1)[1]
        docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
    else:
        started = False
        docker = shutil.which("docker") or "docker"
    env["DOCKER_BUILDKIT"] = "1"
    yield Engine(docker=docker, env=env)
    if started:
        subprocess.run(["bash", str(ENGINE / "down.sh")], check=False, timeout=120)


FIRST_BUILD_TIMEOUT_S = 3600
"""pytest-timeout counts fixture setup against the first test that needs it: on a fresh
machine that test pays for installing the engine, making the base image with debootstrap
and building every image (Beam, Java, the Flink jars) on two cores, far more than the
suite's default 600 s. Later tests reuse the session's images and stay well under it."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.timeout(FIRST_BUILD_TIMEOUT_S))


@pytest.fixture(scope="session")
def images(engine: Engine, pytestconfig: pytest.Config) -> dict[str, str]:
    """Every image built (once per session) with `make images`' script; its table of
    sizes and build times goes to the terminal (not pytest's capture), so CI's log has it."""
    done = subprocess.run(
        ["bash", str(ENGINE / "images.sh")],
        env={**engine.env, "TAG": TAG, "IMAGES": " ".join(IMAGES)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, f"make images failed:\n{done.stderr[-4000:]}"
    # Past pytest's capture (as capsys.disabled() does for a test): fd-level capture would
    # swallow even the terminal reporter's writes made during a fixture's setup.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + done.stdout, flush=True)
    return {name: ref(name) for name in IMAGES}
