"""Errors a user can act on.

Expected failures (a service that is down, a wrong URL, a bad setting) are raised
as :class:`CdcflowError` subclasses carrying one line that says what failed, where,
and what to do. The CLI prints that line and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from cdcflow.urls import scrub


class CdcflowError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 1

    def __str__(self) -> str:
        return scrub(super().__str__())


class ConfigError(CdcflowError):
    exit_code = 2


class ServiceUnavailable(CdcflowError):
    """A service cdcflow depends on could not be reached or refused us."""

    exit_code = 3

    def __init__(self, service: str, where: str, detail: str, hint: str) -> None:
        self.service = service
        self.where = where
        self.detail = scrub(detail)
        self.hint = hint
        super().__init__(f"{service} at {where}: {self.detail}. {hint}")


class HistoryLost(CdcflowError):
    """The change stream cannot resume from the saved token (MongoDB error 286)."""


class VerifyFailed(CdcflowError):
    exit_code = 1
