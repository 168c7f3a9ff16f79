"""A private RabbitMQ node for the local stack: the demo, the tests and the benchmarks.

The original design got RabbitMQ and its management UI from ``docker compose up``;
the embedded default gets the same from the distribution's ``rabbitmq-server``
package, run as a node of its own rather than as the system service:

* its own node name (stable per data folder, so a second start finds its data), its
  own Erlang cookie (``HOME`` is the folder) and its own ``epmd`` on a free port;
* AMQP, management and distribution ports chosen free, all bound to 127.0.0.1;
* config, data (mnesia) and logs under one folder, ``.cdcflow/rabbitmq/`` in the demo;
* stopped by its own ``rabbitmqctl -n <node> stop``, or by its PID as a last resort,
  and its ``epmd`` with it (``epmd`` outlives the node otherwise).

Two traps of the Debian package that this module avoids (see DESIGN.md): the
``/usr/sbin/rabbitmq-server`` wrapper switches to the ``rabbitmq`` user, which
cannot write a folder owned by another user, so the real script in
``/usr/lib/rabbitmq/bin`` is run; and installing the package may try to start the
system service, which a temporary ``policy-rc.d`` forbids.

``python -m cdcflow.localbroker install`` installs the package when it is missing
(what ``make rabbitmq`` runs before the tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cdcflow.errors import CdcflowError, ServiceUnavailable

log = logging.getLogger(__name__)

PACKAGE = "rabbitmq-server"
INSTALL_COMMAND = "sudo apt-get install -y rabbitmq-server"
USER = "guest"  # the management UI's and AMQP's login; RabbitMQ allows it from loopback only
PASSWORD = "guest"
_REAL_BIN = Path("/usr/lib/rabbitmq/bin")
_DEBIAN_WRAPPER = Path("/usr/sbin/rabbitmq-server")
_POLICY_RC = Path("/usr/sbin/policy-rc.d")


class BrokerSetupError(CdcflowError):
    """RabbitMQ could not be installed or started here; the message says what to do."""

    exit_code = 3


# --- installation ------------------------------------------------------------------


def find_executables() -> tuple[Path, Path] | None:
    """``(rabbitmq-server, rabbitmqctl)`` that run as the calling user, or None.

    Debian's real scripts first; elsewhere (Homebrew, a tarball) whatever is on
    PATH, except the Debian wrapper that switches users.
    """
    server, ctl = _REAL_BIN / "rabbitmq-server", _REAL_BIN / "rabbitmqctl"
    if server.exists() and ctl.exists():
        return server, ctl
    found_server, found_ctl = shutil.which("rabbitmq-server"), shutil.which("rabbitmqctl")
    if found_server and found_ctl and Path(found_server) != _DEBIAN_WRAPPER:
        return Path(found_server), Path(found_ctl)
    return None


def _apt_install(say: Callable[[str], None]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", PACKAGE]
    own_policy = not _POLICY_RC.exists()
    if own_policy:  # the package's postinst would start the system service on :5672
        _POLICY_RC.write_text("#!/bin/sh\n# temporary, from cdcflow.localbroker\nexit 101\n")
        _POLICY_RC.chmod(0o755)
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:  # a fresh machine has no package lists yet
            say("apt-get update (package lists) ...")
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
            raise BrokerSetupError(
                f"installing RabbitMQ with `{' '.join(install)}` failed:\n{tail}\n"
                "Install it by hand, or point CDCFLOW_AMQP_URL at a running broker"
            )
    finally:
        if own_policy:
            _POLICY_RC.unlink(missing_ok=True)


def ensure_installed(say: Callable[[str], None] = log.info) -> tuple[Path, Path]:
    """The server and ctl scripts, installing Debian's package first when missing.

    Installs only as root with apt-get; otherwise raises with the one command to run.
    """
    found = find_executables()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrokerSetupError(
            "RabbitMQ is not installed and cdcflow can install it only as root with apt-get: "
            f"run `{INSTALL_COMMAND}` (Debian/Ubuntu; `brew install rabbitmq` on macOS), "
            "or point CDCFLOW_AMQP_URL at a running broker"
        )
    say(f"installing RabbitMQ (Debian's {PACKAGE} package) ...")
    started = time.monotonic()
    _apt_install(say)
    found = find_executables()
    if not found:
        raise BrokerSetupError(
            f"apt-get installed {PACKAGE} but {_REAL_BIN}/rabbitmq-server is not there: "
            "point CDCFLOW_AMQP_URL at a running broker"
        )
    say(f"installed RabbitMQ in {time.monotonic() - started:.0f} s")
    return found


# --- the node ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class NodePorts:
    amqp: int
    management: int
    distribution: int
    epmd: int

    @classmethod
    def choose(cls) -> NodePorts:
        chosen: list[int] = []
        while len(chosen) < 4:  # free_port can hand out one twice in a row
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        return cls(*chosen)


@dataclass(frozen=True)
class _NodeState:
    """What a running node left in its folder, so a later run can stop a stray one."""

    pid: int
    node: str
    ports: NodePorts

    @classmethod
    def read(cls, path: Path) -> _NodeState | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), str(data["node"]), NodePorts(**data["ports"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class RabbitNode:
    """One private RabbitMQ node under ``root``. Start it, use it, stop it.

    Also the handle tests and the chaos suite use to control the broker
    (:meth:`ctl`, :meth:`stop_app`, :meth:`start_app`, :meth:`management`).
    """

    def __init__(self, root: Path, *, server: Path, ctl: Path) -> None:
        self.root = root.resolve()
        self.server = server
        self.ctl_path = ctl
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:8]
        self.node = f"cdcflow-{digest}@localhost"
        self.ports = NodePorts.choose()
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.ports.amqp}/%2F"

    def vhost_url(self, vhost: str) -> str:
        from urllib.parse import quote

        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.ports.amqp}/{quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}/"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / f"{self.node}.log"

    @property
    def _state_file(self) -> Path:
        return self.root / "node.json"

    @property
    def _startup_log(self) -> Path:
        return self.root / "log" / "startup.log"

    @property
    def pid(self) -> int | None:
        """The Erlang VM's PID (what to account CPU and memory to)."""
        if self.process is None or self.process.poll() is not None:
            return None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError, ValueError):
            for child in children.read_text().split():
                return int(child)  # the script's one child is beam.smp
        return self.process.pid

    def environment(self) -> dict[str, str]:
        """The variables that make ``rabbitmq-server``/``rabbitmqctl`` this node."""
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            HOME=str(self.root / "home"),  # the Erlang cookie lives here
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.ports.amqp),
            RABBITMQ_DIST_PORT=str(self.ports.distribution),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq"),  # .conf is appended
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback,
            RABBITMQ_CTL_ERL_ARGS=loopback,
            ERL_EPMD_PORT=str(self.ports.epmd),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    # -- lifecycle -------------------------------------------------------------------

    def _write_config(self) -> None:
        for folder in ("home", "mnesia", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        (self.root / "rabbitmq.conf").write_text(
            "# written by cdcflow.localbroker at every start\n"
            f"listeners.tcp.default = 127.0.0.1:{self.ports.amqp}\n"
            f"management.tcp.port = {self.ports.management}\n"
            "management.tcp.ip = 127.0.0.1\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.root / "enabled_plugins").write_text("[rabbitmq_management].\n")

    def _stop_stray(self) -> None:
        """Stop a node a killed run left behind in this folder (it holds the data)."""
        state = _NodeState.read(self._state_file)
        leftovers = self.processes()
        if leftovers:
            log.warning("stopping a RabbitMQ node left running in %s", self.root)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait(lambda: not self.processes(), 15)
        if state is not None:
            self._kill_epmd(state.ports.epmd)
        self._state_file.unlink(missing_ok=True)

    def start(self, timeout: float = 120.0) -> RabbitNode:
        """Start the node and wait until AMQP and the management API answer."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop_stray()
        self._write_config()
        self._startup_log.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self._startup_log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.server)],
                env=self.environment(),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the demo is the demo's to handle
            )
        self._state_file.write_text(
            json.dumps({"pid": self.process.pid, "node": self.node, "ports": asdict(self.ports)})
        )
        self._start_watchdog()
        try:
            self._await_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        log.info("RabbitMQ node %s ready in %.1f s", self.node, self.started_in_s)
        return self

    def _start_watchdog(self) -> None:
        """Stop the node when this process dies without stopping it (SIGKILL, OOM).

        A node outlives whoever started it (its own session, so that a Ctrl-C is the
        owner's to handle); without this, a killed demo or test run would leave a node
        and its epmd running until the machine is cleaned.
        """
        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        with (self.root / "log" / "watchdog.log").open("ab") as out:
            self.watchdog = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cdcflow.localbroker",
                    "watchdog",
                    str(os.getpid()),
                    str(self.root),
                    str(self.process.pid if self.process else 0),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _await_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise self._failure(f"the node exited with code {self.process.returncode}")
            if port_open("127.0.0.1", self.ports.amqp) and self.management_ok():
                return
            if time.monotonic() > deadline:
                raise self._failure(f"not ready after {timeout:.0f} s")
            time.sleep(0.25)

    def _failure(self, detail: str) -> ServiceUnavailable:
        tail = self.log_tail()
        return ServiceUnavailable(
            "RabbitMQ (private node)",
            f"127.0.0.1:{self.ports.amqp}",
            f"{detail}; last lines of its log:\n{tail}" if tail else detail,
            f"see {self.log_file} and {self._startup_log}",
        )

    def log_tail(self, lines: int = 15) -> str:
        text = []
        for path in (self._startup_log, self.log_file):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace").strip().splitlines()[-lines:]
        return "\n".join(text[-lines:])

    def processes(self) -> list[int]:
        """PIDs of every process of this node (server script, Erlang VM, its epmd ...),
        found by the node name in their environment: what must be gone after stop."""
        marker = f"RABBITMQ_NODENAME={self.node}\0".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError):
                if marker in environ.read_bytes():
                    found.append(int(environ.parent.name))
        return [pid for pid in found if pid != os.getpid()]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node (``rabbitmqctl stop``, then its PID), its epmd; ports freed."""
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait(timeout=10)
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.ctl("stop", timeout=timeout, check=False)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        self._kill_epmd(self.ports.epmd)
        for pid in self.processes():  # whatever the node left (a helper, a crashed VM)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._state_file.unlink(missing_ok=True)
        ports = (self.ports.amqp, self.ports.management, self.ports.distribution)
        _wait(lambda: not any(port_open("127.0.0.1", port) for port in ports), 20)

    def _kill_epmd(self, port: int) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        env = {**self.environment(), "ERL_EPMD_PORT": str(port)}
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([epmd, "-kill"], env=env, capture_output=True, timeout=10, check=False)
        _wait(lambda: not port_open("127.0.0.1", port), 10)

    # -- control (tests, chaos) --------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <node> ARGS``; its standard output."""
        result = subprocess.run(
            [str(self.ctl_path), "-n", self.node, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise BrokerSetupError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )
        return result.stdout

    def ctl_command(self) -> str:
        """The shell command that runs ``rabbitmqctl`` against this node, for people."""
        env = self.environment()
        keys = ("HOME", "ERL_EPMD_PORT")
        prefix = " ".join(f"{key}={shlex.quote(env[key])}" for key in keys)
        return f"{prefix} {shlex.quote(str(self.ctl_path))} -n {self.node}"

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app", timeout=120)
        self.ctl("await_startup", timeout=120)

    def management(self, path: str, *, timeout: float = 5.0) -> Any:
        """GET ``/api/<path>`` of the management API as JSON."""
        request = urllib.request.Request(
            f"{self.management_url}api/{path.lstrip('/')}",
            headers={"Authorization": "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def management_ok(self) -> bool:
        try:
            return bool(self.management("overview", timeout=2.0).get("rabbitmq_version"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        self.ctl("delete_vhost", vhost, check=False)


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_node(
    root: Path, *, timeout: float = 120.0, say: Callable[[str], None] = log.info
) -> RabbitNode:
    """Install RabbitMQ if needed and start a private node under ``root``."""
    server, ctl = ensure_installed(say)
    return RabbitNode(root, server=server, ctl=ctl).start(timeout)


@contextlib.contextmanager
def private_node(root: Path, *, timeout: float = 120.0) -> Iterator[RabbitNode]:
    node = start_node(root, timeout=timeout)
    try:
        yield node
    finally:
        node.stop()


def watch_owner(owner: int, root: Path, server_pid: int, poll_s: float = 1.0) -> None:
    """Wait until process ``owner`` is gone, then stop the node it left under ``root``.

    Only if that node (``server_pid``) still owns the folder: a later start there
    (which stops strays itself) belongs to someone else.
    """
    while True:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass  # alive, another user's
        time.sleep(poll_s)
    node = RabbitNode(root, server=_REAL_BIN / "rabbitmq-server", ctl=_REAL_BIN / "rabbitmqctl")
    state = _NodeState.read(node._state_file)
    if state is not None and state.pid == server_pid and node.processes():
        log.warning("owner %d is gone: stopping its RabbitMQ node in %s", owner, root)
        node._stop_stray()


def main(argv: list[str] | None = None) -> int:
    """``python -m cdcflow.localbroker install``: what ``make rabbitmq`` runs.

    (``watchdog OWNER_PID ROOT SERVER_PID`` is what a started node runs beside itself.)
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 4 and args[0] == "watchdog":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        watch_owner(int(args[1]), Path(args[2]), int(args[3]))
        return 0
    if args != ["install"]:
        print("usage: python -m cdcflow.localbroker install", file=sys.stderr)  # noqa: T201
        return 2
    try:
        server, _ = ensure_installed(lambda line: print(f"rabbitmq: {line}", flush=True))  # noqa: T201
    except BrokerSetupError as error:
        print(f"rabbitmq: {error}", file=sys.stderr)  # noqa: T201
        return error.exit_code
    print(f"rabbitmq: installed ({server})")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
