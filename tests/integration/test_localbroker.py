"""The private RabbitMQ node of the local stack: started, used, stopped, started again.

These start nodes of their own (not the session's), in their own folders, so they
can kill and restart them freely.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from rich.console import Console

from cdcflow import localbroker, localstack
from cdcflow.config import Settings
from cdcflow.demo import run_demo
from cdcflow.errors import ServiceUnavailable
from cdcflow.localbroker import PASSWORD, USER, BrokerSetupError, RabbitNode, port_open

pytestmark = pytest.mark.slow


def _ports(node: RabbitNode) -> list[int]:
    return [node.ports.amqp, node.ports.management, node.ports.distribution, node.ports.epmd]


def test_private_node_starts_answers_stops_and_starts_again_on_its_data(tmp_path: Path) -> None:
    root = tmp_path / "rabbitmq"
    node = localbroker.start_node(root)
    try:
        assert node.started_in_s is not None and node.started_in_s > 0
        overview = node.management("overview")  # with the printed credentials
        assert overview["rabbitmq_version"].startswith("3.")
        assert (USER, PASSWORD) == ("guest", "guest")
        assert f"127.0.0.1:{node.ports.amqp}" in node.amqp_url
        connection = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
        channel = connection.channel()
        channel.queue_declare("kept", durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_publish(
            "", "kept", b"survives a restart", pika.BasicProperties(delivery_mode=2)
        )
        connection.close()
        pid = node.pid
        assert pid is not None
        assert node.processes(), "the node's Erlang VM runs under its own name"
    finally:
        node.stop()
    assert not node.running()
    assert not any(port_open("127.0.0.1", port) for port in _ports(node)), "ports freed"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not node.processes()

    again = localbroker.start_node(root)  # same folder: same node name, same data
    try:
        assert again.node == node.node
        connection = pika.BlockingConnection(pika.URLParameters(again.amqp_url))
        method, _, body = connection.channel().basic_get("kept", auto_ack=True)
        connection.close()
        assert method is not None and body == b"survives a restart"
    finally:
        again.stop()
    assert not any(port_open("127.0.0.1", port) for port in _ports(again))


def test_a_node_left_running_by_a_killed_run_is_stopped_by_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "rabbitmq"
    stray = localbroker.start_node(root)
    stray_pid = stray.pid
    assert stray_pid is not None
    # The run that started it dies without stopping it: the node keeps running.
    successor = localbroker.start_node(root)
    try:
        with pytest.raises(ProcessLookupError):
            os.kill(stray_pid, 0)
        assert successor.management_ok()
    finally:
        successor.stop()
    assert not stray.processes()


def test_a_node_whose_owner_is_killed_is_stopped_by_its_watchdog(tmp_path: Path) -> None:
    """SIGKILL of the process that started a node (a test run, the demo): no stop runs,
    yet the node and its epmd go, so nothing is left listening on the machine."""
    root = tmp_path / "rabbitmq"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from cdcflow import localbroker;"
            "localbroker.start_node(Path(sys.argv[1])); print('up', flush=True); time.sleep(600)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        node = RabbitNode(root, server=Path("/bin/true"), ctl=Path("/bin/true"))
        assert node.processes(), "the owner started a node"
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 60
        while node.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        watchdog_log = root / "log" / "watchdog.log"
        assert not node.processes(), watchdog_log.read_text() if watchdog_log.exists() else "no log"
    finally:
        owner.kill()
        for pid in RabbitNode(root, server=Path("/bin/true"), ctl=Path("/bin/true")).processes():
            os.kill(pid, 9)


def test_a_configured_broker_is_used_and_no_node_is_started(tmp_path: Path) -> None:
    closed = localstack.free_port()
    settings = Settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{closed}/%2F")
    with (
        pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{closed}"),
        localstack.local_broker(
            settings, tmp_path / "rabbitmq", configured=True, reuse_default=True
        ),
    ):
        pass
    assert not (tmp_path / "rabbitmq").exists(), "no node was started for a configured broker"


def test_without_root_the_error_names_the_command_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localbroker, "find_executables", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BrokerSetupError, match="sudo apt-get install -y rabbitmq-server"):
        localbroker.ensure_installed()


def test_demo_starts_a_private_node_prints_its_ui_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where nothing answers at the default address, the demo brings its own broker."""
    closed = localstack.free_port()
    monkeypatch.setattr(localstack, "DEFAULT_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{closed}/")
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        data_dir=tmp_path / ".cdcflow", events=400, rate=400.0, bad_ratio=0.02, seed=7
    )
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=False)
    equal = run_demo(settings, console, broker_configured=False)
    text = output.getvalue()
    assert equal, text
    assert "verify: equal" in text, text
    assert "management UI http://127.0.0.1:" in text and "user guest, password guest" in text
    assert "RabbitMQ: ready in" in text
    node_root = tmp_path / ".cdcflow" / "rabbitmq"
    assert (node_root / "rabbitmq.conf").exists(), "the node lives under <data dir>/rabbitmq"
    assert not (node_root / "node.json").exists(), "the node was stopped at the end"
    assert not RabbitNode(node_root, server=Path("x"), ctl=Path("y")).processes()


def test_the_printed_rabbitmqctl_command_reaches_the_node(tmp_path: Path) -> None:
    node = localbroker.start_node(tmp_path / "rabbitmq")
    try:
        result = subprocess.run(
            f"{node.ctl_command()} list_vhosts -q",
            shell=True,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ["PATH"]},
        )
        assert result.returncode == 0, result.stderr
        assert "/" in result.stdout.split()
    finally:
        node.stop()
