"""Queue depth from RabbitMQ's management API: ready + unacknowledged, with a timeout.

The depth the autoscaler uses comes from the broker, never from a consumer (a consumer
that is not running reports nothing: scale-from-zero must read the broker). Each
reading says which source answered; a failure raises :class:`DepthReadError` whose
text names the endpoint without its password.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cdcflow.urls import ServiceUrl, scrub
from cdcflow_operator.scaling import DepthReading

DEFAULT_MANAGEMENT_PORT = 15672
TIMEOUT_S = 5.0


class DepthReadError(Exception):
    """The depth could not be read; the message says from where and why."""


def _amqp(amqp_url: str) -> ServiceUrl:
    """An amqp(s):// URL with a host; ValueError (without the URL: it may hold a
    password) for anything else."""
    url = ServiceUrl.parse(amqp_url)
    if url.scheme not in ("amqp", "amqps") or not url.host:
        raise ValueError("not an amqp:// or amqps:// URL with a host")
    return url


def management_url_from_amqp(amqp_url: str) -> str:
    """The management API of the host an AMQP URL names, with the same login."""
    url = _amqp(amqp_url)
    login = ""
    if url.username:
        password = url.password.get_secret_value() if url.password else ""
        login = (
            f"{urllib.parse.quote(url.username, safe='')}:{urllib.parse.quote(password, safe='')}@"
        )
    scheme = "https" if url.scheme == "amqps" else "http"
    return f"{scheme}://{login}{url.host}:{DEFAULT_MANAGEMENT_PORT}/"


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL's path names (``/`` when empty)."""
    path = _amqp(amqp_url).path.lstrip("/")
    return urllib.parse.unquote(path) if path else "/"


def read_depth(
    management_url: str, vhost: str, queue: str, *, timeout: float = TIMEOUT_S
) -> DepthReading:
    """Ready and unacked messages of ``queue`` and its ack rate, from the management API.

    A queue that does not exist yet (nothing declared it) has depth 0.
    """
    try:
        url = ServiceUrl.parse(management_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an http:// or https:// URL with a host")
    except ValueError as error:
        # A malformed URL in a Secret is a failed read the status reports, not a crash
        # of the reconcile (which would then write no status at all).
        raise DepthReadError(
            scrub(f"rabbitmq-management: the management URL is malformed: {error}")
        ) from None
    where = f"{url.scheme}://{url.host}:{url.port or DEFAULT_MANAGEMENT_PORT}"
    path = f"api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
    request = urllib.request.Request(f"{where}/{path}")
    if url.username:
        password = url.password.get_secret_value() if url.password else ""
        token = base64.b64encode(f"{url.username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    source = f"rabbitmq-management {where}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return DepthReading(ready=0, unacked=0, source=f"{source} (queue not declared yet)")
        raise DepthReadError(f"{source}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as error:
        raise DepthReadError(scrub(f"{source}: {getattr(error, 'reason', error)}")) from None
    stats = payload.get("message_stats") or {}
    rate = (stats.get("ack_details") or {}).get("rate")
    return DepthReading(
        ready=int(payload.get("messages_ready") or 0),
        unacked=int(payload.get("messages_unacknowledged") or 0),
        source=source,
        ack_rate=float(rate) if rate is not None else None,
    )
