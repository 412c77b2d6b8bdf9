"""Accounts, their plans and the account ledger; price-book versions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_worker.adapters.postgres.errors import translate
from billing_worker.domain.periods import BillingPeriod
from billing_worker.service.ports import Account

LOCK_ACCOUNT = text("""
    SELECT account_id, plan, status, created_at, plan_changed_at FROM accounts
    WHERE account_id = :account FOR UPDATE
""")

GET_ACCOUNT = text("""
    SELECT account_id, plan, status, created_at, plan_changed_at FROM accounts
    WHERE account_id = :account
""")

CREATE_ACCOUNT = text("""
    INSERT INTO accounts (account_id, plan) VALUES (:account, :plan)
    ON CONFLICT (account_id) DO NOTHING
    RETURNING account_id
""")

SET_PLAN = text("""
    UPDATE accounts SET plan = :plan, status = :status, plan_changed_at = :at
    WHERE account_id = :account
""")

APPEND_ENTRY = text("""
    INSERT INTO account_ledger (account_id, kind, details, pricebook_version, effective_at)
    VALUES (:account, :kind, CAST(:details AS jsonb), :version, :at)
""")

PERIOD_USAGE = text("""
    SELECT meter, quantity, event_count FROM usage_aggregates
    WHERE account_id = :account AND period_start = :start
    ORDER BY meter
""")


def _row(row: Any) -> Account:
    account, plan, status, created_at, changed = row
    return Account(account, plan, status, created_at, changed)


class PostgresAccounts:
    """``AccountStore`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, account: str, *, lock: bool = False) -> Account | None:
        """The account, or None; ``lock`` holds it until the transaction ends."""
        row = (
            await self._conn.execute(LOCK_ACCOUNT if lock else GET_ACCOUNT, {"account": account})
        ).first()
        return _row(row) if row is not None else None

    async def create(self, account: str, plan: str) -> bool:
        """Create the account on ``plan`` unless it exists; True if this call created it."""
        result = await self._conn.execute(CREATE_ACCOUNT, {"account": account, "plan": plan})
        return result.first() is not None

    async def set_plan(self, account: str, plan: str, status: str, at: datetime) -> None:
        """Move the account to ``plan`` / ``status`` from ``at``."""
        await self._conn.execute(
            SET_PLAN, {"account": account, "plan": plan, "status": status, "at": at}
        )

    async def append_entry(
        self, account: str, kind: str, details: dict[str, Any], version: str, at: datetime
    ) -> None:
        """Append an account-ledger entry."""
        await self._conn.execute(
            APPEND_ENTRY,
            {
                "account": account,
                "kind": kind,
                "details": orjson.dumps(details).decode(),
                "version": version,
                "at": at,
            },
        )

    async def period_usage(self, account: str, period: BillingPeriod) -> dict[str, Decimal]:
        """Every meter's total for the account in ``period``."""
        result = await self._conn.execute(PERIOD_USAGE, {"account": account, "start": period.start})
        return {meter: quantity for meter, quantity, _count in result}


PLAN_AND_USAGE = text("""
    SELECT a.plan, coalesce(g.quantity, 0)
    FROM accounts AS a
    LEFT JOIN usage_aggregates AS g
      ON g.account_id = a.account_id AND g.meter = :meter AND g.period_start = :start
    WHERE a.account_id = :account
""")


class PostgresUsageReader:
    """``UsageReader`` on an engine: one autocommit statement per check, no transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def plan_and_usage(
        self, account: str, meter: str, period: BillingPeriod
    ) -> tuple[str | None, Decimal]:
        """The account's plan (None if never seen) and its usage of ``meter`` in ``period``."""
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        PLAN_AND_USAGE, {"account": account, "meter": meter, "start": period.start}
                    )
                ).first()
        except Exception as exc:
            raise translate(exc) or exc from exc
        if row is None:
            return None, Decimal(0)
        return row[0], row[1]
