"""The cluster scripts' failure paths: what a user sees when Go is missing or too old,
and when a component does not come up (its name and log tail, nothing left running)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.control_plane import (
    SCRIPTS,
    ControlPlaneError,
    binaries_dir,
    read_env_file,
    start_control_plane,
    wait_for,
)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _build(tmp_path: Path, go: str) -> subprocess.CompletedProcess[str]:
    # An empty cache, so the build has work to do and must find a Go toolchain.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "GO": go}
    return subprocess.run(
        [str(SCRIPTS / "build.sh")], capture_output=True, text=True, env=env, timeout=60
    )


def test_build_says_what_to_do_when_go_is_missing(tmp_path: Path) -> None:
    result = _build(tmp_path, str(tmp_path / "no-such-go"))
    assert result.returncode == 1
    assert "Go 1.26.0 or newer is needed" in result.stderr
    assert "https://go.dev/dl/" in result.stderr
    assert not (tmp_path / "cache" / "cdcflow" / "k8s").exists()


def test_build_refuses_a_go_older_than_kubernetes_needs(tmp_path: Path) -> None:
    old_go = tmp_path / "go"
    old_go.write_text('#!/bin/sh\n[ "$1 $2" = "env GOVERSION" ] && echo go1.22.5\n')
    old_go.chmod(0o755)
    result = _build(tmp_path, str(old_go))
    assert result.returncode == 1
    assert "is Go 1.22.5; Kubernetes v1.37.2 needs Go 1.26.0 or newer" in result.stderr


def test_start_names_the_failing_component_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (binaries_dir() / "kube-apiserver").exists():
        pytest.fail("cluster binaries missing: run `make cluster-build` first", pytrace=False)
    state = tmp_path / "state"
    monkeypatch.setenv("CDCFLOW_KUBE_APISERVER_ARGS", "--no-such-flag=1")
    with pytest.raises(ControlPlaneError) as failed:
        start_control_plane(state)
    message = str(failed.value)
    assert "kube-apiserver exited" in message
    assert "unknown flag: --no-such-flag" in message  # the log tail, shown to the user
    # etcd had started; the failed start stopped it and freed its port.
    assert not (state / "pids").exists()
    etcd_port = read_env_file(state / "cluster.env")["ETCD_PORT"]
    listening = subprocess.run(
        ["ss", "-Htln", f"sport = :{etcd_port}"], capture_output=True, text=True, check=True
    ).stdout
    assert listening.strip() == ""


def test_cluster_stops_when_its_owner_process_dies(tmp_path: Path) -> None:
    # The fixture passes pytest's PID; here a stand-in owner that we can kill.
    owner = subprocess.Popen(["sleep", "600"])
    state = tmp_path / "owned"
    try:
        plane = start_control_plane(state, nodes=1, owner_pid=owner.pid)
        pids = [int(line.split()[1]) for line in (state / "pids").read_text().splitlines()]
        assert len(pids) == 6  # five components and the watchdog
        assert plane.kubectl("get", "nodes", "-o", "name").stdout.split() == ["node/kwok-node-0"]
    finally:
        owner.kill()
        owner.wait()

    def all_gone() -> bool:
        return not state.exists() and not any(_alive(pid) for pid in pids)

    wait_for("the watchdog to stop the cluster and remove its state", all_gone, timeout=90)
    for port in (plane.env[key] for key in plane.env if key.endswith("_PORT")):
        listening = subprocess.run(
            ["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout
        assert listening.strip() == ""
