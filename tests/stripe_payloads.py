"""Realistic Stripe webhook payloads for tests: events shaped and signed as Stripe does.

Every builder returns a fresh, plain ``dict`` (JSON types only), so a test changes any field
by assignment. Shapes follow Stripe's API reference for API version 2024-06-20, the
``api_version`` of every event built here, with one switch for the 2025-03-31 "basil"
change that matters to billing: ``subscription(..., period_on_items_only=True)`` drops the
subscription-level ``current_period_start``/``current_period_end`` that basil removed
(the period then lives only on the subscription items).

Objects carry the fields a billing integration reads plus enough of the rest to look like
the real thing; ids of nested objects (subscription items, prices, refunds, ...) are derived
from the parent's id, so building the same object twice gives the same dict. Only
:func:`event` (and :func:`new_id`) make fresh random ids.

Typical use::

    body = encode(event("invoice.paid", invoice("in_1", customer="cus_1", status="paid",
                                                amount_due=990, amount_paid=990), created=T))
    headers = {"Stripe-Signature": sign(body, WEBHOOK_SECRET)}
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

from tests.clock import unix_now

API_VERSION: Final = "2024-06-20"
"""The ``api_version`` of every event, unless :func:`event` is told otherwise."""

WEBHOOK_SECRET: Final = "whsec_test_3f1c0b8e9d2a4c6f8e1b7d5a9c3e2f10"  # noqa: S105 - a test fixture
"""A webhook signing secret in Stripe's format, for tests that need one."""

STRIPE_ACCOUNT: Final = "acct_1Nv0FGQ9RKHgCVdK"
"""The (fictitious) Stripe account the objects belong to; it appears in invoice URLs."""

DEFAULT_CREATED: Final = int(datetime(2024, 7, 1, tzinfo=UTC).timestamp())
"""``created`` of objects whose builder takes no time: 2024-07-01T00:00:00Z."""

DEFAULT_PERIOD_START: Final = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp())
"""Default ``period_start`` of an invoice: 2024-06-01T00:00:00Z."""

DEFAULT_PERIOD_END: Final = DEFAULT_CREATED
"""Default ``period_end`` of an invoice: 2024-07-01T00:00:00Z."""

DEFAULT_EMAIL: Final = "jenny.rosen@example.com"
"""The customer email of Stripe's own examples."""

UNIT_AMOUNT: Final = 990
"""``unit_amount`` of every price: 9.90 in the currency's major unit."""

JsonObject = dict[str, Any]


def new_id(prefix: str) -> str:
    """A fresh Stripe-style id such as ``evt_5c0e...`` (96 random bits): unique per call."""
    return f"{prefix}_{secrets.token_hex(12)}"


def _derived_id(prefix: str, *seed: str, length: int = 24) -> str:
    """A Stripe-style id that is a pure function of ``seed`` (for nested objects)."""
    digest = hashlib.sha256("\x1f".join((prefix, *seed)).encode()).hexdigest()
    return f"{prefix}_{digest[:length]}"


def _obj(object_id: str, object_type: str, **fields: Any) -> JsonObject:
    """A Stripe object: ``id`` and ``object`` first, then the fields in alphabetical order,
    as the API writes them."""
    return {"id": object_id, "object": object_type, **dict(sorted(fields.items()))}


def _list(data: list[JsonObject], url: str) -> JsonObject:
    """A Stripe list object holding every element (``has_more`` false)."""
    return {"object": "list", "data": data, "has_more": False, "total_count": len(data), "url": url}


def _metadata(**values: str | None) -> dict[str, str]:
    """Stripe metadata: string values only; keys whose value is ``None`` are left out."""
    return {key: value for key, value in values.items() if value is not None}


def _invoice_prefix(customer_id: str) -> str:
    """The customer's ``invoice_prefix`` (8 upper-case characters), stable per customer."""
    return hashlib.sha256(customer_id.encode()).hexdigest()[:8].upper()


def event(
    type: str,  # noqa: A002 - the name of Stripe's field
    obj: Mapping[str, Any],
    *,
    created: int,
    event_id: str | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
    api_version: str = API_VERSION,
) -> JsonObject:
    """A Stripe ``event`` (snapshot) of ``type`` carrying a copy of ``obj``.

    ``event_id`` is a fresh unique ``evt_...`` when not given. ``previous_attributes``
    (the old values of the fields that changed, for ``*.updated`` events) is present in
    ``data`` only when given, as in Stripe's payloads.
    """
    evt_id = event_id if event_id is not None else new_id("evt")
    data: JsonObject = {"object": copy.deepcopy(dict(obj))}
    if previous_attributes is not None:
        data["previous_attributes"] = copy.deepcopy(dict(previous_attributes))
    return {
        "id": evt_id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": _derived_id("req", evt_id, length=14), "idempotency_key": None},
        "type": type,
    }


def customer(
    customer_id: str, *, account_id: str | None = None, email: str | None = DEFAULT_EMAIL
) -> JsonObject:
    """A ``customer``; ``metadata`` is ``{"account_id": ...}`` when given, else empty."""
    return _obj(
        customer_id,
        "customer",
        address=None,
        balance=0,
        created=DEFAULT_CREATED,
        currency="usd",
        default_source=None,
        delinquent=False,
        description=None,
        discount=None,
        email=email,
        invoice_prefix=_invoice_prefix(customer_id),
        invoice_settings={
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        livemode=False,
        metadata=_metadata(account_id=account_id),
        name=None,
        next_invoice_sequence=1,
        phone=None,
        preferred_locales=[],
        shipping=None,
        tax_exempt="none",
        test_clock=None,
    )


def _price(price_id: str) -> JsonObject:
    """A monthly, licensed ``price`` of :data:`UNIT_AMOUNT` cents of usd."""
    return _obj(
        price_id,
        "price",
        active=True,
        billing_scheme="per_unit",
        created=DEFAULT_CREATED,
        currency="usd",
        custom_unit_amount=None,
        livemode=False,
        lookup_key=None,
        metadata={},
        nickname=None,
        product=_derived_id("prod", price_id, length=14),
        recurring={
            "interval": "month",
            "interval_count": 1,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        tax_behavior="unspecified",
        tiers_mode=None,
        transform_quantity=None,
        type="recurring",
        unit_amount=UNIT_AMOUNT,
        unit_amount_decimal=str(UNIT_AMOUNT),
    )


def subscription(
    subscription_id: str,
    *,
    customer: str,
    price_id: str,
    status: str,
    current_period_start: int,
    current_period_end: int,
    cancel_at_period_end: bool = False,
    trial_end: int | None = None,
    account_id: str | None = None,
    period_on_items_only: bool = False,
) -> JsonObject:
    """A ``subscription`` to one monthly price (quantity 1).

    ``status`` is Stripe's: ``incomplete``, ``incomplete_expired``, ``trialing``, ``active``,
    ``past_due``, ``canceled``, ``unpaid`` or ``paused``. The period is on the item and, unless
    ``period_on_items_only`` (API 2025-03-31.basil and later), also on the subscription.
    ``metadata`` is ``{"account_id": ...}`` when given, else empty.

    With ``cancel_at_period_end``, ``cancel_at`` is the period end and ``canceled_at`` the
    period start (when the cancellation was asked for). A ``canceled`` subscription has
    ``canceled_at`` and ``ended_at`` set: it ended at the period end. With ``trial_end``,
    the trial started at the period start.
    """
    item = _obj(
        _derived_id("si", subscription_id, length=14),
        "subscription_item",
        created=current_period_start,
        current_period_end=current_period_end,
        current_period_start=current_period_start,
        discounts=[],
        metadata={},
        price=_price(price_id),
        quantity=1,
        subscription=subscription_id,
        tax_rates=[],
    )
    canceled = status == "canceled"
    asked_to_cancel = canceled or cancel_at_period_end
    canceled_at = (
        current_period_start if cancel_at_period_end else current_period_end if canceled else None
    )
    periods: JsonObject = (
        {}
        if period_on_items_only
        else {
            "current_period_start": current_period_start,
            "current_period_end": current_period_end,
        }
    )
    return _obj(
        subscription_id,
        "subscription",
        application=None,
        automatic_tax={"enabled": False, "liability": None},
        billing_cycle_anchor=current_period_start,
        cancel_at=current_period_end if cancel_at_period_end else None,
        cancel_at_period_end=cancel_at_period_end,
        canceled_at=canceled_at,
        cancellation_details={
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested" if asked_to_cancel else None,
        },
        collection_method="charge_automatically",
        created=current_period_start,
        currency="usd",
        customer=customer,
        days_until_due=None,
        default_payment_method=None,
        description=None,
        discount=None,
        discounts=[],
        ended_at=current_period_end if canceled else None,
        items=_list([item], f"/v1/subscription_items?subscription={subscription_id}"),
        latest_invoice=_derived_id("in", subscription_id, str(current_period_start)),
        livemode=False,
        metadata=_metadata(account_id=account_id),
        pause_collection=None,
        pending_update=None,
        schedule=None,
        start_date=current_period_start,
        status=status,
        test_clock=None,
        trial_end=trial_end,
        trial_start=current_period_start if trial_end is not None else None,
        **periods,
    )


def checkout_session(
    session_id: str,
    *,
    mode: Literal["payment", "subscription"],
    customer: str | None = None,
    client_reference_id: str | None = None,
    account_id: str | None = None,
    price_id: str | None = None,
    quantity: int = 1,
    payment_status: Literal["paid", "unpaid", "no_payment_required"] = "paid",
    amount_total: int = 1000,
    subscription: str | None = None,
    payment_intent: str | None = None,
) -> JsonObject:
    """A ``checkout.session`` with ``status`` ``complete`` (as in ``checkout.session.completed``).

    Webhooks never carry a session's line items, so the platform passes what was bought in
    ``metadata``: ``{"account_id": ..., "price_id": ..., "quantity": "1"}`` (strings; each
    key present only when given, ``quantity`` only with a ``price_id``). ``amount_total`` is
    in cents of usd. In ``subscription`` mode Stripe leaves ``payment_intent`` null.
    """
    return _obj(
        session_id,
        "checkout.session",
        after_expiration=None,
        allow_promotion_codes=None,
        amount_subtotal=amount_total,
        amount_total=amount_total,
        automatic_tax={"enabled": False, "liability": None, "status": None},
        billing_address_collection=None,
        cancel_url="https://example.com/billing/cancel",
        client_reference_id=client_reference_id,
        created=DEFAULT_CREATED,
        currency="usd",
        customer=customer,
        customer_creation=None if customer is None else "always",
        customer_details={
            "address": None,
            "email": DEFAULT_EMAIL,
            "name": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        customer_email=None,
        expires_at=DEFAULT_CREATED + 24 * 3600,
        invoice=None,
        livemode=False,
        locale=None,
        metadata=_metadata(
            account_id=account_id,
            price_id=price_id,
            quantity=str(quantity) if price_id is not None else None,
        ),
        mode=mode,
        payment_intent=payment_intent,
        payment_link=None,
        payment_method_types=["card"],
        payment_status=payment_status,
        status="complete",
        submit_type=None,
        subscription=subscription,
        success_url="https://example.com/billing/success?session_id={CHECKOUT_SESSION_ID}",
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        ui_mode="hosted",
        url=None,
    )


def invoice(
    invoice_id: str,
    *,
    customer: str,
    status: Literal["draft", "open", "paid", "uncollectible", "void"],
    amount_due: int,
    amount_paid: int,
    currency: str = "usd",
    billing_invoice_id: str | None = None,
    subscription: str | None = None,
    period_start: int = DEFAULT_PERIOD_START,
    period_end: int = DEFAULT_PERIOD_END,
    attempt_count: int | None = None,
) -> JsonObject:
    """An ``invoice`` (2024-06-20 shape: top-level ``subscription``, ``paid``, ``charge`` and
    ``payment_intent``), amounts in the currency's minor unit.

    ``metadata`` is ``{"billing_invoice_id": ...}`` when the invoice was synced from one of
    ours, else empty. A draft has no ``number``, ``hosted_invoice_url`` or ``invoice_pdf``;
    a finalized invoice has all three. ``attempt_count`` defaults to 0 for a draft and 1
    otherwise. The invoice was created, finalized and (if paid) paid at ``period_end``.
    """
    finalized = status != "draft"
    attempts = attempt_count if attempt_count is not None else (1 if finalized else 0)
    token = _derived_id("test", invoice_id, length=40)
    line = _obj(
        _derived_id("il", invoice_id, length=14),
        "line_item",
        amount=amount_due,
        currency=currency,
        description=None,
        discountable=True,
        invoice=invoice_id,
        livemode=False,
        metadata={},
        period={"end": period_end, "start": period_start},
        proration=False,
        quantity=1,
        subscription=subscription,
        type="subscription" if subscription is not None else "invoiceitem",
    )
    return _obj(
        invoice_id,
        "invoice",
        account_country="US",
        account_name="Example SaaS, Inc.",
        amount_due=amount_due,
        amount_paid=amount_paid,
        amount_remaining=max(amount_due - amount_paid, 0),
        amount_shipping=0,
        attempt_count=attempts,
        attempted=attempts > 0,
        auto_advance=status in {"draft", "open"},
        billing_reason="subscription_cycle" if subscription is not None else "manual",
        charge=_derived_id("ch", invoice_id) if attempts > 0 and amount_due > 0 else None,
        collection_method="charge_automatically",
        created=period_end,
        currency=currency,
        customer=customer,
        customer_email=DEFAULT_EMAIL,
        customer_name=None,
        default_payment_method=None,
        description=None,
        discounts=[],
        due_date=None,
        effective_at=period_end if finalized else None,
        ending_balance=0 if finalized else None,
        hosted_invoice_url=(
            f"https://invoice.stripe.com/i/{STRIPE_ACCOUNT}/{token}?s=ap" if finalized else None
        ),
        invoice_pdf=(
            f"https://pay.stripe.com/invoice/{STRIPE_ACCOUNT}/{token}/pdf?s=ap"
            if finalized
            else None
        ),
        last_finalization_error=None,
        lines=_list([line], f"/v1/invoices/{invoice_id}/lines"),
        livemode=False,
        metadata=_metadata(billing_invoice_id=billing_invoice_id),
        next_payment_attempt=period_end + 3 * 24 * 3600 if status == "open" else None,
        number=(
            f"{_invoice_prefix(customer)}-{int(token[-4:], 16) % 9999 + 1:04d}"
            if finalized
            else None
        ),
        paid=status == "paid",
        paid_out_of_band=False,
        payment_intent=_derived_id("pi", invoice_id) if finalized and amount_due > 0 else None,
        period_end=period_end,
        period_start=period_start,
        starting_balance=0,
        status=status,
        status_transitions={
            "finalized_at": period_end if finalized else None,
            "marked_uncollectible_at": period_end if status == "uncollectible" else None,
            "paid_at": period_end if status == "paid" else None,
            "voided_at": period_end if status == "void" else None,
        },
        subscription=subscription,
        subtotal=amount_due,
        test_clock=None,
        total=amount_due,
        webhooks_delivered_at=period_end,
    )


def payment_intent(
    pi_id: str,
    *,
    customer: str | None,
    amount: int,
    status: str,
    currency: str = "usd",
    last_payment_error: str | Mapping[str, Any] | None = None,
) -> JsonObject:
    """A ``payment_intent`` of ``amount`` (minor unit).

    ``status`` is Stripe's (``requires_payment_method``, ``requires_confirmation``,
    ``requires_action``, ``processing``, ``requires_capture``, ``canceled``, ``succeeded``).
    ``last_payment_error`` may be a full error object or just its message, which becomes a
    declined-card error (as in ``payment_intent.payment_failed``).
    """
    error: JsonObject | None
    if isinstance(last_payment_error, str):
        error = {
            "code": "card_declined",
            "decline_code": "generic_decline",
            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
            "message": last_payment_error,
            "type": "card_error",
        }
    else:
        error = None if last_payment_error is None else copy.deepcopy(dict(last_payment_error))
    charged = status == "succeeded" or error is not None
    return _obj(
        pi_id,
        "payment_intent",
        amount=amount,
        amount_capturable=0,
        amount_received=amount if status == "succeeded" else 0,
        application=None,
        automatic_payment_methods=None,
        canceled_at=None,
        cancellation_reason=None,
        capture_method="automatic_async",
        client_secret=f"{pi_id}_secret_{_derived_id('s', pi_id)[2:]}",
        confirmation_method="automatic",
        created=DEFAULT_CREATED,
        currency=currency,
        customer=customer,
        description=None,
        invoice=None,
        last_payment_error=error,
        latest_charge=_derived_id("ch", pi_id) if charged else None,
        livemode=False,
        metadata={},
        next_action=None,
        payment_method=(None if status == "requires_payment_method" else _derived_id("pm", pi_id)),
        payment_method_types=["card"],
        receipt_email=None,
        setup_future_usage=None,
        statement_descriptor=None,
        status=status,
    )


def charge(
    charge_id: str,
    *,
    customer: str | None,
    amount: int,
    amount_refunded: int,
    payment_intent: str | None = None,
    currency: str = "usd",
    refunded: bool = True,
) -> JsonObject:
    """A succeeded, captured ``charge`` of ``amount`` with ``amount_refunded`` refunded.

    ``refunds`` lists one succeeded refund of ``amount_refunded`` (none when it is 0). Stripe
    sets ``refunded`` only when the whole amount was refunded; pass ``refunded=False`` for a
    partial refund. (Since API 2022-11-15 Stripe omits ``refunds`` unless expanded; it is
    included here for handlers that read it when present.)
    """
    refund = _obj(
        _derived_id("re", charge_id),
        "refund",
        amount=amount_refunded,
        balance_transaction=_derived_id("txn", charge_id, "refund"),
        charge=charge_id,
        created=DEFAULT_CREATED + 3600,
        currency=currency,
        destination_details={"card": {"type": "refund"}, "type": "card"},
        metadata={},
        payment_intent=payment_intent,
        reason="requested_by_customer",
        receipt_number=None,
        source_transfer_reversal=None,
        status="succeeded",
        transfer_reversal=None,
    )
    refunds = [refund] if amount_refunded > 0 else []
    return _obj(
        charge_id,
        "charge",
        amount=amount,
        amount_captured=amount,
        amount_refunded=amount_refunded,
        application=None,
        balance_transaction=_derived_id("txn", charge_id),
        billing_details={"address": None, "email": DEFAULT_EMAIL, "name": None, "phone": None},
        calculated_statement_descriptor="EXAMPLE SAAS",
        captured=True,
        created=DEFAULT_CREATED,
        currency=currency,
        customer=customer,
        description=None,
        disputed=False,
        failure_code=None,
        failure_message=None,
        invoice=None,
        livemode=False,
        metadata={},
        outcome={
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        paid=True,
        payment_intent=payment_intent,
        payment_method=_derived_id("pm", charge_id),
        receipt_url=f"https://pay.stripe.com/receipts/payment/{_derived_id('test', charge_id)}",
        refunded=refunded,
        refunds=_list(refunds, f"/v1/charges/{charge_id}/refunds"),
        status="succeeded",
    )


def encode(evt: Mapping[str, Any], *, indent: int | None = None) -> bytes:
    """The event as a webhook body: compact UTF-8 JSON (``indent=2`` gives the pretty-printed
    layout of Stripe's real deliveries). Sign these exact bytes."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(evt, indent=indent, separators=separators, ensure_ascii=False).encode()


def sign(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header of ``payload``: ``t=<ts>,v1=<hex>``, where ``<hex>`` is
    HMAC-SHA256 keyed with ``secret`` over ``b"<ts>." + payload``. ``timestamp`` defaults to
    the session's clock (``tests/clock.py``)."""
    ts = unix_now() if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"
