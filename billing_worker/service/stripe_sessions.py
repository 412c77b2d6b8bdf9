"""What a Stripe Checkout Session for an account must say, so that every event Stripe later
sends for it names the account the way the Stripe consumer reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.pricebook import PriceBook


class CheckoutRefused(PermanentError):
    """The request can't become a Checkout Session (an unmapped price, a plan without a
    Stripe price, a second subscription): the caller's to fix."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail, reason=reason)


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    """Sell ``price_id`` (a plan's or a credit pack's) to ``account``."""

    account: str
    price_id: str
    success_url: str
    cancel_url: str
    quantity: int = 1
    customer: str | None = None
    """The account's Stripe customer, when it has one (else Checkout makes one)."""
    live_subscription: str | None = None
    """The account's live subscription, if any: a plan is then changed there, not bought."""


def stripe_price_of(book: PriceBook, *, price_id: str | None, plan: str | None) -> str:
    """The Stripe price a request names, directly or by its plan."""
    if price_id is not None:
        if price_id not in book.stripe_prices:
            mapped = ", ".join(sorted(book.stripe_prices)) or "none"
            raise CheckoutRefused(
                f"price {price_id!r} is not in price book {book.version}'s [stripe_prices] "
                f"(mapped: {mapped})",
                reason="unknown_price",
            )
        return price_id
    if plan is None or plan not in book.plans:
        raise CheckoutRefused(
            f"no plan {plan!r} in price book {book.version}", reason="unknown_plan"
        )
    prices = sorted(p for p, mapped in book.stripe_prices.items() if mapped.plan == plan)
    if not prices:
        raise CheckoutRefused(
            f"plan {plan} has no Stripe price: map one to it in [stripe_prices]",
            reason="plan_without_price",
        )
    return prices[0]


def checkout_params(book: PriceBook, request: CheckoutRequest) -> dict[str, Any]:
    """The ``POST /v1/checkout/sessions`` parameters for ``request``.

    The account is named everywhere an event may come from: ``client_reference_id`` and
    ``metadata.account_id`` on the session (``checkout.session.*``), and
    ``subscription_data.metadata.account_id`` (subscription and invoice events, which may
    arrive before the session's) or ``payment_intent_data.metadata`` (payment-intent and
    charge events). A credit pack carries ``metadata.price_id`` and ``metadata.quantity``,
    which the consumer grants by.
    """
    mapped = book.stripe_prices.get(request.price_id)
    if mapped is None:
        raise CheckoutRefused(f"price {request.price_id!r} is not mapped", reason="unknown_price")
    if request.quantity < 1:
        raise CheckoutRefused("quantity must be at least 1", reason="invalid_quantity")
    names = {"account_id": request.account}
    params: dict[str, Any] = {
        "success_url": request.success_url,
        "cancel_url": request.cancel_url,
        "client_reference_id": request.account,
        "line_items": [{"price": request.price_id, "quantity": request.quantity}],
    }
    if request.customer is not None:
        params["customer"] = request.customer
    if mapped.plan is not None:
        if request.quantity != 1:
            raise CheckoutRefused("a plan is bought one at a time", reason="invalid_quantity")
        if request.live_subscription is not None:
            raise CheckoutRefused(
                f"account {request.account} already has live subscription "
                f"{request.live_subscription}: change its plan in the customer portal "
                "(POST .../portal-sessions) instead of starting a second one",
                reason="already_subscribed",
            )
        params |= {
            "mode": "subscription",
            "metadata": names,
            "subscription_data": {"metadata": names},
        }
        return params
    pack = {**names, "price_id": request.price_id, "quantity": str(request.quantity)}
    params |= {"mode": "payment", "metadata": pack, "payment_intent_data": {"metadata": pack}}
    if request.customer is None:
        params["customer_creation"] = "always"  # later refunds and intents name a customer
    return params
