"""Relayed Stripe events as the domain reads them: the envelope, subscription terms,
which plan a subscription puts an account on, and Stripe's minor-unit amounts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.rating import minor_unit_places

LIVE_STATUSES = frozenset({"trialing", "active", "past_due", "unpaid"})
"""Statuses under which the subscription's plan applies (past due and unpaid keep it
until Stripe ends the subscription; the status says the account owes money)."""

ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
"""Statuses after which the subscription takes no more changes."""

OFF_STATUSES = ENDED_STATUSES | {"paused"}
"""Statuses that put the account on the default plan (a paused subscription, a trial that
ended without a payment method, pays nothing until it resumes)."""


class InvalidStripeEvent(PermanentError):
    """A verified payload that is not a Stripe event we can read."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="invalid_stripe_event")


class UnresolvedAccount(PermanentError):
    """No account can be named for the event: dead-lettered, not guessed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_account")


class AccountMismatch(PermanentError):
    """The event implies two accounts (its names, its customer's, its object's): it is
    dead-lettered rather than let it move one account's customer or money to another."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="account_mismatch")


class UnknownPrice(PermanentError):
    """A Stripe price id the price book does not map (fix the book, then replay)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_price")


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """A verified Stripe event: its id, type, creation time and ``data.object``."""

    event_id: str
    event_type: str
    created: datetime
    obj: Mapping[str, Any]
    livemode: bool = False

    @property
    def object_id(self) -> str | None:
        """The id of the object the event is about."""
        value = self.obj.get("id")
        return value if isinstance(value, str) else None

    @property
    def object_type(self) -> str:
        """Stripe's ``object`` name of it (``subscription``, ``invoice``...)."""
        value = self.obj.get("object")
        return value if isinstance(value, str) else "unknown"


def parse_stripe_event(payload: object) -> StripeEvent:
    """The event in a decoded webhook body, or ``InvalidStripeEvent`` saying what is missing."""
    if not isinstance(payload, dict):
        raise InvalidStripeEvent("the body is not a JSON object")
    event_id, event_type, created = payload.get("id"), payload.get("type"), payload.get("created")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidStripeEvent("the event has no string `id`")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidStripeEvent(f"event {event_id} has no string `type`")
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        raise InvalidStripeEvent(f"event {event_id} has no unix-time `created`")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise InvalidStripeEvent(f"event {event_id} has no `data.object`")
    return StripeEvent(
        event_id=event_id,
        event_type=event_type,
        created=datetime.fromtimestamp(created, UTC),
        obj=obj,
        livemode=bool(payload.get("livemode", False)),
    )


def text(obj: Mapping[str, Any], key: str) -> str | None:
    """A non-empty string field, or None; an expanded object gives its ``id``."""
    value = obj.get(key)
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def metadata_account(obj: Mapping[str, Any]) -> str | None:
    """``metadata.account_id``, the platform's name for the account."""
    metadata = obj.get("metadata")
    return text(metadata, "account_id") if isinstance(metadata, dict) else None


def invoice_subscription_account(invoice: Mapping[str, Any]) -> str | None:
    """``metadata.account_id`` of the subscription an invoice bills, as Stripe copies it
    onto the invoice (``subscription_details`` before API version 2025-03-31, then
    ``parent.subscription_details``)."""
    details = invoice.get("subscription_details")
    parent = invoice.get("parent")
    if not isinstance(details, dict) and isinstance(parent, dict):
        details = parent.get("subscription_details")
    return metadata_account(details) if isinstance(details, dict) else None


def invoice_payment_intent(invoice: Mapping[str, Any]) -> str | None:
    """The payment intent that paid an invoice: top-level ``payment_intent`` before API
    version 2025-03-31, then on the invoice's ``payments`` list (``payments.data[]
    .payment.payment_intent``: the paid one, else the default one, else the first)."""
    found = text(invoice, "payment_intent")
    if found is not None:
        return found
    payments = invoice.get("payments")
    data = payments.get("data") if isinstance(payments, dict) else None
    if not isinstance(data, list):
        return None
    ranked = sorted(
        (
            (entry.get("status") != "paid", entry.get("is_default") is not True, index, intent)
            for index, entry in enumerate(data)
            if isinstance(entry, dict)
            and isinstance(entry.get("payment"), dict)
            and (intent := text(entry["payment"], "payment_intent")) is not None
        ),
    )
    return ranked[0][3] if ranked else None


@dataclass(frozen=True, slots=True)
class IntentPayment:
    """A payment the ledger holds for a Stripe payment intent: whose it is, which object
    it paid (a Checkout session, an invoice), and its ledger details."""

    account: str
    object_id: str
    details: Mapping[str, Any]


SHARE_PLACES = Decimal("0.000001")
"""Credits a partial refund takes back are rounded to this (half even); a full refund
takes back exactly the pack."""


def refunded_share(whole: Decimal, amount: Decimal, refunded: Decimal) -> Decimal:
    """The part of ``whole`` that ``refunded`` of a payment of ``amount`` stands for (never
    more than ``whole``; nothing of a payment of nothing)."""
    if amount <= 0 or refunded <= 0:
        return Decimal(0)
    if refunded >= amount:
        return whole
    with localcontext() as ctx:
        ctx.prec = 60
        share = (whole * refunded / amount).quantize(SHARE_PLACES, rounding=ROUND_HALF_EVEN)
    return share.quantize(Decimal(1)) if share == share.to_integral_value() else share


def metadata_text(obj: Mapping[str, Any], key: str) -> str | None:
    """A string from ``metadata``."""
    metadata = obj.get("metadata")
    return text(metadata, key) if isinstance(metadata, dict) else None


def timestamp(obj: Mapping[str, Any], key: str) -> datetime | None:
    """A unix-time field as an aware UTC datetime."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True, slots=True)
class SubscriptionTerms:
    """What a subscription object says about an account's plan."""

    subscription_id: str
    customer: str | None
    price_id: str | None
    status: str
    period: BillingPeriod | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    billing_cycle_anchor: datetime | None = None
    started_at: datetime | None = None
    """``start_date``: when the subscription began (backdated ones earlier than created)."""
    ended_at: datetime | None = None
    """``ended_at``, else, once it has ended, ``canceled_at``; None while it runs (a
    subscription set to cancel at its period end has ``canceled_at`` but has not ended)."""


def subscription_terms(obj: Mapping[str, Any], book: PriceBook) -> SubscriptionTerms:
    """Read a ``subscription`` object: its plan item (see ``plan_item``), and the current
    period, top-level on older API versions, else the plan item's own."""
    subscription_id = text(obj, "id")
    status = text(obj, "status")
    if subscription_id is None or status is None:
        raise InvalidStripeEvent("the subscription has no `id` or `status`")
    item = plan_item(obj, book)
    price_id = item_price(item)
    if price_id is None:
        plan_obj = obj.get("plan")  # the pre-2018 shape
        price_id = text(plan_obj, "id") if isinstance(plan_obj, dict) else None
    start = timestamp(obj, "current_period_start") or timestamp(item, "current_period_start")
    end = timestamp(obj, "current_period_end") or timestamp(item, "current_period_end")
    period = (
        BillingPeriod(start, end) if start is not None and end is not None and start < end else None
    )
    ended_at = timestamp(obj, "ended_at")
    if ended_at is None and status in ENDED_STATUSES:
        ended_at = timestamp(obj, "canceled_at")
    return SubscriptionTerms(
        subscription_id=subscription_id,
        customer=text(obj, "customer"),
        price_id=price_id,
        status=status,
        period=period,
        cancel_at_period_end=bool(obj.get("cancel_at_period_end", False)),
        trial_end=timestamp(obj, "trial_end"),
        billing_cycle_anchor=timestamp(obj, "billing_cycle_anchor"),
        started_at=timestamp(obj, "start_date"),
        ended_at=ended_at,
    )


def subscription_items(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The subscription's items (``items.data``), in Stripe's order."""
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def item_price(item: Mapping[str, Any]) -> str | None:
    """The price id of a subscription item (its ``price``, else its legacy ``plan``)."""
    return text(item, "price") or text(item, "plan")


def plan_item(obj: Mapping[str, Any], book: PriceBook) -> Mapping[str, Any]:
    """The item that sets the account's plan: the one whose price the price book maps to
    a plan. A subscription also carries items the book does not map to a plan (a metered
    add-on, a seat price) in any order; those are billed by Stripe and leave the plan alone.

    When several items map to plans (a plan change Stripe made as a second item rather
    than a price swap), the one of the plan with the highest fee wins, then the plan name,
    then item order: the customer is paying for every one of them, so the account gets the
    best plan it pays for, and the choice does not depend on the order Stripe lists them.
    With no item mapped, the first item is the plan item (its price is refused by
    ``plan_for`` while the subscription is live, as ``unknown_price``).
    """
    items = subscription_items(obj)
    mapped = []
    for index, item in enumerate(items):
        stripe_price = book.stripe_prices.get(item_price(item) or "")
        if stripe_price is not None and stripe_price.plan is not None:
            plan = book.plan(stripe_price.plan)
            mapped.append((-plan.price, stripe_price.plan, index, item))
    if mapped:
        return min(mapped, key=lambda m: m[:3])[3]
    return items[0] if items else {}


def plan_for(book: PriceBook, terms: SubscriptionTerms, *, current_plan: str | None) -> str:
    """The plan the subscription puts the account on.

    Live statuses take the plan of the subscription's price; ended and paused ones return
    the account to the default plan; ``incomplete`` keeps what it has.
    """
    if terms.status in OFF_STATUSES:
        return book.default_plan
    if terms.status not in LIVE_STATUSES:
        return current_plan or book.default_plan
    if terms.price_id is None:
        raise InvalidStripeEvent(f"subscription {terms.subscription_id} has no price")
    mapped = book.stripe_prices.get(terms.price_id)
    if mapped is None or mapped.plan is None:
        raise UnknownPrice(
            f"Stripe price {terms.price_id!r} of subscription {terms.subscription_id} maps to "
            f"no plan in price book {book.version} ([stripe_prices])"
        )
    return mapped.plan


def major_units(amount: object, currency: object) -> tuple[Decimal, str]:
    """A Stripe amount (integer minor units) in the currency's major unit, and the currency."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidStripeEvent(f"amount {amount!r} is not a non-negative integer")
    if not isinstance(currency, str) or len(currency) != 3:
        raise InvalidStripeEvent(f"currency {currency!r} is not an ISO 4217 code")
    return Decimal(amount).scaleb(-minor_unit_places(currency)), currency.lower()
