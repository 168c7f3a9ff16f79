"""The one adapter that opens a MongoDB client from :class:`~cdcflow.config.Settings`.

Everything that talks to MongoDB (producer, simulator, verify) opens its client
here, so the URI's password is revealed in exactly one place, TLS files and
timeouts are applied the same way everywhere, and an unreachable server is
reported as one line (which service, where, what to do) instead of pymongo's
multi-line topology description.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pymongo
from bson.codec_options import DatetimeConversion
from pymongo import MongoClient
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential
from tenacity.stop import stop_when_event_set

from cdcflow.config import Settings
from cdcflow.errors import ServiceUnavailable
from cdcflow.urls import scrub

log = logging.getLogger(__name__)

SERVICE = "MongoDB"
HINT = (
    "start it (the local stack: `cdcflow demo` starts nx-27017), "
    "or check CDCFLOW_MONGO_URI (host, port, replica set, credentials)"
)
PING_TIMEOUT_S = 1.0
_AUTH_CODES = frozenset({13, 18})  # Unauthorized, AuthenticationFailed

Document = dict[str, Any]


def _first_line(error: BaseException) -> str:
    """pymongo's messages carry a whole topology description: keep the first clause."""
    text = scrub(str(error) or type(error).__name__)
    text = text.split(", Timeout:", 1)[0].split("\n", 1)[0]
    return text[:300]


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`~pymongo.MongoClient` (without the URI)."""
    timeout_ms = int(settings.server_timeout_s * 1000)
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        "appname": "cdcflow",
        "tz_aware": False,  # events carry naive UTC; cdcflow.events normalizes both
        # A BSON date outside Python's datetime (past 9999, before year 1) must not make
        # pymongo raise InvalidBSON inside try_next()/find: that would halt capture on
        # every restart. AUTO decodes such a date as DatetimeMS (epoch milliseconds),
        # which cdcflow.events carries on as Extended JSON.
        "datetime_conversion": DatetimeConversion.DATETIME_AUTO,
    }
    if settings.mongo_tls_ca_file is not None:
        options["tls"] = True
        options["tlsCAFile"] = str(settings.mongo_tls_ca_file)
    if settings.mongo_tls_cert_key_file is not None:
        options["tls"] = True
        options["tlsCertificateKeyFile"] = str(settings.mongo_tls_cert_key_file)
    return options


def open_mongo_client(settings: Settings, *, check: bool = True) -> MongoClient[Document]:
    """A connected client, or :class:`ServiceUnavailable` saying what to do.

    ``mongodb+srv://`` URIs are resolved by pymongo (TLS on by default, as Atlas
    expects). With ``check`` the server is pinged, so a wrong host fails here,
    after ``server_timeout_s``, not at the first read deep inside a worker.
    """
    where = settings.mongo_uri.where
    try:
        client: MongoClient[Document] = MongoClient(
            settings.mongo_uri.reveal(), **client_options(settings)
        )
    except ConfigurationError as error:  # bad URI option, SRV record not found ...
        raise ServiceUnavailable(SERVICE, where, _first_line(error), HINT) from None
    if not check:
        return client
    try:
        client.admin.command("ping")
    except OperationFailure as error:
        client.close()
        if error.code in _AUTH_CODES:
            raise ServiceUnavailable(
                SERVICE, where, "login refused", "check the user and password in CDCFLOW_MONGO_URI"
            ) from None
        raise ServiceUnavailable(SERVICE, where, _first_line(error), HINT) from None
    except ConnectionFailure as error:
        client.close()
        detail = f"no answer within {settings.server_timeout_s:g} s ({_first_line(error)})"
        raise ServiceUnavailable(SERVICE, where, detail, HINT) from None
    except PyMongoError as error:
        client.close()
        raise ServiceUnavailable(SERVICE, where, _first_line(error), HINT) from None
    return client


def wait_for_mongo(
    client: MongoClient[Document],
    settings: Settings,
    stop: threading.Event,
    error: BaseException | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> bool:
    """Ping with exponential backoff (0.5 s … 10 s) until MongoDB answers (True) or
    ``stop`` is set (False). Every attempt is logged with service, where, attempt;
    ``while_waiting`` runs between attempts (a liveness beat: waiting is not hanging)."""
    where = settings.mongo_uri.where
    context = {"stage": "producer", "service": "mongodb", "where": where}
    if error is not None:
        log.warning(
            "lost MongoDB at %s (%s); reconnecting", where, _first_line(error), extra=context
        )

    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.warning(
            "MongoDB at %s still unreachable (%s); retrying in %.1f s",
            where,
            _first_line(failure) if failure else "?",
            state.upcoming_sleep,
            extra={**context, "attempt": state.attempt_number},
        )

    def sleep(seconds: float) -> None:
        stop.wait(seconds)
        if while_waiting is not None:
            while_waiting()

    retrying = Retrying(
        retry=retry_if_exception_type(ConnectionFailure),
        wait=wait_exponential(multiplier=0.5, max=10),
        stop=stop_when_event_set(stop),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

    def ping() -> None:
        # A short, bounded ping (client-side operation timeout): a stop requested
        # while the server is away must not wait out a whole server-selection timeout.
        with pymongo.timeout(PING_TIMEOUT_S):
            client.admin.command("ping")

    try:
        retrying(ping)
    except ConnectionFailure:
        return False
    log.info("MongoDB at %s answers again", where, extra=context)
    return True
