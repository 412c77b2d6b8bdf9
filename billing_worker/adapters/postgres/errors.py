"""Translate driver errors into the project's two error roots, at the adapter edge."""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc

from billing_worker.domain.errors import TransientError, UnprocessableEvent

_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
"""Connection exceptions, transaction rollbacks (deadlock, serialization), insufficient
resources, operator intervention (shutdown, cannot connect now)."""

_DATA_SQLSTATE_CLASSES = ("22", "23")
"""Data exceptions and integrity violations: the rows, not the server, are at fault."""


def translate(exc: BaseException) -> BaseException | None:  # noqa: PLR0911 - one rule a line
    """The project error for a driver error, or ``None`` if ``exc`` is not one."""
    if isinstance(exc, TransientError | UnprocessableEvent):
        return None
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return TransientError(f"database connection lost: {orig}")
    if isinstance(exc, sa_exc.TimeoutError):
        return TransientError(f"no database connection available: {exc}")
    if not isinstance(orig, psycopg.Error):
        return None
    sqlstate = orig.sqlstate or ""
    if isinstance(orig, psycopg.OperationalError) or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return TransientError(
            f"database unavailable or contended ({sqlstate or 'no sqlstate'}): {orig}"
        )
    if sqlstate[:2] in _DATA_SQLSTATE_CLASSES:
        return UnprocessableEvent(f"the database refused the data ({sqlstate}): {orig}")
    return None
