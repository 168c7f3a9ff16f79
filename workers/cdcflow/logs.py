"""Structured logs: ``text`` for people, ``json`` for log pipelines.

Every record may carry context fields (``stage``, ``op``, ``doc_id``, ``version``,
``reason`` ...) passed with ``extra={...}``; both formats print them. A filter on
the root handler scrubs every registered password (see :mod:`cdcflow.urls`) from
the final text, including messages formatted by pika, pymongo or tenacity.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from cdcflow.urls import scrub

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context(record)
        if context:
            text += " " + " ".join(f"{key}={value}" for key, value in context.items())
        return scrub(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_context(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return scrub(orjson.dumps(payload, default=str).decode())


# Import-time warnings of libraries that say nothing about cdcflow (Beam warns that
# the BigQuery client is missing, which cdcflow never uses).
_IRRELEVANT = ("apitools not found",)


def _relevant(record: logging.LogRecord) -> bool:
    return not (record.name == "root" and str(record.msg).startswith(_IRRELEVANT))


def configure(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Install one handler on the root logger (idempotent: replaces earlier ones)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_relevant)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries narrate every connection step at INFO; keep their warnings.
    for noisy in ("pika", "pymongo", "urllib3", "apache_beam", "kopf", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # pika logs each failed connection attempt at ERROR with a traceback, then hands
    # the error to the caller, which reports it in one line (service, where, retry).
    for chatty in (
        "pika.adapters.utils.connection_workflow",
        "pika.adapters.utils.io_services_utils",
        "pika.adapters.blocking_connection",
    ):
        logging.getLogger(chatty).setLevel(logging.CRITICAL)
