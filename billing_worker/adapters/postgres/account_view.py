"""Read-only queries behind ``billing-worker account show``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.periods import BillingPeriod

GRANTS = text("""
    SELECT grant_id, source, amount, remaining, priority, valid_from, expires_at, note
    FROM credit_grants WHERE account_id = :account
    ORDER BY (remaining > 0) DESC, priority, expires_at NULLS LAST, created_at, grant_id
""")

TOTALS = text("""
    SELECT meter, aggregation, quantity, event_count FROM usage_aggregates
    WHERE account_id = :account AND period_start = :start ORDER BY meter
""")

RECENT = text("""
    (SELECT 'usage' AS ledger, entry_id, recorded_at, occurred_at AS effective_at,
            meter || ' +' || quantity::text AS what,
            event_source || '/' || event_id AS ref, pricebook_version
     FROM usage_ledger WHERE account_id = :account ORDER BY entry_id DESC LIMIT :limit)
    UNION ALL
    (SELECT 'credits', entry_id, recorded_at, effective_at,
            kind || ' ' || credits::text || coalesce(' on ' || meter, ''),
            coalesce(event_source || '/' || event_id, 'grant ' || grant_id::text, ''),
            pricebook_version
     FROM credit_ledger WHERE account_id = :account ORDER BY entry_id DESC LIMIT :limit)
    UNION ALL
    (SELECT 'account', entry_id, recorded_at, effective_at,
            kind || ' ' || coalesce(details ->> 'previous_plan', '(new)') || ' -> '
                || coalesce(details ->> 'plan', '?'),
            coalesce(details ->> 'change_id', ''), pricebook_version
     FROM account_ledger WHERE account_id = :account ORDER BY entry_id DESC LIMIT :limit)
    ORDER BY recorded_at DESC, entry_id DESC
    LIMIT :limit
""")


@dataclass(frozen=True, slots=True)
class GrantRow:
    """A grant as shown to an operator."""

    grant_id: int
    source: str
    amount: Decimal
    remaining: Decimal
    priority: int
    valid_from: datetime
    expires_at: datetime | None
    note: str


@dataclass(frozen=True, slots=True)
class TotalRow:
    """A meter's period total."""

    meter: str
    aggregation: str
    quantity: Decimal
    events: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One recent entry of any of the account's ledgers."""

    ledger: str
    entry_id: int
    recorded_at: datetime
    effective_at: datetime
    what: str
    ref: str
    pricebook_version: str | None


async def grants(conn: AsyncConnection, account: str) -> list[GrantRow]:
    """Every grant of the account, live ones first in burn order."""
    return [GrantRow(*row) for row in await conn.execute(GRANTS, {"account": account})]


async def period_totals(
    conn: AsyncConnection, account: str, period: BillingPeriod
) -> list[TotalRow]:
    """The account's meter totals in ``period``."""
    result = await conn.execute(TOTALS, {"account": account, "start": period.start})
    return [TotalRow(*row) for row in result]


async def recent_entries(conn: AsyncConnection, account: str, limit: int) -> list[LedgerRow]:
    """The latest ``limit`` entries across the usage, credit and account ledgers."""
    result = await conn.execute(RECENT, {"account": account, "limit": limit})
    rows: list[Any] = list(result)
    return [LedgerRow(*row) for row in rows]
