"""What reconciling compares: our invoices and ledger rows, Stripe's objects, differences."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing_worker.domain.rating import minor_unit_places
from billing_worker.service.invoice_sync import to_minor_units
from billing_worker.service.reconcile_kinds import KINDS, REPAIRS


@dataclass(frozen=True, slots=True)
class OurLine:
    """One invoice line: ``amount`` in major units; ``billed_by`` worker or stripe_subscription."""

    line_no: int
    amount: Decimal
    billed_by: str = "worker"


@dataclass(frozen=True, slots=True)
class OurInvoice:
    """One of our invoices as reconciling needs it."""

    invoice_id: str
    account_id: str
    status: str
    currency: str
    period_start: datetime
    closed_at: datetime
    lines: tuple[OurLine, ...]
    target: str | None = None
    synced_at: datetime | None = None
    stripe_invoice_id: str | None = None
    stripe_subscription_id: str | None = None
    sync_error: str | None = None
    stripe_total: Decimal | None = None

    @property
    def period(self) -> str:
        """``YYYY-MM`` of the period's start, the scope a run is given."""
        return f"{self.period_start:%Y-%m}"

    @property
    def expected_items(self) -> dict[int, int]:
        """``line_no -> minor units`` of what Stripe should charge on our behalf: the
        worker-billed lines with a non-zero amount (the sync pushes exactly those)."""
        return {
            line.line_no: minor
            for line in self.lines
            if line.billed_by == "worker"
            and (minor := to_minor_units(line.amount, self.currency)) != 0
        }


@dataclass(frozen=True, slots=True)
class LedgerRefund:
    """A refund in our payment ledger: the charge it names, its payment intent, the
    (positive) amount in major units."""

    charge_id: str
    payment_intent: str | None
    amount: Decimal


@dataclass(frozen=True, slots=True)
class OurAccount:
    """An account's Stripe customers and the payment ledger rows reconciling reads."""

    account_id: str
    customers: tuple[str, ...] = ()
    payments: Mapping[str, Decimal] = field(default_factory=dict)
    """Stripe invoice id -> sum of our invoice payments recorded for it (major units)."""
    refunds: tuple[LedgerRefund, ...] = ()


@dataclass(frozen=True, slots=True)
class StripeItem:
    """A Stripe invoice item; ``invoice`` None while pending."""

    item_id: str
    customer: str
    invoice: str | None
    amount: int
    currency: str
    billing_invoice_id: str | None = None
    line_no: str | None = None
    subscription: str | None = None


@dataclass(frozen=True, slots=True)
class StripeRefund:
    """A Stripe refund of one of an invoice's payments."""

    refund_id: str
    amount: int
    status: str
    charge: str | None = None
    payment_intent: str | None = None


@dataclass(frozen=True, slots=True)
class StripeInvoice:
    """A Stripe invoice with what was paid and refunded on it (amounts in minor units)."""

    invoice_id: str
    customer: str
    status: str
    currency: str
    total: int
    amount_paid: int = 0
    billing_invoice_id: str | None = None
    payment_intents: tuple[str, ...] = ()
    charges: tuple[str, ...] = ()
    refunds: tuple[StripeRefund, ...] = ()


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    """A Stripe subscription: its status and when its current period ends."""

    subscription_id: str
    status: str
    current_period_end: datetime | None = None
    canceled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StripeView:
    """What Stripe holds for the customers read. An id missing from ``invoices`` or
    ``subscriptions`` was asked for and not found."""

    invoices: Mapping[str, StripeInvoice] = field(default_factory=dict)
    items: tuple[StripeItem, ...] = ()
    subscriptions: Mapping[str, StripeSubscription] = field(default_factory=dict)
    missing_customers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Difference:
    """One way Stripe and our side disagree, with its cause in words."""

    kind: str
    invoice_id: str
    account_id: str | None
    stripe_object_id: str | None
    cause: str
    period: str | None = None
    ours: str | None = None
    stripe: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown difference kind {self.kind!r}")

    @property
    def repair(self) -> str:
        """How an operator repairs this kind."""
        return REPAIRS[self.kind]

    def as_json(self) -> dict[str, str | None]:
        """The difference as a JSON object."""
        return {
            "kind": self.kind,
            "invoice_id": self.invoice_id,
            "account_id": self.account_id,
            "period": self.period,
            "stripe_object_id": self.stripe_object_id,
            "ours": self.ours,
            "stripe": self.stripe,
            "cause": self.cause,
            "repair": self.repair,
        }


def difference_of(
    invoice: OurInvoice, kind: str, obj: str | None, cause: str, **sides: str
) -> Difference:
    """A difference of ``invoice``, about Stripe object ``obj``."""
    return Difference(
        kind, invoice.invoice_id, invoice.account_id, obj, cause, invoice.period, **sides
    )


def minor_sum(amounts: Iterable[Decimal], currency: str) -> int:
    """Major-unit amounts added up, in minor units."""
    return to_minor_units(sum(amounts, Decimal(0)), currency)


def money(minor: int, currency: str) -> str:
    """``150, "usd"`` -> ``1.50 usd``."""
    places = minor_unit_places(currency)
    return f"{Decimal(minor).scaleb(-places):.{places}f} {currency}"
