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
BILLED_BY_WORKER = "worker"
"""The worker charges the line: the invoice sync pushes it to Stripe."""
BILLED_BY_SUBSCRIPTION = "stripe_subscription"
"""A Stripe subscription charges it (a plan fee on a licensed price): shown, not pushed."""
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
    """The plan in force over ``[start, end)`` within the period (timezone-aware), and who
    bills its fee."""

    plan: str
    start: datetime
    end: datetime
    billed_by: str = BILLED_BY_WORKER
    """``worker`` or ``stripe_subscription`` (a licensed Stripe price Stripe invoices)."""
    subscription: str | None = None
    """The Stripe subscription billing the fee, when one does."""

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
    billed_by: str = BILLED_BY_WORKER
    """Who charges the amount: the worker, or the Stripe subscription of a plan fee."""
    stripe_subscription_id: str | None = None


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

    @property
    def billed_by_subscription(self) -> Decimal:
        """The part of the total a Stripe subscription charges itself (plan fees)."""
        return billed_by_subscription(self.lines, self.total)

    @property
    def billed_by_worker(self) -> Decimal:
        """The part of the total the worker charges (what the invoice sync pushes)."""
        return self.total - self.billed_by_subscription


def billed_by_subscription(lines: tuple[InvoiceLine, ...], total: Decimal) -> Decimal:
    """Sum of the lines a Stripe subscription bills, in the total's precision."""
    return sum(
        (line.amount for line in lines if line.billed_by == BILLED_BY_SUBSCRIPTION),
        total - total,
    )


@dataclass(frozen=True, slots=True)
class PlanChangeEntry:
    """A ``plan_changed`` entry of the account ledger, as invoices read it."""

    effective_at: datetime
    plan: str
    previous_plan: str | None
    billed_by: str = BILLED_BY_WORKER
    subscription: str | None = None


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
    stripe_sync_target: str | None = None
    """``invoice`` (a Stripe invoice of its own) or ``subscription`` (pending items on
    ``stripe_subscription_id``); None until pushed."""
    stripe_subscription_id: str | None = None
    tax: Decimal | None = None
    """The tax Stripe computed on the invoice billing ours (Stripe Tax), once finalized."""
    stripe_total: Decimal | None = None
    """The total of that Stripe invoice (for a subscription's, its own fee included)."""
    number: str | None = None
    """The invoice number (``2026-000042``), given when it became ``open``; None for a draft."""


def check_quantity(quantity: Decimal, what: str) -> None:
    """``ValueError`` unless ``quantity`` is a finite, non-negative number."""
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(f"{what} must be a non-negative number, not {quantity}")
