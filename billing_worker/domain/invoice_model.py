"""What an invoice is made of: plan spans, meter usage, lines, drafts and stored invoices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import ZERO, DimensionValue
from billing_worker.domain.rating import TierCharge

PLAN_FEE = "plan_fee"
USAGE = "usage"
CREDITS = "credits"
ADJUSTMENT = "adjustment"
LINE_KINDS = (PLAN_FEE, USAGE, CREDITS, ADJUSTMENT)
MONTHS_PER_YEAR = 12
"""An annual plan's fee is spread over this many monthly periods."""


@dataclass(frozen=True, slots=True)
class CreditUse:
    """What the credits of a period did: paid by grants, and short of every grant."""

    applied: Decimal = ZERO
    shortfall: Decimal = ZERO


NO_CREDITS = CreditUse()
"""A period without credit-priced usage."""


@dataclass(frozen=True, slots=True)
class PlanSpan:
    """The plan in force over ``[start, end)`` within the period (timezone-aware)."""

    plan: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"plan span bounds must be timezone-aware ({self.plan})")
        if not self.start < self.end:
            raise ValueError(
                f"plan span must end after it starts: {self.plan} {self.start} .. {self.end}"
            )


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's usage in the period, from the ledger."""

    meter: str
    quantity: Decimal
    """The period total (per the meter's aggregation)."""
    entries: int
    """Ledger entries behind it."""
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    by_dimension: Mapping[DimensionValue, Decimal] = field(default_factory=dict)
    """For meters priced per dimension: the total per dimension value, each kind of value
    apart (see :class:`~billing_worker.domain.pricebook.DimensionValue`)."""


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line of an invoice, as the customer reads it."""

    kind: str
    """``plan_fee`` | ``usage`` | ``credits`` | ``adjustment``."""
    description: str
    """In words, e.g. ``PLUS plan, 2026-11-01 to 2026-11-13 (12/30 days)`` or
    ``tokens: 1,234,567 used, 1,000,000 included, 234,567 billable``."""
    amount: Decimal
    """Rounded once, to the currency's minor unit."""
    meter: str | None = None
    dimension_value: DimensionValue | None = None
    quantity: Decimal = ZERO
    """Usage lines: the usage; plan fees: the fraction of the period; credits: the
    credits; adjustments: the corrected period total."""
    included: Decimal = ZERO
    free_quantity: Decimal = ZERO
    billable: Decimal = ZERO
    """The units the price applies to (0 for a meter without a price)."""
    price: str = ""
    """The price applied, in words: ``0.50 per website``, ``graduated per token: first
    1,000 at 0.01, then 0.005``."""
    tiers: tuple[TierCharge, ...] = ()
    entries: int = 0
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    refers_to: BillingPeriod | None = None
    """Adjustments: the closed period they correct."""
    unrounded: Decimal = ZERO
    """The exact amount before the one rounding."""


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    """An account's period as invoice lines, not yet issued."""

    account: str
    period: BillingPeriod
    currency: str
    plan: str
    """The plan in force at the end of the period."""
    pricebook_version: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    """Sum of the line amounts."""
    credits_applied: Decimal
    """Credits grants paid for usage in the period (informational: prepaid, not money)."""
    credits_shortfall: Decimal
    """Credits the period's usage cost beyond every grant (charged only at the price
    book's ``credits.shortfall_price``)."""
    total: Decimal
    """``== subtotal`` (no taxes or discounts yet). Non-negative unless an adjustment is
    negative; a negative total is owed to the account (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class LateUsage:
    """Usage of an invoiced period recorded after its invoice (or its last adjustment)."""

    period: BillingPeriod
    meter: str
    quantity: Decimal
    invoiced_quantity: Decimal
    included: Decimal
    invoiced_amount: Decimal
    entries: int
    first_entry_id: int
    last_entry_id: int
    dimension_value: DimensionValue | None = None
    free_quantity: Decimal | None = None


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """An invoice row."""

    invoice_id: str
    account: str
    period: BillingPeriod
    status: str
    plan: str
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    credits_shortfall: Decimal
    total: Decimal
    pricebook_version: str
    last_entry_id: int | None
    closed_at: datetime
    stripe_invoice_id: str | None
    stripe_sync_error: str | None
    stripe_sync_attempts: int


def check_quantity(quantity: Decimal, what: str) -> None:
    """``ValueError`` unless ``quantity`` is a finite, non-negative number."""
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(f"{what} must be a non-negative number, not {quantity}")
