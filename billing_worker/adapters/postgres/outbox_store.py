"""The outbox on PostgreSQL: rows written inside use-case transactions, read by the relay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.service.ports import OutgoingEvent, QuotaAlert

ADD_EVENTS = text("""
    INSERT INTO outbox (event_id, event_type, subject, payload)
    SELECT o.i, o.t, o.s, o.p
    FROM json_to_recordset(CAST(:rows AS json)) AS o(i text, t text, s text, p jsonb)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
""")

# The alert row is the once-ever guarantee; its event goes out only if the alert is new.
ADD_QUOTA_ALERTS = text("""
    WITH candidate AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS c(
            a text, m text, ps timestamptz, th integer, u numeric, lim numeric,
            i text, t text, p jsonb)
    ), announced AS (
        INSERT INTO quota_alerts (account_id, meter, period_start, threshold, event_id,
                                  used, quota_limit)
        SELECT a, m, ps, th, i, u, lim FROM candidate
        ORDER BY a, m, ps, th
        ON CONFLICT (account_id, meter, period_start, threshold) DO NOTHING
        RETURNING event_id
    )
    INSERT INTO outbox (event_id, event_type, subject, payload)
    SELECT c.i, c.t, c.a, c.p FROM candidate AS c JOIN announced AS n ON n.event_id = c.i
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
""")

PENDING = text("""
    SELECT outbox_id, event_id, event_type, payload::text
    FROM outbox WHERE published_at IS NULL
    ORDER BY outbox_id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
""")

MARK_PUBLISHED = text("""
    UPDATE outbox SET published_at = now()
    WHERE outbox_id IN (SELECT json_array_elements_text(CAST(:ids AS json))::bigint)
""")

BACKLOG = text("""
    SELECT count(*), extract(epoch FROM now() - min(created_at))
    FROM outbox WHERE published_at IS NULL
""")


def _json(rows: object) -> str:
    return orjson.dumps(rows).decode()


class PostgresOutbox:
    """``Outbox`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self.written = 0

    async def add(self, events: Sequence[OutgoingEvent]) -> int:
        """Write events (an id already present is skipped); return how many were new."""
        if not events:
            return 0
        rows = [
            {"i": e.event_id, "t": e.event_type, "s": e.subject, "p": e.payload} for e in events
        ]
        result = await self._conn.execute(ADD_EVENTS, {"rows": _json(rows)})
        written = len(result.all())
        self.written += written
        return written

    async def add_quota_alerts(self, alerts: Sequence[QuotaAlert]) -> int:
        """Record crossings never announced before and write their events; return how many."""
        if not alerts:
            return 0
        rows = [
            {
                "a": a.crossing.account,
                "m": a.crossing.meter,
                "ps": a.crossing.period.start.isoformat(),
                "th": a.crossing.threshold,
                "u": str(a.crossing.used),
                "lim": str(a.crossing.limit),
                "i": a.event.event_id,
                "t": a.event.event_type,
                "p": a.event.payload,
            }
            for a in alerts
        ]
        result = await self._conn.execute(ADD_QUOTA_ALERTS, {"rows": _json(rows)})
        written = len(result.all())
        self.written += written
        return written


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An outbox row waiting to be published."""

    outbox_id: int
    event_id: str
    event_type: str
    body: bytes


async def lock_pending(conn: AsyncConnection, limit: int) -> list[PendingEvent]:
    """The oldest unpublished rows, locked so another replica's relay skips them."""
    result = await conn.execute(PENDING, {"limit": limit})
    return [
        PendingEvent(outbox_id, event_id, event_type, payload.encode())
        for outbox_id, event_id, event_type, payload in result
    ]


async def mark_published(conn: AsyncConnection, outbox_ids: Sequence[int]) -> None:
    """Mark rows published (after the broker confirmed them)."""
    await conn.execute(MARK_PUBLISHED, {"ids": _json(list(outbox_ids))})


async def backlog(conn: AsyncConnection) -> tuple[int, float]:
    """Unpublished rows and the age in seconds of the oldest (0 when none)."""
    row: Any = (await conn.execute(BACKLOG)).one()
    count, age = row
    return int(count), float(age or 0.0)
