"""The usage store and unit of work on PostgreSQL: set-based SQL, one round trip per step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from billing_worker.adapters.postgres.errors import translate
from billing_worker.domain.usage import AggregateDelta, IdempotencyKey, LedgerEntry, UsageRecord

# Every statement takes whole columns as arrays and unnests them: one round trip per
# step whatever the batch size. ORDER BY keeps lock order fixed across replicas.
CLAIM_KEYS = text("""
    INSERT INTO idempotency_keys (source, event_id, fingerprint)
    SELECT source, event_id, fingerprint
    FROM unnest(CAST(:sources AS text[]), CAST(:event_ids AS text[]),
                CAST(:fingerprints AS bytea[])) AS claim(source, event_id, fingerprint)
    ORDER BY source, event_id
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING source, event_id
""")

STORED_FINGERPRINTS = text("""
    SELECT k.source, k.event_id, k.fingerprint
    FROM idempotency_keys AS k
    JOIN unnest(CAST(:sources AS text[]), CAST(:event_ids AS text[])) AS wanted(source, event_id)
      ON k.source = wanted.source AND k.event_id = wanted.event_id
""")

ENSURE_ACCOUNTS = text("""
    INSERT INTO accounts (account_id, plan)
    SELECT account_id, :plan FROM unnest(CAST(:accounts AS text[])) AS a(account_id)
    ORDER BY account_id
    ON CONFLICT (account_id) DO NOTHING
""")

APPEND_LEDGER = text("""
    INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id, event_type,
                              occurred_at, period_start, period_end, dimensions)
    SELECT * FROM unnest(
        CAST(:accounts AS text[]), CAST(:meters AS text[]), CAST(:quantities AS numeric[]),
        CAST(:sources AS text[]), CAST(:event_ids AS text[]), CAST(:event_types AS text[]),
        CAST(:occurred AS timestamptz[]), CAST(:period_starts AS timestamptz[]),
        CAST(:period_ends AS timestamptz[]), CAST(:dimensions AS jsonb[]))
""")

ADD_TO_AGGREGATES = text("""
    INSERT INTO usage_aggregates AS agg (account_id, meter, period_start, period_end,
                                         quantity, event_count)
    SELECT * FROM unnest(
        CAST(:accounts AS text[]), CAST(:meters AS text[]), CAST(:period_starts AS timestamptz[]),
        CAST(:period_ends AS timestamptz[]), CAST(:quantities AS numeric[]),
        CAST(:counts AS bigint[])) AS d(account_id, meter, period_start, period_end, q, n)
    ORDER BY account_id, meter, period_start
    ON CONFLICT (account_id, meter, period_start) DO UPDATE
       SET quantity = agg.quantity + EXCLUDED.quantity,
           event_count = agg.event_count + EXCLUDED.event_count,
           updated_at = now()
""")


class PostgresUsageStore:
    """``UsageStore`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def claim_keys(self, records: Sequence[UsageRecord]) -> set[IdempotencyKey]:
        """Insert idempotency records; return the keys this call inserted."""
        if not records:
            return set()
        result = await self._conn.execute(
            CLAIM_KEYS,
            {
                "sources": [r.source for r in records],
                "event_ids": [r.event_id for r in records],
                "fingerprints": [r.fingerprint for r in records],
            },
        )
        return {(source, event_id) for source, event_id in result}

    async def stored_fingerprints(
        self, keys: Sequence[IdempotencyKey]
    ) -> dict[IdempotencyKey, bytes]:
        """The fingerprints already stored for ``keys``."""
        result = await self._conn.execute(
            STORED_FINGERPRINTS,
            {"sources": [k[0] for k in keys], "event_ids": [k[1] for k in keys]},
        )
        return {(source, event_id): bytes(fp) for source, event_id, fp in result}

    async def ensure_accounts(self, accounts: Sequence[str], plan: str) -> None:
        """Create missing accounts on ``plan``."""
        await self._conn.execute(ENSURE_ACCOUNTS, {"accounts": list(accounts), "plan": plan})

    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        """Append ledger rows in one statement."""
        await self._conn.execute(
            APPEND_LEDGER,
            {
                "accounts": [e.account for e in entries],
                "meters": [e.meter for e in entries],
                "quantities": [e.quantity for e in entries],
                "sources": [e.source for e in entries],
                "event_ids": [e.event_id for e in entries],
                "event_types": [e.event_type for e in entries],
                "occurred": [e.occurred_at for e in entries],
                "period_starts": [e.period.start for e in entries],
                "period_ends": [e.period.end for e in entries],
                "dimensions": [json.dumps(e.dimensions, separators=(",", ":")) for e in entries],
            },
        )

    async def add_to_aggregates(self, deltas: Sequence[AggregateDelta]) -> None:
        """Upsert the running totals, in the deltas' (sorted) order."""
        await self._conn.execute(
            ADD_TO_AGGREGATES,
            {
                "accounts": [d.account for d in deltas],
                "meters": [d.meter for d in deltas],
                "period_starts": [d.period.start for d in deltas],
                "period_ends": [d.period.end for d in deltas],
                "quantities": [d.quantity for d in deltas],
                "counts": [d.event_count for d in deltas],
            },
        )


class PostgresUnitOfWork:
    """One transaction on a pooled connection; driver errors leave it translated."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
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
        self._usage = PostgresUsageStore(self._conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()
        if exc is not None:
            project_error = translate(exc)
            if project_error is not None:
                raise project_error from exc

    async def commit(self) -> None:
        """Commit; the unit of work is spent afterwards."""
        if self._tx is None:
            raise RuntimeError("unit of work is not open")
        await self._tx.commit()
        self._tx = None

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


def _translated(exc: Exception) -> BaseException:
    return translate(exc) or exc
