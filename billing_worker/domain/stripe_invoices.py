"""What a Stripe invoice says about ours: which of our invoices it bills, and the tax and
total Stripe computed for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METADATA_INVOICE_ID = "billing_invoice_id"


def billed_invoice_ids(invoice: Mapping[str, Any]) -> tuple[str, ...]:
    """Our invoice ids a Stripe invoice bills: its own ``metadata.billing_invoice_id`` (an
    invoice the sync made), else those its lines carry (the items the sync put on a
    subscription, which Stripe's renewal invoice took; a line of an invoice item carries
    the item's metadata). Only the lines in the event count: a renewal with more lines
    than Stripe includes (``has_more``) may leave ours out, which ``reconcile stripe``
    then reports."""
    own = _our_id(invoice.get("metadata"))
    if own is not None:
        return (own,)
    lines = invoice.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    found: list[str] = []
    for line in data if isinstance(data, list) else []:
        ours = _our_id(line.get("metadata")) if isinstance(line, dict) else None
        if ours is not None and ours not in found:
            found.append(ours)
    return tuple(found)


def invoice_tax_minor(invoice: Mapping[str, Any]) -> int | None:
    """The tax on a Stripe invoice in minor units: ``tax`` before API version 2025-03-31,
    then the sum of ``total_taxes``; None when the invoice states no tax at all."""
    tax = _integer(invoice.get("tax"))
    if tax is not None:
        return tax
    for key in ("total_taxes", "total_tax_amounts"):
        entries = invoice.get(key)
        if isinstance(entries, list) and (entries or key == "total_taxes"):
            amounts = [_integer(e.get("amount")) for e in entries if isinstance(e, dict)]
            if None not in amounts:
                return sum(a for a in amounts if a is not None)
    return None


def _our_id(metadata: object) -> str | None:
    value = metadata.get(METADATA_INVOICE_ID) if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
