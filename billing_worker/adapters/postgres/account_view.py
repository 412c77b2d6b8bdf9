"""Read-only queries behind ``billing-worker account show``, and how its entries read."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.periods import BillingPeriod
from schemas.events import format_decimal as plain

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
            event_source || '/' || event_id AS ref, pricebook_version, NULL::jsonb AS details
     FROM usage_ledger WHERE account_id = :account ORDER BY entry_id DESC LIMIT :limit)
    UNION ALL
    (SELECT 'credits', entry_id, recorded_at, effective_at,
            kind || ' ' || credits::text || coalesce(' on ' || meter, ''),
            concat_ws(' ', event_source || '/' || event_id, 'grant ' || grant_id::text),
            pricebook_version, NULL::jsonb
     FROM credit_ledger WHERE account_id = :account ORDER BY entry_id DESC LIMIT :limit)
    UNION ALL
    (SELECT 'account', entry_id, recorded_at, effective_at, kind, '', pricebook_version,
            details
     FROM account_ledger WHERE account_id = :account ORDER BY entry_id DESC LIMIT :limit)
    ORDER BY recorded_at DESC, entry_id DESC
    LIMIT :limit
""")

# payment_ledger_account (account_id, entry_id), newest first
PAYMENTS = text("""
    SELECT entry_id, kind, amount, currency, stripe_object_id, stripe_event_id, details,
           effective_at, recorded_at
    FROM payment_ledger WHERE account_id = :account AND entry_id < :before
    ORDER BY entry_id DESC
    LIMIT :limit
""")

REF_KEYS = ("change_id", "event_id")
"""Detail keys that say what caused an account-ledger entry: its ``ref``."""


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
    """One recent entry of any of the account's ledgers (``details``: an account-ledger
    entry's own, whole)."""

    ledger: str
    entry_id: int
    recorded_at: datetime
    effective_at: datetime
    what: str
    ref: str
    pricebook_version: str | None
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A payment-ledger entry: a payment (+) or refund (-) Stripe reported."""

    entry_id: int
    kind: str
    amount: Decimal
    currency: str
    stripe_object_id: str
    stripe_event_id: str
    details: dict[str, Any]
    effective_at: datetime
    recorded_at: datetime


def details_text(details: Mapping[str, Any], *, leave_out: Collection[str] = ()) -> str:
    """An entry's details as ``key=value`` words, in their stored order (empty values and
    ``leave_out`` keys left out; nested values as compact JSON)."""
    words = []
    for key, value in details.items():
        if key in leave_out or value is None or value in ("", [], {}):
            continue
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        words.append(f"{key}={shown}")
    return " ".join(words)


def describe_entry(kind: str, details: Mapping[str, Any]) -> tuple[str, str]:
    """(what, ref) of an account-ledger entry: its kind and everything it holds, the
    plan move of a plan change first; ``ref`` is what caused it (a change or event id)."""
    ref = next((str(details[key]) for key in REF_KEYS if details.get(key)), "")
    shown: set[str] = set(REF_KEYS)
    words = [kind]
    if "plan" in details:
        words.append(f"{details.get('previous_plan') or '(new)'} -> {details['plan']}")
        shown |= {"plan", "previous_plan"}
    rest = details_text(details, leave_out=shown)
    return " ".join([*words, rest] if rest else words), ref


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
    entries = []
    for ledger, entry_id, recorded, effective, what, ref, version, details in rows:
        # an account entry comes as its kind and details, described here
        said, cause = describe_entry(what, details) if details is not None else (what, ref)
        entries.append(
            LedgerRow(ledger, entry_id, recorded, effective, said, cause, version, details)
        )
    return entries


async def payment_entries(
    conn: AsyncConnection, account: str, *, limit: int, before: int | None = None
) -> list[PaymentRow]:
    """The account's payment-ledger entries, newest first, older than entry ``before``."""
    params = {"account": account, "limit": limit, "before": before or 2**62}
    return [PaymentRow(*row) for row in await conn.execute(PAYMENTS, params)]


def payment_document(row: PaymentRow) -> dict[str, Any]:
    """A payment-ledger entry as JSON-ready data."""
    return {
        "entry_id": row.entry_id,
        "kind": row.kind,
        "amount": plain(row.amount),
        "currency": row.currency,
        "stripe_object_id": row.stripe_object_id,
        "stripe_event_id": row.stripe_event_id,
        "effective_at": row.effective_at.isoformat(),
        "recorded_at": row.recorded_at.isoformat(),
        "details": row.details,
    }
