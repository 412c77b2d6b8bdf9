"""An account as one document: plan, period usage against limits, credits, recent entries
and payments.

The one implementation of "show an account": ``billing-worker account show`` prints it, and
every other reader of an account's state takes the same document.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.adapters.postgres.account_store import PostgresAccounts
from billing_worker.adapters.postgres.account_view import (
    grants,
    payment_document,
    payment_entries,
    period_totals,
    recent_entries,
)
from billing_worker.domain.pricebook import PriceBook
from schemas.events import format_decimal as plain


async def account_summary(
    conn: AsyncConnection, book: PriceBook, account: str, *, now: datetime, entries: int
) -> dict[str, Any] | None:
    """The account's state at ``now`` as JSON-ready data (None: no such account)."""
    accounts = PostgresAccounts(conn)
    stored = await accounts.get(account)
    if stored is None:
        return None
    period = (await accounts.period_calendar(account)).period_of(now)
    plan = book.plan(stored.plan)
    usage = {t.meter: t for t in await period_totals(conn, account, period)}
    meters = []
    for name in sorted(set(usage) | set(plan.meters)):
        total = usage.get(name)
        terms = plan.limit_of(name)
        used = total.quantity if total else Decimal(0)
        limit = terms.limit if terms else None
        meters.append(
            {
                "meter": name,
                "used": plain(used),
                "events": total.events if total else 0,
                "included": plain(terms.included) if terms else "0",
                "limit": plain(limit) if limit is not None else None,
                "used_percent": f"{used * 100 / limit:.1f}" if limit else None,
                "enforcement": terms.enforcement.value if terms and limit is not None else None,
            }
        )
    grant_rows = await grants(conn, account)
    live = [
        g for g in grant_rows if g.remaining > 0 and (g.expires_at is None or g.expires_at > now)
    ]
    return {
        "account": account,
        "plan": stored.plan,
        "status": stored.status,
        "created_at": stored.created_at.isoformat(),
        "plan_changed_at": stored.plan_changed_at.isoformat() if stored.plan_changed_at else None,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "pricebook_version": book.version,
        "meters": meters,
        "credit_balance": plain(sum((g.remaining for g in live), Decimal(0))),
        "grants": [
            {
                "grant_id": g.grant_id,
                "source": g.source,
                "amount": plain(g.amount),
                "remaining": plain(g.remaining),
                "priority": g.priority,
                "valid_from": g.valid_from.isoformat(),
                "expires_at": g.expires_at.isoformat() if g.expires_at else None,
                "note": g.note,
            }
            for g in grant_rows
        ],
        "recent_entries": [
            {
                "ledger": e.ledger,
                "entry_id": e.entry_id,
                "recorded_at": e.recorded_at.isoformat(),
                "effective_at": e.effective_at.isoformat(),
                "what": e.what,
                "ref": e.ref,
                "pricebook_version": e.pricebook_version,
                "details": e.details,
            }
            for e in await recent_entries(conn, account, entries)
        ],
        "payments": [
            payment_document(row) for row in await payment_entries(conn, account, limit=entries)
        ],
    }
