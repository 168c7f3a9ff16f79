"""`docker-compose up` of docker-compose.yaml with the test override, for real: the
simulator's workload reaches the warehouse through producer, RabbitMQ and consumer, and
`cdcflow verify` run in a container says equal; `down -v` leaves no container, network or
volume of the project behind. Every service is on the host network, bound to 127.0.0.1 on
free ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest

from tests.containers.conftest import REPO, Engine
from tests.prometheus_support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.containers]

EVENTS = 1500


def test_compose_up_moves_the_workload_and_down_leaves_nothing(
    engine: Engine, images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose missing: apt-get install -y docker-compose")
    project = f"cdcflowtest{uuid.uuid4().hex[:8]}"
    env = {
        **engine.env,
        "CDCFLOW_TAG": "0.1.0",
        "MONGO_PORT": str(free_port()),
        "AMQP_PORT": str(free_port()),
        "MANAGEMENT_PORT": str(free_port()),
        "DIST_PORT": str(free_port()),
        "EPMD_PORT": str(free_port()),
        "PRODUCER_METRICS_PORT": str(free_port()),
        "CONSUMER_METRICS_PORT": str(free_port()),
        "RABBITMQ_NODENAME": f"{project}@localhost",
        "EVENTS": str(EVENTS),
        "RATE": "300",
        "IDLE_EXIT": "20",
    }
    base = [compose, "-f", "docker-compose.yaml", "-f", "docker-compose.test.yaml", "-p", project]

    def run(
        *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*base, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    started = time.monotonic()
    try:
        services = ("mongodb", "rabbitmq", "clickhouse", "producer", "consumer", "simulator")
        run("up", "-d", "--no-build", *services)
        # The simulator stops after EVENTS events; the consumer after IDLE_EXIT idle seconds.
        for service in ("simulator", "consumer"):
            cid = run("ps", "-q", service).stdout.strip()
            assert cid, f"{service} has no container:\n{run('ps').stdout}"
            code = engine.run("wait", cid, timeout=900).stdout.strip()
            logs = engine.run("logs", "--tail", "30", cid, check=False)
            assert code == "0", f"{service} exited {code}:\n{logs.stdout}\n{logs.stderr}"
        elapsed = time.monotonic() - started
        done = run("run", "--rm", "--no-deps", "verify", "verify", "--json", check=False)
        with capsys.disabled():  # the figure reaches `make test`'s log, not only -s
            print(f"\ncompose: {EVENTS} events simulated, loaded and verified in {elapsed:.0f} s")
            print(done.stdout[-2000:])
        assert done.returncode == 0, f"verify says not equal:\n{done.stdout}\n{done.stderr}"
        report = json.loads(done.stdout[done.stdout.index("{") :])
        assert report.get("equal") is True, report
    finally:
        run("down", "-v", "--remove-orphans", check=False)
    label = f"label=com.docker.compose.project={project}"
    assert engine.run("ps", "-aq", "--filter", label).stdout.strip() == ""
    assert engine.run("network", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert engine.run("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
