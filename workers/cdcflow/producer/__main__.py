"""``python -m cdcflow.producer``: the producer from ``CDCFLOW_*`` settings, stopped by SIGTERM.

The ``cdcflow produce`` CLI command does the same; this entry needs no CLI, so
tests and minimal images can start (and SIGKILL) a producer process directly.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from cdcflow import logs
from cdcflow.config import load_settings
from cdcflow.errors import CdcflowError
from cdcflow.health import Health, serve
from cdcflow.producer.main import run_producer

log = logging.getLogger("cdcflow.producer")


def main() -> None:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format.value)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    health = Health("producer")
    server = serve(health, settings.metrics_host, settings.metrics_port)
    try:
        run_producer(settings, stop=stop, health=health)
    except CdcflowError as error:
        log.error("%s", error, extra={"stage": "producer"})
        sys.exit(error.exit_code)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
