"""RabbitMQ: connection parameters, topology, queue depth.

The one place that knows how cdcflow's exchange and queues are shaped::

    exchange <exchange> (direct, durable)
      └─ routing key <collection> ─▶ queue <collection>  (quorum, x-delivery-limit,
                                      dead letters at-least-once ─▶ <collection>.failed)
    queue <collection>.failed (quorum): poison messages, with their reason in headers

Declaring is idempotent; a queue that exists with other arguments is reported
with what to do instead of pika's bare ``PRECONDITION_FAILED``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from cdcflow.config import QueueSettings, Settings
from cdcflow.errors import ConfigError, ServiceUnavailable
from cdcflow.urls import scrub

Broker = Settings | QueueSettings
"""What the functions here read: the whole settings in a CLI command or a test, only
the broker's sections and queue names in anything Beam pickles."""

SERVICE = "RabbitMQ"
HINT = (
    "check CDCFLOW_AMQP_URL (host, port, vhost, user); for a local broker, unset it and "
    "`cdcflow demo` starts one, or run `cdcflow broker`"
)


def connection_parameters(settings: Broker, *, heartbeat: int = 30) -> pika.URLParameters:
    """pika parameters from ``CDCFLOW_AMQP_URL`` plus the TLS files, if any."""
    url = settings.amqp_url
    params = pika.URLParameters(url.reveal())
    params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.socket_timeout = settings.server_timeout_s
    params.blocked_connection_timeout = 60
    params.client_properties = {"connection_name": "cdcflow"}
    if url.scheme == "amqps":
        context = ssl.create_default_context(
            cafile=str(settings.amqp_tls_ca_file) if settings.amqp_tls_ca_file else None
        )
        if settings.amqp_tls_cert_file:
            context.load_cert_chain(
                str(settings.amqp_tls_cert_file),
                str(settings.amqp_tls_key_file) if settings.amqp_tls_key_file else None,
            )
        params.ssl_options = pika.SSLOptions(context, server_hostname=url.host)
    return params


def connect(settings: Broker, *, heartbeat: int = 30) -> pika.BlockingConnection:
    """A blocking connection, or :class:`ServiceUnavailable` with what to do."""
    where = settings.amqp_url.where
    try:
        return pika.BlockingConnection(connection_parameters(settings, heartbeat=heartbeat))
    except pika.exceptions.ProbableAuthenticationError:
        raise ServiceUnavailable(
            SERVICE, where, "login refused", "check the user and password in CDCFLOW_AMQP_URL"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise ServiceUnavailable(
            SERVICE,
            where,
            f"access to vhost {settings.amqp_url.path or '/'} denied",
            "check the vhost in CDCFLOW_AMQP_URL and the user's permissions",
        ) from None
    except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as error:
        detail = scrub(str(error) or type(error).__name__)
        raise ServiceUnavailable(SERVICE, where, f"cannot connect ({detail})", HINT) from None


@contextlib.contextmanager
def channel(settings: Broker) -> Iterator[BlockingChannel]:
    """A channel on a short-lived connection, closed on exit."""
    connection = connect(settings)
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def main_queue_arguments(settings: Broker) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.failed_queue_name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


FAILED_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


def declare_topology(ch: BlockingChannel, settings: Broker) -> None:
    """Declare exchange, main queue, failed queue and binding (idempotent)."""
    try:
        ch.exchange_declare(settings.exchange, exchange_type="direct", durable=True)
        ch.queue_declare(settings.failed_queue_name, durable=True, arguments=FAILED_QUEUE_ARGUMENTS)
        ch.queue_declare(
            settings.queue_name, durable=True, arguments=main_queue_arguments(settings)
        )
        ch.queue_bind(settings.queue_name, settings.exchange, routing_key=settings.routing_key)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 406:
            raise ConfigError(
                f"RabbitMQ refused the topology: {error.reply_text}. A queue or exchange of "
                "that name exists with other settings: delete it (rabbitmqctl delete_queue "
                "NAME) or choose another name with CDCFLOW_QUEUE / CDCFLOW_EXCHANGE"
            ) from None
        raise


def ensure_topology(settings: Broker) -> None:
    with channel(settings) as ch:
        declare_topology(ch, settings)


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    messages: int | None  # ready messages; None when the queue does not exist
    consumers: int | None


def queue_depth(ch: BlockingChannel, queue: str) -> QueueDepth:
    """Ready messages and consumers, from a passive declare (no management plugin needed).

    A passive declare of a missing queue closes the channel: callers pass a channel
    they can lose, see :func:`queue_depths`.
    """
    try:
        frame = ch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return QueueDepth(queue, None, None)
        raise
    return QueueDepth(queue, frame.method.message_count, frame.method.consumer_count)


def queue_depths(connection: pika.BlockingConnection, *queues: str) -> list[QueueDepth]:
    """Depths of several queues, each on a fresh channel (a 404 closes its channel)."""
    depths = []
    for queue in queues:
        ch = connection.channel()
        depths.append(queue_depth(ch, queue))
        if ch.is_open:
            ch.close()
    return depths
