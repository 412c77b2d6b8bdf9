"""The usage store and unit of work on PostgreSQL: set-based SQL, one round trip per step.

Each statement takes its rows as one JSON document that PostgreSQL unpacks with
``json_to_recordset``. Binding the same rows as typed arrays is the textbook way, but
psycopg builds array literals in Python, which cost a quarter of the worker's CPU in the
profile; a JSON document is encoded in native code and parsed by the server, on the other
core. Decimals and timestamps travel as strings and are parsed exactly by PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Self

import orjson
import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from billing_worker.adapters.postgres.errors import translate
from billing_worker.domain.errors import TransientError
from billing_worker.domain.usage import AggregateDelta, IdempotencyKey, LedgerEntry, UsageRecord

# ORDER BY keeps the lock order fixed across replicas, so they cannot deadlock.
CLAIM_KEYS = text("""
    INSERT INTO idempotency_keys (source, event_id, fingerprint)
    SELECT k.s, k.i, decode(k.f, 'hex')
    FROM json_to_recordset(CAST(:rows AS json)) AS k(s text, i text, f text)
    ORDER BY k.s, k.i
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING source, event_id
""")

STORED_FINGERPRINTS = text("""
    SELECT k.source, k.event_id, k.fingerprint
    FROM idempotency_keys AS k
    JOIN json_to_recordset(CAST(:rows AS json)) AS w(s text, i text)
      ON k.source = w.s AND k.event_id = w.i
""")

ENSURE_ACCOUNTS = text("""
    INSERT INTO accounts (account_id, plan)
    SELECT a.value, :plan FROM json_array_elements_text(CAST(:rows AS json)) AS a
    ORDER BY a.value
    ON CONFLICT (account_id) DO NOTHING
""")

# The ledger rows and their effect on the running totals go in one statement (a
# data-modifying CTE always runs to completion): one round trip fewer per batch.
APPEND_USAGE = text("""
    WITH ledger AS (
        INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id,
                                  event_type, occurred_at, period_start, period_end, dimensions)
        SELECT e.a, e.m, e.q, e.s, e.i, e.t, e.o, e.ps, e.pe, e.d
        FROM json_to_recordset(CAST(:entries AS json)) AS e(
            a text, m text, q numeric, s text, i text, t text,
            o timestamptz, ps timestamptz, pe timestamptz, d jsonb)
    )
    INSERT INTO usage_aggregates AS agg (account_id, meter, period_start, period_end,
                                         quantity, event_count)
    SELECT d.a, d.m, d.ps, d.pe, d.q, d.n
    FROM json_to_recordset(CAST(:deltas AS json)) AS d(
        a text, m text, ps timestamptz, pe timestamptz, q numeric, n bigint)
    ORDER BY d.a, d.m, d.ps
    ON CONFLICT (account_id, meter, period_start) DO UPDATE
       SET quantity = agg.quantity + EXCLUDED.quantity,
           event_count = agg.event_count + EXCLUDED.event_count,
           updated_at = now()
""")

KNOWN_ACCOUNTS_LIMIT = 200_000


def _json(rows: object) -> str:
    return orjson.dumps(rows).decode()


class KnownAccounts:
    """Account ids known to exist (accounts are never deleted), to skip re-inserting them.

    Shared by the units of work of one process; filled only after a commit. Bounded: when
    full it starts over, which costs a few redundant inserts, never a wrong answer.
    """

    def __init__(self, limit: int = KNOWN_ACCOUNTS_LIMIT) -> None:
        self._ids: set[str] = set()
        self._limit = limit

    def unknown(self, accounts: Iterable[str]) -> list[str]:
        """Those of ``accounts`` not known to exist, sorted."""
        return sorted(a for a in accounts if a not in self._ids)

    def forget(self) -> None:
        """Start over (an account we believed in is missing: the database was restored)."""
        self._ids.clear()

    def add(self, accounts: Iterable[str]) -> None:
        """Remember committed accounts."""
        if len(self._ids) > self._limit:
            self._ids.clear()
        self._ids.update(accounts)


class PostgresUsageStore:
    """``UsageStore`` on one open transaction."""

    def __init__(self, conn: AsyncConnection, known_accounts: KnownAccounts) -> None:
        self._conn = conn
        self._known = known_accounts
        self.created_accounts: list[str] = []

    async def claim_keys(self, records: Sequence[UsageRecord]) -> set[IdempotencyKey]:
        """Insert idempotency records; return the keys this call inserted."""
        if not records:
            return set()
        rows = [{"s": r.source, "i": r.event_id, "f": r.fingerprint.hex()} for r in records]
        result = await self._conn.execute(CLAIM_KEYS, {"rows": _json(rows)})
        return {(source, event_id) for source, event_id in result}

    async def stored_fingerprints(
        self, keys: Sequence[IdempotencyKey]
    ) -> dict[IdempotencyKey, bytes]:
        """The fingerprints already stored for ``keys``."""
        rows = [{"s": source, "i": event_id} for source, event_id in keys]
        result = await self._conn.execute(STORED_FINGERPRINTS, {"rows": _json(rows)})
        return {(source, event_id): bytes(fp) for source, event_id, fp in result}

    async def ensure_accounts(self, accounts: Sequence[str], plan: str) -> None:
        """Create missing accounts on ``plan`` (skipping those known to exist)."""
        unknown = self._known.unknown(accounts)
        if unknown:
            await self._conn.execute(ENSURE_ACCOUNTS, {"rows": _json(unknown), "plan": plan})
            self.created_accounts.extend(unknown)

    async def append_usage(
        self, entries: Sequence[LedgerEntry], deltas: Sequence[AggregateDelta]
    ) -> None:
        """Append ledger rows and add their deltas to the totals, in one statement."""
        iso = _IsoCache()
        ledger = [
            {
                "a": e.account,
                "m": e.meter,
                "q": str(e.quantity),
                "s": e.source,
                "i": e.event_id,
                "t": e.event_type,
                "o": e.occurred_at.isoformat(),
                "ps": iso(e.period.start),
                "pe": iso(e.period.end),
                "d": e.dimensions,
            }
            for e in entries
        ]
        totals = [
            {
                "a": d.account,
                "m": d.meter,
                "ps": iso(d.period.start),
                "pe": iso(d.period.end),
                "q": str(d.quantity),
                "n": d.event_count,
            }
            for d in deltas
        ]
        await self._conn.execute(APPEND_USAGE, {"entries": _json(ledger), "deltas": _json(totals)})


class _IsoCache(dict[datetime, str]):
    """Period bounds repeat across a batch: format each once."""

    def __call__(self, moment: datetime) -> str:
        text = self.get(moment)
        if text is None:
            text = self[moment] = moment.isoformat()
        return text


class PostgresUnitOfWork:
    """One transaction on a pooled connection; driver errors leave it translated."""

    def __init__(self, engine: AsyncEngine, known_accounts: KnownAccounts | None = None) -> None:
        self._engine = engine
        self._known = known_accounts if known_accounts is not None else KnownAccounts()
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None
        self._usage: PostgresUsageStore | None = None

    @property
    def usage(self) -> PostgresUsageStore:
        """The usage store bound to this transaction."""
        if self._usage is None:
            raise RuntimeError("unit of work is not open")
        return self._usage

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._engine.connect()
            self._tx = await self._conn.begin()
        except Exception as exc:
            await self._close()
            raise _translated(exc) from exc
        self._usage = PostgresUsageStore(self._conn, self._known)
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
