"""Accounts, their plans and the account ledger; price-book versions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_worker.adapters.postgres.errors import translate
from billing_worker.domain.periods import (
    DEFAULT_CALENDAR,
    BillingPeriod,
    Cycle,
    CycleChange,
    PeriodCalendar,
    calendar_month_of,
)
from billing_worker.service.ports import Account

LOCK_ACCOUNT = text("""
    SELECT account_id, plan, status, created_at, plan_changed_at, plan_billed_by,
           plan_subscription_id
    FROM accounts WHERE account_id = :account FOR UPDATE
""")

GET_ACCOUNT = text("""
    SELECT account_id, plan, status, created_at, plan_changed_at, plan_billed_by,
           plan_subscription_id
    FROM accounts WHERE account_id = :account
""")

CREATE_ACCOUNT = text("""
    INSERT INTO accounts (account_id, plan, created_at, close_from, close_due_at)
    VALUES (:account, :plan, :at, :close_from, :close_due_at)
    ON CONFLICT (account_id) DO NOTHING
    RETURNING account_id
""")

SET_PLAN = text("""
    UPDATE accounts SET plan = :plan, status = :status, plan_changed_at = :at,
           plan_billed_by = :billed_by, plan_subscription_id = :subscription
    WHERE account_id = :account
""")

APPEND_ENTRY = text("""
    INSERT INTO account_ledger (account_id, kind, details, pricebook_version, effective_at)
    VALUES (:account, :kind, CAST(:details AS jsonb), :version, :effective)
""")

PERIOD_USAGE = text("""
    SELECT meter, quantity, event_count FROM usage_aggregates
    WHERE account_id = :account AND period_start = :start
    ORDER BY meter
""")


CYCLE_CHANGES = text("""
    SELECT c.account_id, c.effective_from, c.anchor, c.months
    FROM account_period_cycles AS c
    JOIN json_array_elements_text(CAST(:rows AS json)) AS a(id) ON c.account_id = a.id
    ORDER BY c.account_id, c.effective_from
""")

ADD_CYCLE_CHANGE = text("""
    INSERT INTO account_period_cycles (account_id, effective_from, anchor, months,
                                       subscription_id)
    VALUES (:account, :effective, :anchor, :months, :subscription)
    ON CONFLICT (account_id, effective_from) DO UPDATE
       SET anchor = EXCLUDED.anchor, months = EXCLUDED.months,
           subscription_id = EXCLUDED.subscription_id, recorded_at = now()
""")

# The end of the latest period holding usage: a new cycle may only start at or after it.
USAGE_HORIZON = text("""
    SELECT max(period_end) FROM usage_aggregates WHERE account_id = :account
""")


async def load_calendars(
    conn: AsyncConnection, accounts: Sequence[str]
) -> dict[str, PeriodCalendar]:
    """The period calendars of ``accounts`` (calendar months for those without changes)."""
    changes: dict[str, list[CycleChange]] = {account: [] for account in accounts}
    if accounts:
        result = await conn.execute(CYCLE_CHANGES, {"rows": orjson.dumps(list(accounts)).decode()})
        for account, effective, anchor, months in result:
            changes[account].append(CycleChange(effective, Cycle(anchor, months)))
    return {
        account: PeriodCalendar(tuple(rows)) if rows else DEFAULT_CALENDAR
        for account, rows in changes.items()
    }


def _row(row: Any) -> Account:
    account, plan, status, created_at, changed, billed_by, subscription = row
    return Account(account, plan, status, created_at, changed, billed_by, subscription)


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

    async def create(self, account: str, plan: str, at: datetime) -> bool:
        """Create the account on ``plan``, as created ``at``, unless it exists; True if this
        call created it."""
        first = calendar_month_of(at)  # a new account is on calendar months
        result = await self._conn.execute(
            CREATE_ACCOUNT,
            {
                "account": account,
                "plan": plan,
                "at": at,
                "close_from": first.start,
                "close_due_at": first.end,
            },
        )
        return result.first() is not None

    async def set_plan(
        self,
        account: str,
        plan: str,
        status: str,
        at: datetime,
        *,
        billed_by: str = "worker",
        subscription: str | None = None,
    ) -> None:
        """Move the account to ``plan`` / ``status`` from ``at``."""
        await self._conn.execute(
            SET_PLAN,
            {
                "account": account,
                "plan": plan,
                "status": status,
                "at": at,
                "billed_by": billed_by,
                "subscription": subscription,
            },
        )

    async def append_entry(
        self,
        account: str,
        kind: str,
        details: dict[str, Any],
        version: str,
        at: datetime,
        *,
        effective_at: datetime | None = None,
    ) -> None:
        """Append an account-ledger entry, recorded ``at``, in effect from ``effective_at``."""
        await self._conn.execute(
            APPEND_ENTRY,
            {
                "account": account,
                "kind": kind,
                "details": orjson.dumps(details).decode(),
                "version": version,
                "effective": effective_at or at,
            },
        )

    async def period_usage(self, account: str, period: BillingPeriod) -> dict[str, Decimal]:
        """Every meter's total for the account in ``period``."""
        result = await self._conn.execute(PERIOD_USAGE, {"account": account, "start": period.start})
        return {meter: quantity for meter, quantity, _count in result}

    async def period_calendar(self, account: str) -> PeriodCalendar:
        """The account's billing periods (calendar months unless a cycle was set)."""
        return (await load_calendars(self._conn, [account]))[account]

    async def add_cycle_change(
        self, account: str, change: CycleChange, subscription: str | None
    ) -> None:
        """Record that the account's periods follow ``change.cycle`` from its moment on."""
        await self._conn.execute(
            ADD_CYCLE_CHANGE,
            {
                "account": account,
                "effective": change.effective_from,
                "anchor": change.cycle.anchor,
                "months": change.cycle.months,
                "subscription": subscription,
            },
        )

    async def usage_horizon(self, account: str) -> datetime | None:
        """The end of the latest period that holds usage of the account, if any."""
        return (await self._conn.execute(USAGE_HORIZON, {"account": account})).scalar()


# Periods of an account never overlap, so the total whose period contains `now` is the
# current one; the cycle changes are for the period's bounds when there is no total yet.
PLAN_AND_USAGE = text("""
    SELECT a.plan, g.quantity, g.period_start, g.period_end,
           (SELECT json_agg(json_build_array(c.effective_from, c.anchor, c.months)
                            ORDER BY c.effective_from)
            FROM account_period_cycles AS c WHERE c.account_id = a.account_id)
    FROM accounts AS a
    LEFT JOIN usage_aggregates AS g
      ON g.account_id = a.account_id AND g.meter = :meter
     AND g.period_start <= :now AND :now < g.period_end
    WHERE a.account_id = :account
""")


class PostgresUsageReader:
    """``UsageReader`` on an engine: one autocommit statement per check, no transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def plan_and_usage(
        self, account: str, meter: str, now: datetime
    ) -> tuple[str | None, Decimal, BillingPeriod]:
        """The account's plan (None if never seen), its usage of ``meter`` in its period
        containing ``now``, and that period."""
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        PLAN_AND_USAGE, {"account": account, "meter": meter, "now": now}
                    )
                ).first()
        except Exception as exc:
            raise translate(exc) or exc from exc
        if row is None:
            return None, Decimal(0), calendar_month_of(now)
        plan, quantity, start, end, cycles = row
        if quantity is not None:
            return plan, quantity, BillingPeriod(start, end)
        calendar = PeriodCalendar(
            tuple(
                CycleChange(_moment(effective), Cycle(_moment(anchor), months))
                for effective, anchor, months in cycles or ()
            )
        )
        return plan, Decimal(0), calendar.period_of(now)


def _moment(value: str) -> datetime:
    """A timestamptz as ``json_build_array`` writes it."""
    return datetime.fromisoformat(value)
