"""The usage store and unit of work on PostgreSQL: set-based SQL, one round trip per step.

Each statement takes its rows as one JSON document that PostgreSQL unpacks with
``json_to_recordset``. Binding the same rows as typed arrays is the textbook way, but
psycopg builds array literals in Python, which cost a quarter of the worker's CPU in the
profile; a JSON document is encoded in native code and parsed by the server, on the other
core. Decimals and timestamps travel as strings and are parsed exactly by PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.adapters.postgres.account_store import load_calendars
from billing_worker.domain.periods import PeriodCalendar, calendar_month_of
from billing_worker.domain.pricebook import AGGREGATIONS_THAT_ADD, PriceBook
from billing_worker.domain.quotas import PeriodUsage
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

RELEASE_KEYS = text("""
    DELETE FROM idempotency_keys AS k
    USING json_to_recordset(CAST(:rows AS json)) AS w(s text, i text)
    WHERE k.source = w.s AND k.event_id = w.i
""")

ENSURE_ACCOUNTS = text("""
    INSERT INTO accounts (account_id, plan, created_at, close_from, close_due_at)
    SELECT a.value, :plan, :at, :close_from, :close_due_at
    FROM json_array_elements_text(CAST(:rows AS json)) AS a
    ORDER BY a.value
    ON CONFLICT (account_id) DO NOTHING
""")

# The ledger rows and their effect on the running totals go in one statement (a
# data-modifying CTE always runs to completion): one round trip per batch. Distinct
# values of unique_count meters are claimed first; a total counts only the new ones.
# The statement returns, with each account's plan, the new totals that reach the lowest
# alert level of the plan's limit on that meter: the only ones a threshold can be crossed
# for (an account on a plan the book no longer has is held to the default plan).
APPEND_USAGE = text("""
    WITH ledger AS (
        INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id,
                                  event_type, occurred_at, period_start, period_end,
                                  dimensions, pricebook_version)
        SELECT e.a, e.m, e.q, e.s, e.i, e.t, e.o, e.ps, e.pe, e.d, :version
        FROM json_to_recordset(CAST(:entries AS json)) AS e(
            a text, m text, q numeric, s text, i text, t text,
            o timestamptz, ps timestamptz, pe timestamptz, d jsonb)
    ), fresh AS (
        INSERT INTO meter_unique_values (account_id, meter, period_start, value)
        SELECT u.a, u.m, u.ps, u.v
        FROM json_to_recordset(CAST(:unique AS json)) AS u(a text, m text, ps timestamptz, v text)
        ORDER BY 1, 2, 3, 4
        ON CONFLICT DO NOTHING
        RETURNING account_id, meter, period_start
    ), fresh_counts AS (
        SELECT account_id, meter, period_start, count(*) AS n FROM fresh GROUP BY 1, 2, 3
    ), totals AS (
        INSERT INTO usage_aggregates AS agg (account_id, meter, period_start, period_end,
                                             quantity, event_count, aggregation, latest_at)
        SELECT d.a, d.m, d.ps, d.pe,
               CASE WHEN d.g = 'unique_count' THEN coalesce(f.n, 0) ELSE d.q END,
               d.n, d.g, d.l
        FROM json_to_recordset(CAST(:deltas AS json)) AS d(
            a text, m text, ps timestamptz, pe timestamptz, q numeric, n bigint,
            g text, l timestamptz)
        LEFT JOIN fresh_counts AS f
          ON f.account_id = d.a AND f.meter = d.m AND f.period_start = d.ps
        ORDER BY d.a, d.m, d.ps
        ON CONFLICT (account_id, meter, period_start) DO UPDATE
           SET quantity = CASE agg.aggregation
                   WHEN 'max' THEN greatest(agg.quantity, EXCLUDED.quantity)
                   WHEN 'latest' THEN CASE WHEN EXCLUDED.latest_at >= agg.latest_at
                                           THEN EXCLUDED.quantity ELSE agg.quantity END
                   ELSE agg.quantity + EXCLUDED.quantity END,
               latest_at = greatest(agg.latest_at, EXCLUDED.latest_at),
               event_count = agg.event_count + EXCLUDED.event_count,
               updated_at = now()
        RETURNING account_id, meter, period_start, quantity
    ), levels AS (
        SELECT * FROM json_to_recordset(CAST(:levels AS json)) AS lv(p text, m text, l numeric)
    )
    SELECT t.account_id, t.meter, t.period_start, t.quantity, a.plan
    FROM totals AS t
    JOIN accounts AS a USING (account_id)
    JOIN levels AS lv
      ON lv.m = t.meter
     AND lv.p = coalesce((SELECT p FROM levels WHERE p = a.plan LIMIT 1), :default_plan)
    WHERE t.quantity >= lv.l
""")

KNOWN_ACCOUNTS_LIMIT = 200_000
CALENDAR_TTL_SECONDS = 60.0
"""How long a process trusts an account's period calendar it read. A change of cycle takes
effect no sooner than an hour plus the allowed clock skew after it is recorded (see
``service/stripe_events.py``), so a calendar this old is never wrong for an event the
worker accepts."""


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
        self._calendars: dict[str, tuple[float, PeriodCalendar]] = {}

    def calendars(
        self, accounts: Iterable[str], now: float
    ) -> tuple[dict[str, PeriodCalendar], list[str]]:
        """The cached calendars of ``accounts`` still fresh at ``now`` (monotonic), and the
        accounts (sorted) to read."""
        fresh: dict[str, PeriodCalendar] = {}
        stale: list[str] = []
        for account in accounts:
            cached = self._calendars.get(account)
            if cached is not None and now - cached[0] < CALENDAR_TTL_SECONDS:
                fresh[account] = cached[1]
            else:
                stale.append(account)
        return fresh, sorted(stale)

    def remember_calendars(self, calendars: dict[str, PeriodCalendar], now: float) -> None:
        """Cache calendars read at ``now`` (monotonic)."""
        if len(self._calendars) > self._limit:
            self._calendars.clear()
        for account, calendar in calendars.items():
            self._calendars[account] = (now, calendar)

    def unknown(self, accounts: Iterable[str]) -> list[str]:
        """Those of ``accounts`` not known to exist, sorted."""
        return sorted(a for a in accounts if a not in self._ids)

    def forget(self) -> None:
        """Start over (an account we believed in is missing: the database was restored)."""
        self._ids.clear()
        self._calendars.clear()

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

    async def release_keys(self, keys: Sequence[IdempotencyKey]) -> None:
        """Drop idempotency records this transaction claimed."""
        rows = [{"s": source, "i": event_id} for source, event_id in keys]
        await self._conn.execute(RELEASE_KEYS, {"rows": _json(rows)})

    async def stored_fingerprints(
        self, keys: Sequence[IdempotencyKey]
    ) -> dict[IdempotencyKey, bytes]:
        """The fingerprints already stored for ``keys``."""
        rows = [{"s": source, "i": event_id} for source, event_id in keys]
        result = await self._conn.execute(STORED_FINGERPRINTS, {"rows": _json(rows)})
        return {(source, event_id): bytes(fp) for source, event_id, fp in result}

    async def ensure_accounts(self, accounts: Sequence[str], plan: str, at: datetime) -> None:
        """Create missing accounts on ``plan``, as created ``at`` (skipping those known to
        exist)."""
        unknown = self._known.unknown(accounts)
        if unknown:
            first = calendar_month_of(at)  # a new account is on calendar months
            await self._conn.execute(
                ENSURE_ACCOUNTS,
                {
                    "rows": _json(unknown),
                    "plan": plan,
                    "at": at,
                    "close_from": first.start,
                    "close_due_at": first.end,
                },
            )
            self.created_accounts.extend(unknown)

    async def period_calendars(self, accounts: Sequence[str]) -> dict[str, PeriodCalendar]:
        """Each account's billing periods: from the process cache, else read (one query)."""
        now = time.monotonic()
        calendars, stale = self._known.calendars(accounts, now)
        if stale:
            read = await load_calendars(self._conn, stale)
            self._known.remember_calendars(read, now)
            calendars.update(read)
        return calendars

    async def append_usage(
        self,
        entries: Sequence[LedgerEntry],
        deltas: Sequence[AggregateDelta],
        *,
        book: PriceBook,
    ) -> list[PeriodUsage]:
        """Append ledger rows and fold their deltas into the totals, in one statement.

        Returns the new totals that reach their plan's lowest alert level, with each
        account's plan; ``previous`` is known for totals that add up (sum, count).
        """
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
                "g": d.aggregation.value,
                "l": d.latest_at.isoformat() if d.latest_at is not None else None,
            }
            for d in deltas
        ]
        unique = [
            {"a": d.account, "m": d.meter, "ps": iso(d.period.start), "v": value}
            for d in deltas
            for value in d.unique_values
        ]
        result = await self._conn.execute(
            APPEND_USAGE,
            {
                "entries": _json(ledger),
                "deltas": _json(totals),
                "unique": _json(unique),
                "version": book.version,
                "levels": _alert_levels(book),
                "default_plan": book.default_plan,
            },
        )
        added = {
            (d.account, d.meter, d.period.start): d.quantity
            for d in deltas
            if d.aggregation in AGGREGATIONS_THAT_ADD
        }
        periods = {(d.account, d.meter, d.period.start): d.period for d in deltas}
        usages = []
        for account, meter, period_start, quantity, plan in result:
            key = (account, meter, period_start)
            delta = added.get(key)
            usages.append(
                PeriodUsage(
                    account=account,
                    meter=meter,
                    period=periods[key],
                    plan=plan,
                    used=quantity,
                    previous=quantity - delta if delta is not None else None,
                )
            )
        return usages


def _alert_levels(book: PriceBook) -> str:
    rows = [
        {"p": plan, "m": meter, "l": str(level)}
        for (plan, meter), level in book.alert_levels.items()
    ]
    return _json(rows)


class _IsoCache(dict[datetime, str]):
    """Period bounds repeat across a batch: format each once."""

    def __call__(self, moment: datetime) -> str:
        text = self.get(moment)
        if text is None:
            text = self[moment] = moment.isoformat()
        return text
