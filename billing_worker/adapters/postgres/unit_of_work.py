"""The unit of work on PostgreSQL: one transaction, every store bound to it, driver errors
translated into the project's own."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

import psycopg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from billing_worker.adapters.postgres.account_store import PostgresAccounts
from billing_worker.adapters.postgres.close_schedule import PostgresCloseSchedule
from billing_worker.adapters.postgres.credit_store import PostgresCredits
from billing_worker.adapters.postgres.errors import translate
from billing_worker.adapters.postgres.invoice_store import PostgresInvoices
from billing_worker.adapters.postgres.outbox_store import PostgresOutbox
from billing_worker.adapters.postgres.stripe_store import PostgresStripe
from billing_worker.adapters.postgres.usage_store import KnownAccounts, PostgresUsageStore
from billing_worker.domain.errors import TransientError


class PostgresUnitOfWork:
    """One transaction on a pooled connection; driver errors leave it translated."""

    def __init__(
        self,
        engine: AsyncEngine,
        known_accounts: KnownAccounts | None = None,
        *,
        on_outbox_written: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._known = known_accounts if known_accounts is not None else KnownAccounts()
        self._on_outbox_written = on_outbox_written
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None
        self._usage: PostgresUsageStore | None = None
        self._outbox: PostgresOutbox | None = None
        self._credits: PostgresCredits | None = None
        self._accounts: PostgresAccounts | None = None
        self._stripe: PostgresStripe | None = None
        self._invoices: PostgresInvoices | None = None
        self._schedule: PostgresCloseSchedule | None = None

    @property
    def usage(self) -> PostgresUsageStore:
        """The usage store bound to this transaction."""
        if self._usage is None:
            raise RuntimeError("unit of work is not open")
        return self._usage

    @property
    def outbox(self) -> PostgresOutbox:
        """The outbox bound to this transaction."""
        if self._outbox is None:
            raise RuntimeError("unit of work is not open")
        return self._outbox

    @property
    def credits(self) -> PostgresCredits:
        """Credit grants and ledger bound to this transaction."""
        if self._credits is None:
            raise RuntimeError("unit of work is not open")
        return self._credits

    @property
    def accounts(self) -> PostgresAccounts:
        """Accounts bound to this transaction."""
        if self._accounts is None:
            raise RuntimeError("unit of work is not open")
        return self._accounts

    @property
    def stripe(self) -> PostgresStripe:
        """Stripe state bound to this transaction."""
        if self._stripe is None:
            raise RuntimeError("unit of work is not open")
        return self._stripe

    @property
    def invoices(self) -> PostgresInvoices:
        """Invoices bound to this transaction."""
        if self._invoices is None:
            raise RuntimeError("unit of work is not open")
        return self._invoices

    @property
    def schedule(self) -> PostgresCloseSchedule:
        """The close schedule bound to this transaction."""
        if self._schedule is None:
            raise RuntimeError("unit of work is not open")
        return self._schedule

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._engine.connect()
            self._tx = await self._conn.begin()
        except Exception as exc:
            await self._close()
            raise _translated(exc) from exc
        self._usage = PostgresUsageStore(self._conn, self._known)
        self._outbox = PostgresOutbox(self._conn)
        self._credits = PostgresCredits(self._conn)
        self._accounts = PostgresAccounts(self._conn)
        self._stripe = PostgresStripe(self._conn)
        self._invoices = PostgresInvoices(self._conn)
        self._schedule = PostgresCloseSchedule(self._conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()
        if exc is not None:
            if _is_missing_account(exc):
                # The known-accounts cache outlived the rows (a restore): retry without it.
                self._known.forget()
                raise TransientError(f"an account believed to exist is missing: {exc}") from exc
            project_error = translate(exc)
            if project_error is not None:
                raise project_error from exc

    async def commit(self) -> None:
        """Commit; the unit of work is spent afterwards."""
        if self._tx is None:
            raise RuntimeError("unit of work is not open")
        await self._tx.commit()
        self._tx = None
        if self._usage is not None:
            self._known.add(self._usage.created_accounts)
        if self._outbox is not None and self._outbox.written and self._on_outbox_written:
            self._on_outbox_written()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        tx, self._tx = self._tx, None
        if conn is None:
            return
        try:
            if tx is not None and tx.is_active:
                await tx.rollback()
        finally:
            await conn.close()


def _is_missing_account(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    return isinstance(orig, psycopg.errors.ForeignKeyViolation) and "account" in str(orig)


def _translated(exc: Exception) -> BaseException:
    return translate(exc) or exc
