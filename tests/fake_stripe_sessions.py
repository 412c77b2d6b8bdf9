"""Checkout and customer-portal sessions of the fake Stripe API: what ``POST
/v1/checkout/sessions`` and ``POST /v1/billing_portal/sessions`` answer, shaped like
Stripe's objects, refusing what Stripe refuses (an unknown price or customer, a missing
URL, a mode without its line item)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

_ids = itertools.count(1)

Answer = tuple[int, dict[str, Any], bool]


def refusal(code: str, message: str, param: str) -> Answer:
    """Stripe's 400 ``invalid_request_error``; nothing was created."""
    error = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
    return 400, {"error": error}, False


def create_checkout_session(
    params: Mapping[str, Any], *, prices: set[str], customers: set[str], created: int
) -> Answer:
    """A Checkout Session in ``open`` status echoing what a real one keeps of the request."""
    for url in ("success_url", "cancel_url"):
        if not params.get(url):
            return refusal("parameter_missing", f"Missing required param: {url}.", url)
    mode = params.get("mode")
    if mode not in ("payment", "subscription"):
        return refusal("parameter_invalid_string", f"Invalid mode: {mode!r}", "mode")
    line_items = params.get("line_items") or {}
    first = line_items.get("0") if isinstance(line_items, dict) else None
    if not isinstance(first, dict) or not first.get("price"):
        return refusal("parameter_missing", "Missing required param: line_items.", "line_items")
    if first["price"] not in prices:
        return refusal("resource_missing", f"No such price: '{first['price']}'", "line_items")
    customer = params.get("customer")
    if customer is not None and customer not in customers:
        return refusal("resource_missing", f"No such customer: '{customer}'", "customer")
    session_id = f"cs_test_fake{next(_ids):06d}"
    session = {
        "id": session_id,
        "object": "checkout.session",
        "mode": mode,
        "status": "open",
        "payment_status": "unpaid",
        "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        "success_url": params["success_url"],
        "cancel_url": params["cancel_url"],
        "client_reference_id": params.get("client_reference_id"),
        "customer": customer,
        "customer_creation": params.get("customer_creation"),
        "metadata": dict(params.get("metadata") or {}),
        "line_items": {"price": first["price"], "quantity": int(first.get("quantity", 1))},
        "subscription_data": params.get("subscription_data"),
        "payment_intent_data": params.get("payment_intent_data"),
        "created": created,
        "livemode": False,
    }
    return 200, session, True


def create_portal_session(
    params: Mapping[str, Any], *, customers: set[str], created: int
) -> Answer:
    """A customer-portal session of a known customer."""
    customer = params.get("customer")
    if customer not in customers:
        return refusal("resource_missing", f"No such customer: '{customer}'", "customer")
    session_id = f"bps_fake{next(_ids):06d}"
    session = {
        "id": session_id,
        "object": "billing_portal.session",
        "customer": customer,
        "return_url": params.get("return_url"),
        "url": f"https://billing.stripe.com/p/session/{session_id}",
        "created": created,
        "livemode": False,
    }
    return 200, session, True
