"""`make engine`: a running private daemon is reused (same PID, same socket), and it leaves
the host's network configuration alone (no bridge interface, no iptables rules of its own)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.containers.conftest import ENGINE, Engine

pytestmark = [pytest.mark.slow, pytest.mark.containers]


def private(engine: Engine) -> Path:
    host = engine.env["DOCKER_HOST"]
    if "cdcflow/engine" not in host:
        pytest.skip(f"not the private engine ({host})")
    return Path(host.removeprefix("unix://")).parent


def test_make_engine_reuses_the_running_daemon(engine: Engine) -> None:
    folder = private(engine)
    pid = (folder / "docker.pid").read_text().strip()
    done = subprocess.run(["bash", str(ENGINE / "up.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"reusing the private daemon (pid {pid})" in done.stderr
    assert done.stdout.strip().endswith(f"export DOCKER_HOST={engine.env['DOCKER_HOST']}")
    assert (folder / "docker.pid").read_text().strip() == pid


def test_private_daemon_leaves_host_network_alone(engine: Engine) -> None:
    private(engine)
    info = engine.run("info", "--format", "{{.DockerRootDir}}").stdout.strip()
    assert "cdcflow/engine" in info, f"data root {info} is not in the cache"
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "docker0" not in links, links
    if shutil.which("iptables-save"):
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert "DOCKER" not in rules, rules
