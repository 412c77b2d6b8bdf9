"""Reading our invoice ids and Stripe's tax off Stripe invoices of both API shapes."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from billing_worker.domain.stripe_invoices import billed_invoice_ids, invoice_tax_minor
from tests.stripe_fixtures import fixture


def stripe_invoice(version: Literal["old", "new"]) -> dict[str, Any]:
    """Stripe's own example invoice of API version ``old`` (2024-06-20) or ``new``."""
    return fixture(version, "invoice")


@pytest.mark.parametrize("version", ["old", "new"])
def test_ids_come_from_the_invoice_or_else_from_its_lines(version: Literal["old", "new"]) -> None:
    """The invoice's own metadata wins; a renewal names ours through its item lines,
    each id once, in order; an invoice of nothing of ours names none."""
    invoice = stripe_invoice(version)
    assert billed_invoice_ids(invoice) == ()
    line = invoice["lines"]["data"][0]
    invoice["lines"]["data"] = [
        {**line, "metadata": {"billing_invoice_id": "inv-202612-a", "line_no": "2"}},
        {**line, "metadata": {"billing_invoice_id": "inv-202612-a", "line_no": "3"}},
        {**line, "metadata": {}},
    ]
    assert billed_invoice_ids(invoice) == ("inv-202612-a",)
    invoice["metadata"] = {"billing_invoice_id": "inv-202611-a"}
    assert billed_invoice_ids(invoice) == ("inv-202611-a",)


def test_tax_of_the_old_shape_is_its_tax_field() -> None:
    """2024-06-20: ``tax`` is the amount, None when Stripe computed none."""
    invoice = stripe_invoice("old")
    assert invoice_tax_minor(invoice) is None
    invoice["tax"] = 183
    assert invoice_tax_minor(invoice) == 183


def test_tax_of_the_new_shape_sums_total_taxes() -> None:
    """2026-07-29: ``tax`` is gone; the tax is the sum of ``total_taxes`` (0 for an
    empty list, None when the field is absent)."""
    invoice = stripe_invoice("new")
    assert invoice_tax_minor(invoice) is None
    invoice["total_taxes"] = [{"amount": 120, "tax_behavior": "exclusive"}, {"amount": 63}]
    assert invoice_tax_minor(invoice) == 183
    invoice["total_taxes"] = []
    assert invoice_tax_minor(invoice) == 0
