"""Every image builds with the engine (private here), starts and answers, runs as a
non-root user and carries the OCI labels. Sizes and build times are printed by the
`images` fixture."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable

import pymongo
import pytest

from cdcflow_operator.manifests.common import FLINK_JOB_SERVER_JAR
from tests.containers.conftest import REPO, Engine
from tests.prometheus_support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.containers]

OCI = ("title", "description", "source", "licenses", "version")


@pytest.mark.parametrize("name", ["workers", "flink", "operator", "nx27017", "rabbitmq"])
def test_image_is_labelled_and_non_root(engine: Engine, images: dict[str, str], name: str) -> None:
    config = json.loads(engine.run("image", "inspect", images[name]).stdout)[0]["Config"]
    labels = config["Labels"] or {}
    for key in OCI:
        assert labels.get(f"org.opencontainers.image.{key}"), f"{name}: no {key} label"
    assert config["User"] and config["User"].split(":")[0] not in {"root", "0"}
    # The user the process really gets, not only what the config says.
    uid = engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "id", images[name], "-u"
    ).stdout.strip()
    assert uid != "0", f"{name} runs as root"


def test_workers_image_answers_help(engine: Engine, images: dict[str, str]) -> None:
    out = engine.run("run", "--rm", "--network", "none", images["workers"], "--help").stdout
    for command in ("simulate", "produce", "consume", "verify"):
        assert command in out


def test_workers_image_has_no_ca_bundle_of_the_build_machine(
    engine: Engine, images: dict[str, str]
) -> None:
    """The CA bundle is a build secret: nothing under /run/secrets is left in an image."""
    for name in ("workers", "flink", "operator", "nx27017"):
        done = engine.run(
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "ls",
            images[name],
            "-A",
            "/run/secrets",
            check=False,
        )
        assert done.stdout.strip() == "", f"{name}: /run/secrets holds {done.stdout}"


def test_flink_image_carries_java_17_and_the_checked_job_server(
    engine: Engine, images: dict[str, str]
) -> None:
    """What the consumer on Flink needs in a pod, with nothing to download there: Java 17,
    every jar the lock file lists (checksums checked again in the image) and a job server
    whose classpath resolves (its driver parses its options and prints them)."""

    def run(entrypoint: str, *args: str) -> subprocess.CompletedProcess[str]:
        return engine.run(
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            entrypoint,
            images["flink"],
            *args,
            check=False,
        )

    java = run("java", "-version")
    assert java.returncode == 0 and 'version "17.' in java.stderr, java.stderr
    checked = run(
        "sh", "-c", "cd /opt/cdcflow/flink && sha256sum --check --strict --quiet jars.sha256"
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = (REPO / "images" / "flink" / "jars.sha256").read_text().splitlines()
    count = run("sh", "-c", "find /opt/cdcflow/flink -name '*.jar' | wc -l")
    assert int(count.stdout) == len(listed)
    driver = run("sh", "-c", 'java -jar "$CDCFLOW_FLINK_JOB_SERVER_JAR" --help 2>&1')
    assert "--flink-master" in driver.stdout and "--job-port" in driver.stdout, driver.stdout[
        -2000:
    ]
    env = json.loads(engine.run("image", "inspect", images["flink"]).stdout)[0]["Config"]["Env"]
    assert "CDCFLOW_RUNNER=flink" in env
    # Where the operator's consumer pods look for it.
    assert f"CDCFLOW_FLINK_JOB_SERVER_JAR={FLINK_JOB_SERVER_JAR}" in env


def test_operator_image_answers_help(engine: Engine, images: dict[str, str]) -> None:
    """The image's own entrypoint (`cdcflow-operator`), as a pod runs it."""
    out = engine.run("run", "--rm", "--network", "none", images["operator"], "--help").stdout
    for command in ("run", "crd"):
        assert command in out, out


def test_operator_image_is_the_light_core(engine: Engine, images: dict[str, str]) -> None:
    code = (
        "import importlib.util, cdcflow_operator, cdcflow.config, cdcflow.naming\n"
        "for heavy in ('apache_beam', 'chdb', 'pyarrow', 'nx_27017'):\n"
        "    assert importlib.util.find_spec(heavy) is None, heavy\n"
        "print('light')\n"
    )
    done = engine.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        images["operator"],
        "-c",
        code,
    )
    assert done.stdout.strip() == "light"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll CHECK until it returns True (a starting service raises or returns False)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is still starting
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} did not answer in {timeout:.0f} s (last error: {last})")


def test_rabbitmq_image_answers_management_api(engine: Engine, images: dict[str, str]) -> None:
    ports = [free_port() for _ in range(4)]
    name = f"cdcflow-test-rmq-{uuid.uuid4().hex[:8]}"
    engine.run(
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        "RABBITMQ_BIND=127.0.0.1",
        "-e",
        f"RABBITMQ_NODENAME={name}@localhost",
        "-e",
        f"RABBITMQ_NODE_PORT={ports[0]}",
        "-e",
        f"RABBITMQ_MANAGEMENT_PORT={ports[1]}",
        "-e",
        f"RABBITMQ_DIST_PORT={ports[2]}",
        "-e",
        f"ERL_EPMD_PORT={ports[3]}",
        images["rabbitmq"],
    )
    try:
        url = f"http://127.0.0.1:{ports[1]}/api/overview"
        request = urllib.request.Request(url, headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})

        def overview() -> bool:
            with urllib.request.urlopen(request, timeout=3) as response:
                body = json.load(response)
            return bool(body["rabbitmq_version"]) and body["node"] == f"{name}@localhost"

        wait_for(overview, "RabbitMQ's management API", timeout=180)
    finally:
        engine.run("rm", "-f", name, check=False)


def test_nx27017_image_speaks_mongodb(engine: Engine, images: dict[str, str]) -> None:
    port = free_port()
    name = f"cdcflow-test-nx-{uuid.uuid4().hex[:8]}"
    engine.run(
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        f"NX_PORT={port}",
        images["nx27017"],
    )
    try:
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=2000
        )

        def roundtrip() -> bool:
            client.t.c.insert_one({"_id": "a", "n": 1})
            return client.t.c.find_one({"_id": "a"}) == {"_id": "a", "n": 1}

        wait_for(roundtrip, "nx-27017", timeout=60)
        client.close()
    finally:
        engine.run("rm", "-f", name, check=False)
