"""Reads behind the HTTP API: usage buckets, pages of the ledgers, of payments and of
invoices, and what became of one event. Each query runs on an index named next to it;
nothing fetches rows to add them up in Python."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.adapters.postgres.account_view import (
    describe_entry,
    payment_document,
    payment_entries,
)
from billing_worker.domain.pricebook import Aggregation, Meter

# usage_ledger_account_period (account_id, period_start, meter): the period bound keeps the
# scan to the account's periods that can hold the range; occurred_at clips it exactly.
_AGGREGATE = """
    CASE m.agg
        WHEN 'max' THEN max(l.quantity)
        WHEN 'latest' THEN (array_agg(l.quantity ORDER BY l.occurred_at DESC, l.entry_id DESC))[1]
        WHEN 'unique_count' THEN count(DISTINCT l.dimensions ->> m.field)
        ELSE sum(l.quantity) END
"""
_RANGE = """
    FROM usage_ledger AS l
    JOIN json_to_recordset(CAST(:meters AS json)) AS m(name text, agg text, field text)
      ON m.name = l.meter
    WHERE l.account_id = :account AND l.period_start >= :floor AND l.period_start < :to
      AND l.occurred_at >= :from AND l.occurred_at < :to
"""
BUCKETS = text(f"""
    SELECT l.meter, date_trunc(:unit, l.occurred_at, 'UTC'), {_AGGREGATE}
    {_RANGE}
    GROUP BY l.meter, m.agg, 2 ORDER BY 1, 2
""")
USED = text(f"""
    SELECT l.meter, {_AGGREGATE}
    {_RANGE}
    GROUP BY l.meter, m.agg ORDER BY 1
""")
# usage_aggregates primary key (account_id, meter, period_start)
PERIODS = text("""
    SELECT meter, period_start, period_end, quantity FROM usage_aggregates
    WHERE account_id = :account AND period_start < :to AND period_end > :from
      AND meter = ANY(CAST(:names AS text[]))
    ORDER BY meter, period_start
""")

# account_ledger_account, credit_ledger_account, usage_ledger_account_entry: each
# (account_id, entry_id), read newest first from a per-ledger cursor, merged by time.
LEDGER_PAGE = text("""
    (SELECT 'usage' AS ledger, entry_id, recorded_at, occurred_at AS effective_at,
            meter || ' +' || quantity::text AS what,
            event_source || '/' || event_id AS ref, pricebook_version, NULL::jsonb AS details
     FROM usage_ledger WHERE account_id = :account AND entry_id < :usage
     ORDER BY entry_id DESC LIMIT :limit)
    UNION ALL
    (SELECT 'credits', entry_id, recorded_at, effective_at,
            kind || ' ' || credits::text || coalesce(' on ' || meter, ''),
            concat_ws(' ', event_source || '/' || event_id, 'grant ' || grant_id::text),
            pricebook_version, NULL::jsonb
     FROM credit_ledger WHERE account_id = :account AND entry_id < :credits
     ORDER BY entry_id DESC LIMIT :limit)
    UNION ALL
    (SELECT 'account', entry_id, recorded_at, effective_at, kind, '', pricebook_version,
            details
     FROM account_ledger WHERE account_id = :account AND entry_id < :account_entries
     ORDER BY entry_id DESC LIMIT :limit)
    ORDER BY recorded_at DESC, ledger, entry_id DESC
    LIMIT :limit
""")

# payment_ledger_account (account_id, entry_id): see account_view.PAYMENTS

# invoices' unique (account_id, period_start)
INVOICE_PAGE = text("""
    SELECT invoice_id, period_start, period_end, status, plan, currency, subtotal,
           credits_applied, credits_shortfall, total, closed_at
    FROM invoices
    WHERE account_id = :account AND period_start < :before
    ORDER BY period_start DESC
    LIMIT :limit
""")

# usage_ledger_event (event_source, event_id); rejected_events primary key
RECORDED = text("""
    SELECT entry_id, account_id, meter, quantity, occurred_at, period_start, period_end,
           recorded_at, pricebook_version
    FROM usage_ledger WHERE event_source = :source AND event_id = :id ORDER BY entry_id
""")
REJECTED = text("""
    SELECT reason, detail, queue, rejected_at FROM rejected_events
    WHERE event_source = :source AND event_id = :id
""")

FAR_AHEAD = 2**62
END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)


class BadCursor(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(value: object) -> str:
    """An opaque cursor for ``value`` (JSON)."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """What ``encode_cursor`` encoded; ``BadCursor`` otherwise."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise BadCursor("cursor is not one this API handed out") from exc


def _meters(meters: Sequence[Meter]) -> str:
    return orjson.dumps(
        [{"name": m.name, "agg": m.aggregation.value, "field": m.value_field} for m in meters]
    ).decode()


async def usage_buckets(
    conn: AsyncConnection,
    account: str,
    meters: Sequence[Meter],
    *,
    start: datetime,
    end: datetime,
    floor: datetime,
    unit: str,
) -> tuple[dict[str, Decimal], dict[str, dict[datetime, Decimal]]]:
    """Per meter: its figure over ``[start, end)`` (by its aggregation) and per ``unit``
    (hour or day) bucket start; ``floor`` is the start of the account's period holding
    ``start``."""
    params = {
        "account": account,
        "meters": _meters(meters),
        "from": start,
        "to": end,
        "floor": floor,
    }
    used = {str(m): Decimal(q) for m, q in await conn.execute(USED, params)}
    buckets: dict[str, dict[datetime, Decimal]] = {}
    for meter, bucket, quantity in await conn.execute(BUCKETS, {**params, "unit": unit}):
        buckets.setdefault(str(meter), {})[bucket] = Decimal(quantity)
    return used, buckets


async def usage_periods(
    conn: AsyncConnection, account: str, meters: Sequence[Meter], *, start: datetime, end: datetime
) -> dict[str, list[tuple[datetime, datetime, Decimal]]]:
    """Per meter, the totals of the account's periods overlapping ``[start, end)``."""
    result = await conn.execute(
        PERIODS, {"account": account, "from": start, "to": end, "names": [m.name for m in meters]}
    )
    periods: dict[str, list[tuple[datetime, datetime, Decimal]]] = {}
    for meter, period_start, period_end, quantity in result:
        periods.setdefault(str(meter), []).append((period_start, period_end, Decimal(quantity)))
    return periods


def combined(aggregation: Aggregation, figures: Sequence[Decimal]) -> Decimal:
    """Period totals of one meter as one figure: the largest for ``max``, the latest for
    ``latest``, the sum otherwise (``unique_count``: values distinct per period)."""
    if not figures:
        return Decimal(0)
    if aggregation is Aggregation.MAX:
        return max(figures)
    if aggregation is Aggregation.LATEST:
        return figures[-1]
    return sum(figures, Decimal(0))


async def ledger_page(
    conn: AsyncConnection, account: str, *, cursor: dict[str, int] | None, limit: int
) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """The account's ledger entries (all three ledgers), newest first, and the cursor of
    the next page (None when this is the last)."""
    after = cursor or {}
    params = {
        "account": account,
        "usage": after.get("usage", FAR_AHEAD),
        "credits": after.get("credits", FAR_AHEAD),
        "account_entries": after.get("account", FAR_AHEAD),
        "limit": limit + 1,
    }
    rows = [dict(row._mapping) for row in await conn.execute(LEDGER_PAGE, params)]
    for row in rows:
        if row["details"] is not None:  # an account entry: its kind, described
            row["what"], row["ref"] = describe_entry(row["what"], row["details"])
    page, more = rows[:limit], len(rows) > limit
    if not more:
        return page, None
    following = dict(after)
    for row in page:
        following[row["ledger"]] = min(following.get(row["ledger"], FAR_AHEAD), row["entry_id"])
    return page, following


async def invoice_page(
    conn: AsyncConnection, account: str, *, before: datetime | None, limit: int
) -> tuple[list[dict[str, Any]], datetime | None]:
    """The account's invoices, newest period first, and where the next page starts."""
    rows = [
        dict(row._mapping)
        for row in await conn.execute(
            INVOICE_PAGE,
            {"account": account, "before": before or END_OF_TIME, "limit": limit + 1},
        )
    ]
    page = rows[:limit]
    return page, (page[-1]["period_start"] if len(rows) > limit else None)


async def payment_page(
    conn: AsyncConnection, account: str, *, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """The account's payment-ledger entries, newest first, and the entry id the next page
    reads below (None on the last page)."""
    rows = await payment_entries(conn, account, limit=limit + 1, before=before)
    page = rows[:limit]
    following = page[-1].entry_id if len(rows) > limit else None
    return [payment_document(row) for row in page], following


async def event_fate(
    conn: AsyncConnection, source: str, event_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The ledger rows an event made (one per meter it fed) and its latest rejection."""
    params = {"source": source, "id": event_id}
    recorded = [dict(row._mapping) for row in await conn.execute(RECORDED, params)]
    rejected = (await conn.execute(REJECTED, params)).first()
    return recorded, (dict(rejected._mapping) if rejected is not None else None)
