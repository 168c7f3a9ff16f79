"""The one adapter for ClickHouse: chdb locally, a server in Kubernetes.

Both are reached through ``clickhouse_connect``'s Client, so the sink, the DDL,
verify and the report run unchanged on either. chdb holds its data folder with a
lock: one process at a time, so the process that loads also answers queries
(the demo stops the consumer before it verifies).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from cdcflow.config import Settings, TableSettings
from cdcflow.errors import ServiceUnavailable
from cdcflow.urls import scrub
from cdcflow.warehouse import ddl

log = logging.getLogger(__name__)

SERVICE = "ClickHouse"

Target = Settings | TableSettings
"""What a warehouse client reads: the whole settings in a CLI command or a test, only
the warehouse's sections and table name in anything Beam pickles."""


def _hint(settings: Target) -> str:
    if settings.clickhouse_url.scheme == "chdb":
        return (
            "chdb opens a data folder from one process at a time: stop the process that "
            "holds it (a running consumer?), or set CDCFLOW_CLICKHOUSE_URL to another folder"
        )
    return "check that ClickHouse is up and CDCFLOW_CLICKHOUSE_URL (host, port, user) is right"


def open_client(settings: Target) -> Client:
    """A connected client, or :class:`ServiceUnavailable` saying where and what to do."""
    url = settings.clickhouse_url
    try:
        if url.scheme == "chdb":
            path = url.local_path()
            path.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(dsn=f"chdb://{path}")
        secure = url.scheme == "https"
        return clickhouse_connect.get_client(
            host=url.host,
            port=url.port or (8443 if secure else 8123),
            username=url.username or "default",
            password=url.password.get_secret_value() if url.password else "",
            secure=secure,
            verify=settings.clickhouse_tls_verify,
            ca_cert=str(settings.clickhouse_tls_ca_file)
            if settings.clickhouse_tls_ca_file
            else None,
            connect_timeout=settings.server_timeout_s,
        )
    except Exception as error:  # clickhouse_connect raises several unrelated types
        detail = scrub(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise ServiceUnavailable(SERVICE, url.where, detail, _hint(settings)) from None


class Warehouse:
    """The warehouse table of one collection, and the statements cdcflow runs on it."""

    def __init__(self, settings: Target, client: Client | None = None) -> None:
        self.settings = settings
        self.database = settings.clickhouse_database
        self.table = settings.table_name
        self.client = client or open_client(settings)

    @property
    def qualified(self) -> str:
        return f"{self.database}.{self.table}"

    def init_schema(self) -> int:
        return ddl.apply_schema(self.client, self.database, self.table)

    def insert(self, rows: pa.Table) -> None:
        """Insert an Arrow table whose columns are named like the table's."""
        if rows.num_rows:
            self.client.insert_arrow(self.qualified, rows)

    def sweep(self, sweep_version: int) -> int:
        """Tombstone documents a snapshot did not see; returns how many it wrote."""
        before = self.count_current()
        self.client.command(ddl.sweep_statement(self.database, self.table, sweep_version))
        return max(0, before - self.count_current())

    def count_current(self) -> int:
        return int(self.scalar(f"SELECT count() FROM {self.qualified}_current"))

    def scalar(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        result = self.client.query(sql, parameters=parameters)
        return result.result_rows[0][0] if result.result_rows else None

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> Sequence[Sequence[Any]]:
        return self.client.query(sql, parameters=parameters).result_rows

    def arrow(self, sql: str, parameters: dict[str, Any] | None = None) -> pa.Table:
        return self.client.query_arrow(sql, parameters=parameters)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a broken connection must not mask the real error
            log.debug("closing the warehouse client failed", exc_info=True)

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
