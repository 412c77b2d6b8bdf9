"""The record of rejected events: what the worker refused, why and when, for lookups."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.service.ports import OutgoingEvent

RECORD = text("""
    INSERT INTO rejected_events (event_source, event_id, reason, detail, queue, rejected_at)
    SELECT r.s, r.i, r.reason, r.detail, r.q, r.at
    FROM json_to_recordset(CAST(:rows AS json))
        AS r(s text, i text, reason text, detail text, q text, at timestamptz)
    ORDER BY r.s, r.i
    ON CONFLICT (event_source, event_id) DO UPDATE
       SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, queue = EXCLUDED.queue,
           rejected_at = EXCLUDED.rejected_at
""")

PRUNE = text("""
    DELETE FROM rejected_events
    WHERE ctid IN (SELECT ctid FROM rejected_events WHERE rejected_at < :before LIMIT :limit)
""")


class PostgresRejections:
    """Writes and prunes ``rejected_events`` on connections of its own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, notices: Sequence[OutgoingEvent]) -> None:
        """Record the ``usage.rejected`` notices whose event could be named (source, id);
        a later refusal of the same event replaces the earlier one."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for notice in notices:
            data = notice.payload.get("data", {})
            source, event_id = data.get("source"), data.get("original_id")
            if not source or not event_id:
                continue  # nothing to look it up by
            rows[(source, event_id)] = {
                "s": source,
                "i": event_id,
                "reason": data.get("reason", ""),
                "detail": data.get("detail", ""),
                "q": data.get("queue", ""),
                "at": notice.payload.get("time"),
            }
        if not rows:
            return
        async with self._engine.begin() as conn:
            await conn.execute(RECORD, {"rows": orjson.dumps(list(rows.values())).decode()})

    async def prune(self, before: datetime, limit: int = 10_000) -> int:
        """Forget rejections older than ``before`` (at most ``limit`` a call)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(PRUNE, {"before": before, "limit": limit})
        return int(result.rowcount or 0)
