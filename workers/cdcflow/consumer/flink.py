"""The Beam Flink job server: found in the cache, started on loopback, always stopped.

``cdcflow consume --runner flink`` runs Beam's ``FlinkJobServerDriver`` as a child
process of its own (not through Beam's ``--flink_job_server_jar``, which binds
every address and leaves the Java process behind when the consumer exits):

* the jar is the thin one ``make flink`` builds in
  ``${XDG_CACHE_HOME:-~/.cache}/cdcflow/flink/<beam version>/`` (or
  ``CDCFLOW_FLINK_JOB_SERVER_JAR``); nothing is downloaded here;
* it listens on 127.0.0.1 only, on free ports, with its artifact staging in a
  temporary folder of its own;
* whoever starts it stops it (:meth:`JobServer.stop`, a context manager), and on
  Linux it also dies with the consumer (``PR_SET_PDEATHSIG``), so a consumer killed
  with SIGKILL does not leave an embedded Flink running.

With ``--flink_master=[local]`` the job server embeds Flink (a mini cluster in the
same JVM), and the SDK harness runs in the consumer process (LOOPBACK).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import TracebackType

import apache_beam

from cdcflow.config import Settings
from cdcflow.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

JAR_NAME = "cdcflow-flink-job-server.jar"
DRIVER = "org.apache.beam.runners.flink.FlinkJobServerDriver"
SETUP_HINT = "run `make flink` (Java 17 and Maven) or set CDCFLOW_FLINK_JOB_SERVER_JAR"
_PR_SET_PDEATHSIG = 1


def cache_dir(beam_version: str | None = None) -> Path:
    """Where ``make flink`` puts the job server for this Beam version."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cdcflow" / "flink" / (beam_version or apache_beam.__version__)


def find_jar(settings: Settings) -> Path:
    """The job-server jar to run, or a :class:`ConfigError` that says how to get one."""
    jar = settings.flink_job_server_jar or cache_dir() / JAR_NAME
    if not jar.is_file():
        where = "CDCFLOW_FLINK_JOB_SERVER_JAR" if settings.flink_job_server_jar else "the cache"
        raise ConfigError(f"Flink job-server jar {jar} not found ({where}): {SETUP_HINT}")
    version = jar_beam_version(jar)
    if version is not None and version != apache_beam.__version__:
        raise ConfigError(
            f"Flink job server {jar} is Beam {version}, the Python SDK is Beam "
            f"{apache_beam.__version__}: they must match ({SETUP_HINT})"
        )
    return jar


def jar_beam_version(jar: Path) -> str | None:
    """The Beam version a job-server jar declares (Implementation-Version), if any."""
    try:
        with zipfile.ZipFile(jar) as archive:
            manifest = archive.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{jar} is not a readable jar ({error}): {SETUP_HINT}") from error
    for line in manifest.splitlines():
        if line.startswith("Implementation-Version:"):
            return line.split(":", 1)[1].strip()
    return None


def java_executable() -> str:
    java = shutil.which("java")
    if java is None:
        raise ConfigError(
            "java not found: the Flink runner needs Java 17 "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    return java


_LOGGERS = {
    # One line per checkpoint (what acks wait for), the job's life, every failure.
    "org.apache.flink.runtime.checkpoint.CheckpointCoordinator": "info",
    "org.apache.flink.runtime.jobmaster.JobMaster": "info",
    "org.apache.beam.runners.flink": "info",
    "org.apache.beam.runners.jobsubmission": "info",
    # Beam sends finalization requests without waiting for the answers, then warns
    # about each answer: one WARN per checkpoint that says nothing.
    "org.apache.beam.runners.fnexecution.control.FnApiControlClient": "error",
}


def _log_properties() -> list[str]:
    """SLF4J simple-logger settings: warnings, plus the few INFO lines worth having."""
    level = os.environ.get("CDCFLOW_FLINK_LOG_LEVEL", "warn")
    properties = [
        f"-Dorg.slf4j.simpleLogger.defaultLogLevel={level}",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
        "-Dorg.slf4j.simpleLogger.showShortLogName=true",
    ]
    if level == "warn":
        properties += [
            f"-Dorg.slf4j.simpleLogger.log.{name}={value}" for name, value in _LOGGERS.items()
        ]
    return properties


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Ask Linux to SIGKILL the job server when the consumer dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()  # its own group: stop() signals the JVM and whatever it started


class JobServer:
    """A running ``FlinkJobServerDriver`` on 127.0.0.1 (see the module docstring)."""

    def __init__(self, settings: Settings, *, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.jar = find_jar(settings)
        self.log_dir = log_dir or settings.data_dir / "logs"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_file: Path | None = None
        self._staging: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 90.0) -> JobServer:
        """Start the JVM and wait until its job service accepts connections."""
        java = java_executable()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Beam's staged artifacts and the JVM's own temporary files (Flink's mini
        # cluster folders, its RPC jar, native libraries) in one folder that stop()
        # removes: left in /tmp, every job server would leave ~10 entries behind.
        self._staging = Path(tempfile.mkdtemp(prefix="cdcflow-flink-"))
        (self._staging / "artifacts").mkdir()
        (self._staging / "tmp").mkdir()
        for attempt in (1, 2):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            self.log_file = self.log_dir / f"flink-job-server-{os.getpid()}-{self.port}.log"
            command = [
                java,
                f"-Xmx{self.settings.flink_job_server_heap_mb}m",
                "-XX:+ExitOnOutOfMemoryError",
                f"-Djava.io.tmpdir={self._staging / 'tmp'}",
                *_log_properties(),
                "-jar",
                str(self.jar),
                "--job-host=127.0.0.1",
                f"--job-port={self.port}",
                f"--artifact-port={free_port()}",
                f"--expansion-port={free_port()}",
                f"--artifacts-dir={self._staging / 'artifacts'}",
                f"--flink-master={self.settings.flink_master}",
            ]
            log.info(
                "starting the Flink job server (Beam %s, flink master %s) on %s; log: %s",
                apache_beam.__version__,
                self.settings.flink_master,
                self.endpoint,
                self.log_file,
                extra={"stage": "consumer"},
            )
            with self.log_file.open("wb") as output:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    start_new_session=sys.platform != "linux",
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if port_open(self.port):
                    return self
                time.sleep(0.2)
            tail = self._log_tail()
            self.stop()
            if attempt == 1 and "BindException" in tail:
                continue
            raise ServiceUnavailable(
                "Flink job server",
                self.endpoint,
                tail or f"not listening after {timeout:.0f} s",
                f"see {self.log_file}; {SETUP_HINT}",
            )
        raise AssertionError("unreachable")

    def _log_tail(self, chars: int = 600) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-chars:].strip()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the JVM (SIGTERM to its group, SIGKILL after ``timeout``); idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
            log.info("Flink job server stopped", extra={"stage": "consumer"})
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> JobServer:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
