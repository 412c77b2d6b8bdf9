"""Read-only queries behind ``billing-worker report`` and ``invoice show``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.periods import BillingPeriod
from schemas.events import format_decimal

BY_PLAN = text("""
    SELECT plan, currency, count(*), sum(total) FROM invoices
    WHERE period_start >= :start AND period_start < :end AND status <> 'void'
    GROUP BY 1, 2 ORDER BY 1, 2
""")
BY_STATUS = text("""
    SELECT status, currency, count(*), sum(total) FROM invoices
    WHERE period_start >= :start AND period_start < :end
    GROUP BY 1, 2 ORDER BY 1, 2
""")
BY_METER = text("""
    SELECT coalesce(l.meter, CASE l.kind WHEN 'plan_fee' THEN '(plan fees)'
                                         ELSE '(credit shortfall)' END),
           i.currency, sum(l.amount)
    FROM invoice_lines AS l JOIN invoices AS i USING (invoice_id)
    WHERE i.period_start >= :start AND i.period_start < :end AND i.status <> 'void'
      AND (l.kind IN ('plan_fee', 'usage') OR (l.kind = 'credits' AND l.amount <> 0))
    GROUP BY 1, 2 ORDER BY 1, 2
""")
CREDITS = text("""
    SELECT coalesce(sum(credits_applied), 0), coalesce(sum(credits_shortfall), 0)
    FROM invoices
    WHERE period_start >= :start AND period_start < :end AND status <> 'void'
""")
BY_BILLER = text("""
    SELECT l.billed_by, i.currency, sum(l.amount)
    FROM invoice_lines AS l JOIN invoices AS i USING (invoice_id)
    WHERE i.period_start >= :start AND i.period_start < :end AND i.status <> 'void'
    GROUP BY 1, 2 ORDER BY 1, 2
""")
ACTIVE = text("""
    SELECT count(DISTINCT account_id) FROM usage_aggregates
    WHERE period_start >= :start AND period_start < :end
""")


def _rows(result: Any) -> list[list[Any]]:
    return [list(row) for row in result]


async def period_report(conn: AsyncConnection, period: BillingPeriod) -> dict[str, Any]:
    """Revenue by plan, meter and status, invoice counts, what the worker bills apart
    from what Stripe subscriptions bill themselves, the credits grants paid and those no
    grant covered (on invoices that are not void), active accounts."""
    params = {"start": period.start, "end": period.end}
    by_plan = _rows(await conn.execute(BY_PLAN, params))
    by_status = _rows(await conn.execute(BY_STATUS, params))
    by_meter = _rows(await conn.execute(BY_METER, params))
    active = (await conn.execute(ACTIVE, params)).scalar_one()
    applied, shortfall = (await conn.execute(CREDITS, params)).one()
    by_biller = _rows(await conn.execute(BY_BILLER, params))
    return {
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "by_plan": [
            {"plan": p, "currency": c, "invoices": n, "revenue": format_decimal(Decimal(t))}
            for p, c, n, t in by_plan
        ],
        "by_meter": [
            {"meter": m, "currency": c, "revenue": format_decimal(Decimal(t))}
            for m, c, t in by_meter
        ],
        "by_status": [
            {"status": s, "currency": c, "invoices": n, "amount": format_decimal(Decimal(t))}
            for s, c, n, t in by_status
        ],
        "billed_by": [
            {"billed_by": b, "currency": c, "amount": format_decimal(Decimal(t))}
            for b, c, t in by_biller
        ],
        "credits": {
            "applied": format_decimal(Decimal(applied)),
            "shortfall": format_decimal(Decimal(shortfall)),
        },
        "invoices": sum(n for _s, _c, n, _t in by_status),
        "active_accounts": int(active),
    }
