"""Stripe Checkout and customer-portal sessions for an account, made so that the events
Stripe later sends name the account the way the Stripe consumer reads them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from billing_worker.adapters.postgres.stripe_reads import account_stripe
from billing_worker.adapters.stripe_sessions import StripeSessionError, StripeSessions
from billing_worker.api.context import ApiContext, Context, Writer
from billing_worker.api.problems import PROBLEM_JSON, PROBLEM_SCHEMA, Problem
from billing_worker.service.stripe_sessions import (
    CheckoutRefused,
    CheckoutRequest,
    checkout_params,
    stripe_price_of,
)

router = APIRouter(
    prefix="/v1/accounts/{account}",
    tags=["stripe"],
    responses={
        502: {
            "description": "Stripe could not be reached or failed",
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
    },
)

AccountId = Annotated[str, Path(min_length=1, max_length=256)]
Url = Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


class CheckoutBody(BaseModel):
    """What to sell: a Stripe price of the price book (a plan's or a credit pack's), or a
    plan by name; where Checkout sends the customer afterwards."""

    model_config = ConfigDict(extra="forbid")

    price_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    plan: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    quantity: Annotated[int, Field(ge=1, le=1000)] = 1
    success_url: Url
    cancel_url: Url

    @model_validator(mode="after")
    def _one_thing_to_sell(self) -> CheckoutBody:
        if (self.price_id is None) == (self.plan is None):
            raise ValueError("give exactly one of price_id and plan")
        return self


class PortalBody(BaseModel):
    """Where the customer portal sends the customer back to."""

    model_config = ConfigDict(extra="forbid")

    return_url: Url


def _sessions(ctx: ApiContext) -> StripeSessions:
    key = ctx.settings.stripe_api_key
    if key is None:
        raise Problem(
            503, "Stripe features are off: set BILLING_STRIPE_API_KEY", reason="stripe_off"
        )
    return StripeSessions(key.get_secret_value(), api_base=ctx.settings.stripe_api_base)


def _stripe_failed(exc: StripeSessionError) -> Problem:
    if exc.refused:
        return Problem(422, exc.detail, reason="stripe_refused")
    return Problem(502, exc.detail, reason="stripe_unavailable")


@router.post("/checkout-sessions", status_code=201, summary="A Stripe Checkout Session")
async def post_checkout_session(
    account: AccountId,
    body: CheckoutBody,
    who: Writer,
    ctx: Context,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """A Checkout Session for a plan (a subscription) or a credit pack (a payment) that
    names the account in every object Stripe will send events about. Send an
    ``Idempotency-Key`` header to make a retried request return the same session."""
    sessions = _sessions(ctx)
    async with ctx.engine.connect() as conn:
        customer, subscription = await account_stripe(conn, account)
    try:
        price_id = stripe_price_of(ctx.book, price_id=body.price_id, plan=body.plan)
        request = CheckoutRequest(
            account=account,
            price_id=price_id,
            success_url=body.success_url,
            cancel_url=body.cancel_url,
            quantity=body.quantity,
            customer=customer,
            live_subscription=subscription,
        )
        params = checkout_params(ctx.book, request)
    except CheckoutRefused as exc:
        status = 409 if exc.reason == "already_subscribed" else 422
        raise Problem(status, exc.detail, reason=exc.reason) from exc
    key = f"{account}:{idempotency_key or uuid.uuid4()}"
    try:
        session = await sessions.checkout(params, key=key)
    except StripeSessionError as exc:
        raise _stripe_failed(exc) from exc
    return {"id": session.session_id, "url": session.url, "mode": params["mode"]}


@router.post("/portal-sessions", status_code=201, summary="A Stripe customer-portal session")
async def post_portal_session(
    account: AccountId,
    body: PortalBody,
    who: Writer,
    ctx: Context,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """A session of Stripe's customer portal for the account's Stripe customer (change or
    cancel the plan, update the card, see Stripe's invoices)."""
    sessions = _sessions(ctx)
    async with ctx.engine.connect() as conn:
        customer, _subscription = await account_stripe(conn, account)
    if customer is None:
        raise Problem(
            409,
            f"account {account!r} has no Stripe customer yet: it gets one with its first "
            "Checkout (POST .../checkout-sessions)",
            reason="no_stripe_customer",
        )
    key = f"{account}:{idempotency_key or uuid.uuid4()}"
    try:
        session = await sessions.portal(customer, body.return_url, key=key)
    except StripeSessionError as exc:
        raise _stripe_failed(exc) from exc
    return {"url": session.url}
