"""An invoice as one document: its figures, its lines and, to explain them, the ledger
entries behind each line. The one implementation of "show an invoice": ``invoice show``
prints it, and every other reader of an invoice takes the same document."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.adapters.postgres.closing_reads import stored_dimension
from billing_worker.adapters.postgres.invoice_store import PostgresInvoices
from billing_worker.domain.invoice_model import BILLED_BY_SUBSCRIPTION
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import PriceBook
from schemas.events import format_decimal

EXPLAIN_ENTRIES = 20
"""Ledger entries listed per line when explaining (all are counted)."""


async def invoice_document(
    conn: AsyncConnection,
    book: PriceBook,
    invoice_id: str,
    *,
    explain: bool,
    entries: int = EXPLAIN_ENTRIES,
) -> dict[str, Any] | None:
    """The invoice as JSON-ready data (decimals in plain notation), None if there is none.

    With ``explain`` each usage and adjustment line lists the ledger entries behind it (the
    first ``entries``; ``entries_behind`` counts them all): its meter's, and for a line of
    a per-dimension price only those carrying the line's value, the field being the one
    ``book`` prices the meter by.
    """
    store = PostgresInvoices(conn)
    invoice = await store.get(invoice_id)
    if invoice is None:
        return None
    lines = []
    by_subscription = invoice.total - invoice.total
    for row in await store.lines(invoice_id):
        if row["billed_by"] == BILLED_BY_SUBSCRIPTION:
            by_subscription += row["amount"]
        value = stored_dimension(row.pop("dimension_value"), row.pop("dimension_kind"))
        row["dimension_value"] = value.text if value else None
        row["dimension_kind"] = value.kind.value if value else None
        row["ledger_entries"] = []
        row["entries_behind"] = row["entries"]
        if explain and row["meter"] and row["first_entry_id"] is not None:
            period = invoice.period
            if row["refers_to_start"] is not None:
                period = BillingPeriod(row["refers_to_start"], row["refers_to_end"])
            price = book.prices.get(row["meter"])
            field = price.dimension if price is not None else None
            row["entries_behind"], row["ledger_entries"] = await store.line_entries(
                invoice.account,
                period,
                row["meter"],
                first=row["first_entry_id"],
                last=row["last_entry_id"],
                limit=entries,
                dimension=(field, value) if field is not None and value is not None else None,
            )
        lines.append(_plain(row))
    document: dict[str, Any] = _plain(
        {
            "invoice_id": invoice.invoice_id,
            "number": invoice.number,
            "account": invoice.account,
            "period": {"start": invoice.period.start, "end": invoice.period.end},
            "status": invoice.status,
            "plan": invoice.plan,
            "currency": invoice.currency,
            "subtotal": invoice.subtotal,
            "credits_applied": invoice.credits_applied,
            "credits_shortfall": invoice.credits_shortfall,
            "total": invoice.total,
            "billed_by_worker": invoice.total - by_subscription,
            "billed_by_subscription": by_subscription,
            "pricebook_version": invoice.pricebook_version,
            "closed_at": invoice.closed_at,
            "stripe_invoice_id": invoice.stripe_invoice_id,
            "stripe_sync_error": invoice.stripe_sync_error,
            "stripe_sync_target": invoice.stripe_sync_target,
            "stripe_subscription_id": invoice.stripe_subscription_id,
            "tax": invoice.tax,
            "stripe_total": invoice.stripe_total,
            "lines": lines,
        }
    )
    return document


def _plain(value: Any) -> Any:
    """JSON-ready: decimals as plain strings, times in ISO 8601, containers walked."""
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
