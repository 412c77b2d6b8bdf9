"""The commercial terms of a price book besides meters and plans: where credits come from,
credit packs, what Stripe prices buy, and the refund and Stripe billing policies."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal


class CreditSource(enum.StrEnum):
    """Where a credit grant came from."""

    PLAN = "plan"
    PURCHASE = "purchase"
    PROMOTIONAL = "promotional"


DEFAULT_GRANT_PRIORITY = {
    CreditSource.PROMOTIONAL: 5,
    CreditSource.PLAN: 10,
    CreditSource.PURCHASE: 20,
}
"""Lower burns first: promotional credits, then the plan's, purchased ones last."""


@dataclass(frozen=True, slots=True)
class CreditProduct:
    """A purchasable pack of credits."""

    name: str
    credits: Decimal
    price: Decimal
    currency: str
    priority: int = DEFAULT_GRANT_PRIORITY[CreditSource.PURCHASE]


@dataclass(frozen=True, slots=True)
class StripePrice:
    """What a Stripe price id buys: a plan or a credit pack (exactly one is set)."""

    price_id: str
    plan: str | None = None
    credit_product: str | None = None


class RefundPolicy(enum.StrEnum):
    """What a refund of a credit pack does to its credits (``[credits] on_refund``)."""

    CLAW_BACK = "claw_back"
    """Take back what is still unspent of the refunded share, as credit-ledger entries."""
    KEEP = "keep"
    """Leave the credits spendable: the refund is money only."""


class UsageBilling(enum.StrEnum):
    """Where the usage of an account on a Stripe subscription is charged
    (``[stripe] usage_billing``)."""

    SUBSCRIPTION = "subscription"
    """As pending invoice items on the subscription: they land on its next invoice."""
    SEPARATE_INVOICE = "separate_invoice"
    """On a Stripe invoice of its own, as for an account without a subscription."""
