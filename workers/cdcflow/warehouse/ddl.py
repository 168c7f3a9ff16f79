"""SQL that lives once, in ``sql/``, for chdb and a ClickHouse server alike.

Files run in name order; each holds one or more statements separated by ``;`` at
the end of a line. Placeholders are identifiers from validated settings (database,
table) or integers rendered here: never text from a message.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Protocol

_STATEMENT_END = re.compile(r";\s*$", re.MULTILINE)
_COMMENT = re.compile(r"^\s*--.*$", re.MULTILINE)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CommandRunner(Protocol):
    def command(self, cmd: str) -> object: ...


def _sql(name: str) -> str:
    return resources.files("cdcflow.warehouse").joinpath("sql", name).read_text("utf-8")


def _identifiers(database: str, table: str) -> dict[str, str]:
    for name in (database, table):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain identifier")
    return {"database": database, "table": table}


def split_statements(text: str) -> list[str]:
    body = _COMMENT.sub("", text)
    return [part.strip() for part in _STATEMENT_END.split(body) if part.strip()]


def schema_statements(database: str, table: str) -> list[str]:
    """Every statement that creates the warehouse, in order, ready to run."""
    names = _identifiers(database, table)
    files = sorted(
        entry.name
        for entry in resources.files("cdcflow.warehouse").joinpath("sql").iterdir()
        if entry.name[:3].isdigit() and entry.name.endswith(".sql")
    )
    statements: list[str] = []
    for name in files:
        statements += [statement.format(**names) for statement in split_statements(_sql(name))]
    return statements


def apply_schema(client: CommandRunner, database: str, table: str) -> int:
    """Create what is missing (every statement is idempotent); returns statements run."""
    statements = schema_statements(database, table)
    for statement in statements:
        client.command(statement)
    return len(statements)


def uint128(value: int) -> str:
    """A UInt128 literal: plain literals above 2**64 would be read as Float64."""
    if not 0 <= value < 1 << 128:
        raise ValueError("not a UInt128")
    return f"toUInt128('{value}')"


def sweep_statement(database: str, table: str, sweep_version: int) -> str:
    """The tombstone sweep that closes a snapshot (see sql/sweep.sql)."""
    (statement,) = split_statements(_sql("sweep.sql"))
    return statement.format(**_identifiers(database, table), sweep_version=uint128(sweep_version))
