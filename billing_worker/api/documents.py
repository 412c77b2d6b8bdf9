"""Response documents the API builds from domain objects (the stored invoice, the account
and the report are the CLI's own documents)."""

from __future__ import annotations

from typing import Any

from billing_worker.domain.invoice_model import InvoiceDraft
from schemas.events import format_decimal


def draft_document(draft: InvoiceDraft) -> dict[str, Any]:
    """An invoice that is not written (upcoming, estimate), in the shape of a stored one:
    lines, subtotal, credits applied and short, total, currency."""
    return {
        "account": draft.account,
        "period": {"start": draft.period.start.isoformat(), "end": draft.period.end.isoformat()},
        "plan": draft.plan,
        "currency": draft.currency,
        "pricebook_version": draft.pricebook_version,
        "lines": [
            {
                "line_no": n,
                "kind": line.kind,
                "description": line.description,
                "meter": line.meter,
                "dimension_value": line.dimension_value.text if line.dimension_value else None,
                "dimension_kind": (
                    line.dimension_value.kind.value if line.dimension_value else None
                ),
                "quantity": format_decimal(line.quantity),
                "included": format_decimal(line.included),
                "free_quantity": format_decimal(line.free_quantity),
                "billable": format_decimal(line.billable),
                "price": line.price,
                "amount": format_decimal(line.amount),
                "refers_to_start": line.refers_to.start.isoformat() if line.refers_to else None,
                "billed_by": line.billed_by,
            }
            for n, line in enumerate(draft.lines, start=1)
        ],
        "subtotal": format_decimal(draft.subtotal),
        "credits_applied": format_decimal(draft.credits_applied),
        "credits_shortfall": format_decimal(draft.credits_shortfall),
        "total": format_decimal(draft.total),
        "billed_by_worker": format_decimal(draft.billed_by_worker),
        "billed_by_subscription": format_decimal(draft.billed_by_subscription),
    }
