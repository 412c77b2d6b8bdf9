"""Which periods are due for closing, from each account's close watermark.

``accounts.close_from`` is the start of the account's earliest period that may still need
an invoice (every period before it has one) and ``close_due_at`` that period's end. A round
reads the accounts whose ``close_due_at`` has passed (an index scan) and, for those only,
the invoices from their watermark on: its cost follows what is due, not the history.

The watermark only moves forward past invoiced periods, under the account's row lock, and
moves back when usage lands in an earlier period that has no invoice (late usage for a
month before the account's first one). A watermark too low costs a look, never a miss.
``-infinity`` (rows written before the watermark existed) means: work it out from the
account's first month and its earliest usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.adapters.postgres.account_store import load_calendars
from billing_worker.domain.periods import BillingPeriod, PeriodCalendar

DUE_ACCOUNTS = text("""
    SELECT a.account_id,
           CASE WHEN a.close_from = '-infinity' THEN
               least(date_trunc('month', a.created_at, 'UTC'),
                     coalesce((SELECT min(g.period_start) FROM usage_aggregates AS g
                               WHERE g.account_id = a.account_id), 'infinity'))
           ELSE a.close_from END,
           a.close_from = '-infinity'
    FROM accounts AS a
    WHERE a.close_due_at <= :cutoff
      AND (CAST(:account AS text) IS NULL OR a.account_id = :account)
    ORDER BY a.close_due_at, a.account_id
    LIMIT :limit
""")

INVOICED_SINCE = text("""
    SELECT i.account_id, i.period_start
    FROM json_to_recordset(CAST(:rows AS json)) AS w(a text, f timestamptz)
    JOIN invoices AS i ON i.account_id = w.a AND i.period_start >= w.f
""")

SET_WATERMARK = text("""
    UPDATE accounts SET close_from = :start, close_due_at = :due WHERE account_id = :account
""")

WATERMARK = text("""
    SELECT nullif(close_from, '-infinity') FROM accounts WHERE account_id = :account
""")

# Late usage of a period before the watermark that has no invoice: the watermark goes back
# to the earliest such period of each account.
REOPEN = text("""
    WITH p AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS p(a text, ps timestamptz,
                                                                  pe timestamptz)
    ), open AS (
        SELECT DISTINCT ON (p.a) p.a, p.ps, p.pe FROM p
        WHERE NOT EXISTS (SELECT 1 FROM invoices AS i
                          WHERE i.account_id = p.a AND i.period_start = p.ps)
        ORDER BY p.a, p.ps
    )
    UPDATE accounts AS a SET close_from = o.ps, close_due_at = o.pe
    FROM open AS o
    WHERE a.account_id = o.a AND a.close_from > o.ps
""")


class PostgresCloseSchedule:
    """``CloseSchedule`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def due_periods(
        self, cutoff: datetime, *, account: str | None, limit: int
    ) -> list[tuple[str, BillingPeriod]]:
        """(account, period) of periods ended by ``cutoff`` and not invoiced yet, oldest
        first. Accounts found with nothing due have their watermark moved up to date."""
        params = {"cutoff": cutoff, "account": account, "limit": limit}
        rows = (await self._conn.execute(DUE_ACCOUNTS, params)).all()
        if not rows:
            return []
        starts = {str(account_id): start for account_id, start, _ in rows}
        calendars = await load_calendars(self._conn, list(starts))
        for account_id, start, unknown in rows:
            if unknown:  # worked out now, so the closes below move it on
                await self._set(str(account_id), calendars[str(account_id)].period_of(start))
        invoiced = await self._invoiced_since(starts)
        due: list[tuple[str, BillingPeriod]] = []
        for account_id, start in starts.items():
            calendar = calendars[account_id]
            open_periods = [
                period
                for period in calendar.periods_between(start, cutoff)
                if period.start not in invoiced[account_id]
            ]
            if open_periods:
                due.extend((account_id, period) for period in open_periods)
            else:
                await self._set(account_id, _first_open(calendar, start, invoiced[account_id]))
        due.sort(key=lambda item: (item[1].start, item[0]))
        return due[:limit]

    async def advance(self, account: str, calendar: PeriodCalendar) -> None:
        """Move the watermark past the periods invoiced from it on (call with the account
        row locked, after writing an invoice)."""
        start = (await self._conn.execute(WATERMARK, {"account": account})).scalar_one()
        if start is None:
            return  # not worked out yet: the next round does (due_periods sets it first)
        invoiced = await self._invoiced_since({account: start})
        await self._set(account, _first_open(calendar, start, invoiced[account]))

    async def reopen(self, periods: Sequence[tuple[str, BillingPeriod]]) -> None:
        """Usage landed in these (account, period) pairs after they ended: a period before
        an account's watermark without an invoice moves the watermark back to it."""
        rows = [
            {"a": a, "ps": p.start.isoformat(), "pe": p.end.isoformat()}
            for a, p in sorted(set(periods), key=lambda item: (item[0], item[1].start))
        ]
        await self._conn.execute(REOPEN, {"rows": orjson.dumps(rows).decode()})

    async def _invoiced_since(self, starts: Mapping[str, datetime]) -> dict[str, set[datetime]]:
        rows = [{"a": a, "f": f.isoformat()} for a, f in starts.items()]
        result = await self._conn.execute(INVOICED_SINCE, {"rows": orjson.dumps(rows).decode()})
        invoiced: dict[str, set[datetime]] = {a: set() for a in starts}
        for account_id, period_start in result:
            invoiced[str(account_id)].add(period_start)
        return invoiced

    async def _set(self, account: str, period: BillingPeriod) -> None:
        await self._conn.execute(
            SET_WATERMARK, {"account": account, "start": period.start, "due": period.end}
        )


def _first_open(
    calendar: PeriodCalendar, start: datetime, invoiced: set[datetime]
) -> BillingPeriod:
    """The account's first period from ``start`` on without an invoice."""
    period = calendar.period_of(start)
    while period.start in invoiced:
        period = calendar.period_of(period.end)
    return period
