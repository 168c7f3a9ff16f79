"""Passwords in connection URLs never reach stdout, stderr or logs, whatever fails.

Every CLI command that opens a connection is run against services that refuse it
(a closed port, or the real RabbitMQ with a wrong password) with a password in
every URL, at DEBUG level in both log formats.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from cdcflow.localstack import free_port

PASSWORD = "Sup3r-S3cret@PW/42"  # needs URL-encoding: both forms must stay hidden
ENCODED = urllib.parse.quote(PASSWORD, safe="")

COMMANDS = [
    ["simulate", "--events", "10"],
    ["produce"],
    ["consume", "--idle-exit", "1"],
    ["init-warehouse"],
    ["verify"],
    ["status", "--interval", "0.2"],
    ["report", "--out", "{tmp}/report"],
    ["dlq", "inspect"],
    ["dlq", "replay", "--dry-run"],
    ["dlq", "purge", "--yes"],
    ["demo", "--events", "10"],
]


def _env(tmp_path: Path, broker: str, amqp_url: str) -> dict[str, str]:
    closed = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CDCFLOW_MONGO_URI": f"mongodb://app:{ENCODED}@127.0.0.1:{closed}/?directConnection=true",
            "CDCFLOW_SERVER_TIMEOUT_S": "1",
            "CDCFLOW_CLICKHOUSE_URL": f"http://loader:{ENCODED}@127.0.0.1:{closed}",
            "CDCFLOW_PRODUCER_METRICS_URL": f"http://u:{ENCODED}@127.0.0.1:{closed}/metrics",
            "CDCFLOW_CONSUMER_METRICS_URL": f"http://u:{ENCODED}@127.0.0.1:{closed}/metrics",
            "CDCFLOW_METRICS_PORT": "0",
            "CDCFLOW_LOG_LEVEL": "DEBUG",
            "CDCFLOW_DATA_DIR": str(tmp_path / "data"),
        }
    )
    if broker == "closed":
        env["CDCFLOW_AMQP_URL"] = f"amqp://cdc:{ENCODED}@127.0.0.1:{closed}/%2F"
    else:  # the real broker, refusing the password
        real = urllib.parse.urlsplit(amqp_url)
        env["CDCFLOW_AMQP_URL"] = f"amqp://guest:{ENCODED}@{real.hostname}:{real.port}/%2F"
    return env


AMQP_COMMANDS = {"produce", "consume", "status", "dlq", "demo"}
CASES = [(command, "closed", "json") for command in COMMANDS] + [
    (command, "wrong-password", "text") for command in COMMANDS if command[0] in AMQP_COMMANDS
]


@pytest.mark.parametrize(
    ("command", "broker", "log_format"),
    CASES,
    ids=[f"{' '.join(command[:2])}-{broker}" for command, broker, _ in CASES],
)
def test_no_password_in_any_output(
    tmp_path: Path, command: list[str], log_format: str, broker: str, amqp_url: str
) -> None:
    env = _env(tmp_path, broker, amqp_url)
    env["CDCFLOW_LOG_FORMAT"] = log_format
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = subprocess.run(
        [sys.executable, "-m", "cdcflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.rglob("*.log"))
    for secret in (PASSWORD, ENCODED, "S3cret"):
        assert secret not in output, f"{secret!r} leaked by `cdcflow {' '.join(args)}`:\n{output}"
        assert secret not in logs, (
            f"{secret!r} leaked into a log file by `cdcflow {' '.join(args)}`"
        )
    if command[0] != "status":  # status reports what is down and exits 0
        assert result.returncode != 0, output
    assert "Traceback" not in output, output


def test_help_shows_no_default_password() -> None:
    for command in ("produce", "consume", "dlq"):
        result = subprocess.run(
            [sys.executable, "-m", "cdcflow", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "guest:guest" not in result.stdout
