"""Connection URLs whose passwords cannot leak.

A URL like ``amqp://user:s3cret@host`` ends up in log lines, exception messages,
``repr()`` of settings and ``--help`` defaults unless something stops it. Every
connection string cdcflow accepts is parsed into a :class:`ServiceUrl`: its
``str()`` and ``repr()`` show ``***`` in place of the password, and only
:meth:`ServiceUrl.reveal` (called by the one adapter that opens the connection)
gives the real string back. Every password seen is also registered with
:mod:`cdcflow.logs`, whose filter scrubs it from any log line or error text that
a client library formats on its own.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, SecretStr
from pydantic_settings import NoDecode

REDACTED = "***"

_known_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Remember a secret so :func:`scrub` removes it from any text."""
    if secret and len(secret) >= 3:
        _known_secrets.add(secret)
        quoted = urllib.parse.quote(secret, safe="")
        if quoted != secret:
            _known_secrets.add(quoted)


def scrub(text: str) -> str:
    """Replace every registered secret in ``text`` with ``***``."""
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class ServiceUrl:
    """A parsed connection URL that keeps its password in a :class:`SecretStr`."""

    scheme: str
    username: str | None
    password: SecretStr | None = field(compare=False)
    host: str
    port: int | None
    path: str
    query: str

    @classmethod
    def parse(cls, raw: str) -> ServiceUrl:
        if isinstance(raw, ServiceUrl):
            return raw
        text = str(raw).strip()
        parts = urllib.parse.urlsplit(text)
        if not parts.scheme:
            raise ValueError("a URL needs a scheme, such as mongodb://, amqp:// or chdb://")
        # urlsplit cannot parse a multi-host netloc's port ("h1:1,h2:2"), so take
        # userinfo and host list apart by hand.
        netloc = parts.netloc
        userinfo, _, hostinfo = netloc.rpartition("@")
        username: str | None = None
        password: SecretStr | None = None
        if userinfo:
            user, sep, pw = userinfo.partition(":")
            username = urllib.parse.unquote(user)
            if sep:
                plain = urllib.parse.unquote(pw)
                register_secret(plain)
                register_secret(pw)
                password = SecretStr(plain)
        host, port = hostinfo, None
        if "," not in hostinfo and not hostinfo.endswith("]"):
            name, sep, port_text = hostinfo.rpartition(":")
            if sep and port_text.isdigit():
                host, port = name, int(port_text)
        return cls(
            scheme=parts.scheme.lower(),
            username=username,
            password=password,
            host=host,
            port=port,
            path=parts.path,
            query=parts.query,
        )

    def _render(self, password: str | None) -> str:
        netloc = ""
        if self.username is not None:
            netloc = urllib.parse.quote(self.username, safe="")
            if password is not None:
                netloc += ":" + password
            netloc += "@"
        netloc += self.host
        if self.port is not None:
            netloc += f":{self.port}"
        text = f"{self.scheme}://{netloc}{self.path}"
        return f"{text}?{self.query}" if self.query else text

    def reveal(self) -> str:
        """The full URL with its password: pass it to a client library, nowhere else."""
        secret = None
        if self.password is not None:
            secret = urllib.parse.quote(self.password.get_secret_value(), safe="")
        return self._render(secret)

    @property
    def redacted(self) -> str:
        return self._render(REDACTED if self.password is not None else None)

    @property
    def where(self) -> str:
        """Host and port for error messages: where the service was expected."""
        if self.scheme == "chdb":
            return str(self.local_path())
        return f"{self.host}:{self.port}" if self.port else self.host

    @property
    def query_params(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.query))

    def local_path(self) -> Path:
        """For ``chdb://`` URLs: the data folder. ``chdb:///abs`` or ``chdb://rel/dir``."""
        return Path((self.host + self.path) if self.host else self.path).expanduser().resolve()

    def with_path(self, path: str) -> ServiceUrl:
        return ServiceUrl(
            self.scheme, self.username, self.password, self.host, self.port, path, self.query
        )

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"ServiceUrl({self.redacted!r})"


def _parse(value: Any) -> ServiceUrl:
    if isinstance(value, ServiceUrl):
        return value
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise ValueError("expected a URL string")
    return ServiceUrl.parse(value)


Url = Annotated[
    ServiceUrl,
    NoDecode,  # an environment variable holds the URL itself, not JSON
    BeforeValidator(_parse),
    PlainSerializer(lambda url: url.redacted, return_type=str),
]
"""Pydantic field type: parsed and redacted in dumps; reveal() for the real value."""
