"""kind, as far as it can be checked without a kind node image (none can be pulled here):
the scripts pass shellcheck and answer --help; kind-up's dry run lists every step; the
real kind binary (v0.33.0, built from the Go module proxy when missing) decodes
kind-config.yaml strictly; the host ports reach the NodePorts kind-up creates."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import REPO

KIND_DIR = REPO / "scripts" / "kind"
CONFIG = REPO / "kind-config.yaml"
HOST_PORTS = {
    3000: "Grafana",
    9090: "Prometheus",
    15672: "RabbitMQ management",
    8123: "ClickHouse HTTP",
}


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("script", ["up.sh", "down.sh", "prometheus-crds.sh"])
def test_help_and_unknown_arguments(script: str) -> None:
    done = run("bash", str(KIND_DIR / script), "--help")
    assert done.returncode == 0 and done.stdout.startswith("Usage:"), done.stderr
    wrong = run("bash", str(KIND_DIR / script), "--frobnicate")
    assert wrong.returncode != 0 and "unknown argument: --frobnicate" in wrong.stderr


def dry_run(**env: str) -> list[str]:
    done = run("bash", str(KIND_DIR / "up.sh"), "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    return [line.removeprefix("+ ") for line in done.stdout.splitlines()]


def test_kind_up_steps_in_order() -> None:
    steps = dry_run(TAG="9.9.9", CLUSTER="demo")
    joined = "\n".join(steps)
    order = [
        f"kind create cluster --name demo --config {CONFIG}",
        "scripts/engine/images.sh",
        "kind load docker-image --name demo cdcflow/workers:9.9.9 cdcflow/flink:9.9.9"
        " cdcflow/operator:9.9.9",
        "apply --server-side --force-conflicts -f " + str(REPO / "helm/cdcflow/crds/pipeline.yaml"),
        f"helm upgrade --install cdcflow {REPO / 'helm/cdcflow'}",
        "-f " + str(REPO / "examples/mongodb.yaml"),
        "-f " + str(REPO / "examples/pipeline.yaml"),
        "--for=condition=Ready pipeline/viewing-logs",
    ]
    positions = [joined.find(step) for step in order]
    assert all(p >= 0 for p in positions), list(zip(order, positions, strict=True))
    assert positions == sorted(positions)
    assert "kube-prometheus-stack" not in joined
    assert "--set image.tag=9.9.9" in joined


def test_prometheus_adds_the_stack_and_the_charts_monitoring() -> None:
    joined = "\n".join(dry_run(PROMETHEUS="1"))
    assert joined.find("kube-prometheus-stack") < joined.find("helm upgrade --install cdcflow")
    assert "monitoring.podMonitors.enabled=true" in joined
    assert "monitoring.prometheusRule.enabled=true" in joined


def node_ports_of_kind_up() -> dict[int, str]:
    """NodePorts kind-up gives: ui-services.yaml's, and the stack's --set values."""
    ports = {}
    for doc in yaml.safe_load_all((KIND_DIR / "ui-services.yaml").read_text()):
        for port in doc["spec"]["ports"]:
            ports[port["nodePort"]] = doc["metadata"]["name"]
    text = (KIND_DIR / "up.sh").read_text()
    for name in ("grafana", "prometheus"):
        value = text.split(f"{name}.service.nodePort=")[1].split()[0]
        ports[int(value)] = name
    return ports


def test_host_ports_reach_the_node_ports() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    (control_plane,) = [n for n in config["nodes"] if n["role"] == "control-plane"]
    mappings = {m["hostPort"]: m for m in control_plane["extraPortMappings"]}
    assert set(mappings) == set(HOST_PORTS)
    assert all(m["listenAddress"] == "127.0.0.1" for m in mappings.values())  # loopback only
    node_ports = node_ports_of_kind_up()
    assert {m["containerPort"] for m in mappings.values()} == set(node_ports)
    images = {n["image"] for n in config["nodes"]}
    assert len(images) == 1 and "@sha256:" in images.pop()


@pytest.fixture(scope="module")
def kind_bin() -> Path:
    done = run("bash", "-c", f". {KIND_DIR / 'common.sh'} && ensure_kind", timeout=600)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def kind_create(kind: Path, config: Path) -> str:
    """``kind create cluster`` with no docker to talk to: kind decodes and checks the
    config first, then stops at the provider. Returns its error text."""
    done = run(
        str(kind),
        "create",
        "cluster",
        "--name",
        "cdcflow-config-check",
        "--config",
        str(config),
        env={
            "DOCKER_HOST": "unix:///nonexistent/docker.sock",
            "KIND_EXPERIMENTAL_PROVIDER": "docker",
        },
    )
    assert done.returncode != 0  # no cluster can be made here
    return done.stderr


def test_kind_decodes_the_config(kind_bin: Path, tmp_path: Path) -> None:
    version = run(str(kind_bin), "version").stdout
    assert version.startswith("kind v0.33.0"), version
    error = kind_create(kind_bin, CONFIG)
    assert "unable to decode config" not in error, error
    assert "docker" in error  # it got as far as the container engine
    # ... and the same decoder refuses a config with a mistake in it.
    broken = yaml.safe_load(CONFIG.read_text())
    broken["nodes"][0]["extraPortMappings"][0]["hostport"] = 1
    bad = tmp_path / "kind-config.yaml"
    bad.write_text(yaml.safe_dump(broken))
    assert "unable to decode config" in kind_create(kind_bin, bad)
