"""Translate driver errors into the project's two error roots, at the adapter edge."""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc

from billing_worker.domain.errors import TransientError, UnprocessableEvent

_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
"""Connection exceptions, transaction rollbacks (deadlock, serialization), insufficient
resources, operator intervention (shutdown, cannot connect now)."""

_TRANSIENT_SQLSTATES = ("25006",)
"""read_only_sql_transaction: a replica answered, as right after a failover."""

_REFUSED_DATA = (psycopg.errors.CheckViolation, psycopg.errors.NotNullViolation)
"""Integrity violations caused by the rows themselves (others are bugs, not bad input)."""


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
    if (
        isinstance(orig, psycopg.OperationalError)
        or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        or sqlstate in _TRANSIENT_SQLSTATES
    ):
        return TransientError(
            f"database unavailable or contended ({sqlstate or 'no sqlstate'}): {orig}"
        )
    # DataError covers both server-side 22xxx errors and values psycopg cannot send at
    # all (a NUL character in text), which carry no SQLSTATE.
    if isinstance(orig, (psycopg.DataError, *_REFUSED_DATA)):
        return UnprocessableEvent(f"the database refused the data ({sqlstate or 'client'}): {orig}")
    return None
