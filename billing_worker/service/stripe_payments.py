"""Stripe's money events: Checkout sessions, invoices and payment intents (refunds are in
``stripe_refunds``)."""

from __future__ import annotations

from datetime import datetime

import structlog

from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.domain.stripe import (
    InvalidStripeEvent,
    StripeEvent,
    UnknownPrice,
    invoice_payment_intent,
    invoice_subscription_account,
    major_units,
    metadata_account,
    metadata_text,
    text,
)
from billing_worker.domain.stripe_invoices import billed_invoice_ids, invoice_tax_minor
from billing_worker.service.accounts import add_grant
from billing_worker.service.events import invoice_payment
from billing_worker.service.invoices import (
    InvalidTransition,
    InvoiceNotFound,
    apply_invoice_status,
)
from billing_worker.service.ports import UnitOfWork
from billing_worker.service.stripe_accounts import account_of

log = structlog.get_logger(__name__)


async def apply_checkout(
    uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime
) -> str:
    session = event.obj
    account = await account_of(
        uow,
        event,
        text(session, "client_reference_id"),
        metadata_account(session),
        create_on=book.default_plan,
        now=now,
    )
    customer = text(session, "customer")
    if customer is not None and await uow.stripe.link_customer(customer, account):
        await uow.accounts.append_entry(
            account,
            "stripe_customer_linked",
            {"customer": customer, "event_id": event.event_id},
            book.version,
            now,
        )
    if session.get("mode") != "payment":
        return account  # a subscription checkout: the subscription events carry the plan
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        log.info("checkout_not_paid_yet", session=event.object_id, event_id=event.event_id)
        return account
    price_id = metadata_text(session, "price_id")
    mapped = book.stripe_prices.get(price_id or "")
    if mapped is None or mapped.credit_product is None:
        raise UnknownPrice(
            f"checkout session {event.object_id}: metadata.price_id {price_id!r} maps to no "
            f"credit pack in price book {book.version} ([stripe_prices])"
        )
    product = book.credit_products[mapped.credit_product]
    quantity = _positive_int(metadata_text(session, "quantity") or "1", event)
    granted = await add_grant(
        uow,
        book,
        account=account,
        amount=product.credits * quantity,
        source=CreditSource.PURCHASE,
        key=str(event.object_id),
        note=f"{quantity} x {product.name} (checkout {event.object_id})",
        now=now,
        priority=product.priority,
    )
    if granted is not None and isinstance(session.get("amount_total"), int):
        amount, currency = major_units(session["amount_total"], session.get("currency"))
        await uow.stripe.append_payment(
            account=account,
            kind="payment",
            amount=amount,
            currency=currency,
            object_id=str(event.object_id),
            event_id=event.event_id,
            details={
                "for": "credit pack",
                "product": product.name,
                "quantity": quantity,
                "credits": str(product.credits * quantity),
                "grant_id": granted,
                # a guest checkout's refund names neither customer nor account: this does
                "payment_intent": text(session, "payment_intent"),
            },
            at=event.created,
        )
    return account


async def apply_invoice(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    invoice = event.obj
    account = await account_of(
        uow,
        event,
        metadata_account(invoice),
        invoice_subscription_account(invoice),
        create_on=book.default_plan,
        now=now,
    )
    kind = event.event_type.removeprefix("invoice.")
    billed = billed_invoice_ids(invoice)
    ours = billed[0] if billed else None
    if kind == "paid":
        amount, currency = major_units(invoice.get("amount_paid"), invoice.get("currency"))
        await uow.stripe.append_payment(
            account=account,
            kind="payment",
            amount=amount,
            currency=currency,
            object_id=str(event.object_id),
            event_id=event.event_id,
            details={
                "for": "invoice",
                "invoice_id": ours,
                "number": invoice.get("number"),
                "payment_intent": invoice_payment_intent(invoice),
            },
            at=event.created,
        )
    else:
        amount, currency = major_units(invoice.get("amount_due"), invoice.get("currency"))
        await uow.accounts.append_entry(
            account,
            f"stripe_invoice_{kind}",
            {
                "stripe_invoice_id": event.object_id,
                "invoice_id": ours,
                "amount": str(amount),
                "currency": currency,
                "event_id": event.event_id,
            },
            book.version,
            now,
        )
    if kind in ("paid", "finalized"):
        for invoice_id in billed:
            await _record_stripe_invoice(uow, book, invoice_id, account, event=event, now=now)
    if kind in ("paid", "payment_failed"):
        await uow.outbox.add(
            [
                invoice_payment(
                    event_type=event.event_type,
                    account=account,
                    stripe_invoice_id=str(event.object_id),
                    invoice_id=ours,
                    amount=amount,
                    currency=currency,
                    attempt_count=_int_or_none(invoice.get("attempt_count")),
                    failure_message=_failure_message(invoice),
                    hosted_invoice_url=text(invoice, "hosted_invoice_url"),
                    at=event.created,
                )
            ]
        )
    return account


async def apply_payment_intent(
    uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime
) -> str:
    intent = event.obj
    # a guest Checkout's intent names neither customer nor account; its session's payment does
    paid = await uow.stripe.payment_of_intent(str(event.object_id))
    account = await account_of(
        uow,
        event,
        metadata_account(intent),
        create_on=book.default_plan,
        now=now,
        recorded=paid.account if paid is not None else None,
        recorded_by=f"payment intent {event.object_id} paid {paid.object_id} of" if paid else None,
    )
    amount, currency = major_units(intent.get("amount"), intent.get("currency"))
    await uow.accounts.append_entry(
        account,
        event.event_type.replace(".", "_"),
        {
            "payment_intent": event.object_id,
            "amount": str(amount),
            "currency": currency,
            "failure": _failure_message(intent),
            "event_id": event.event_id,
        },
        book.version,
        now,
    )
    return account


async def _record_stripe_invoice(
    uow: UnitOfWork,
    book: PriceBook,
    invoice_id: str,
    account: str,
    *,
    event: StripeEvent,
    now: datetime,
) -> None:
    """Stripe finalized or was paid an invoice billing ours: keep its id (for lines put
    on a subscription, the renewal that took them), its total and the tax Stripe
    computed, and move ours the way Stripe says. An invoice of another account is left
    alone (logged): a Stripe invoice never moves another account's invoice."""
    stored = await uow.invoices.get(invoice_id)
    if stored is None or stored.account != account:
        log.warning(
            "stripe_invoice_not_ours",
            invoice=invoice_id,
            stripe_invoice=event.object_id,
            account=account,
            reason="no such invoice" if stored is None else f"it is {stored.account}'s",
        )
        return
    currency = event.obj.get("currency")
    tax = invoice_tax_minor(event.obj)
    total = event.obj.get("total")
    recorded = await uow.invoices.record_stripe_invoice(
        invoice_id,
        str(event.object_id),
        tax=major_units(tax, currency)[0] if tax is not None and tax >= 0 else None,
        total=major_units(total, currency)[0] if isinstance(total, int) and total >= 0 else None,
    )
    if not recorded:
        # ours is billed by another Stripe invoice: a stray copy of our item must not
        # move it (reconcile stripe reports the stray)
        log.warning(
            "stripe_invoice_not_ours",
            invoice=invoice_id,
            stripe_invoice=event.object_id,
            reason="billed by another Stripe invoice",
        )
        return
    status = "paid" if event.event_type == "invoice.paid" else "open"
    await _follow_stripe(uow, book, invoice_id, status=status, event=event, now=now)


async def _follow_stripe(
    uow: UnitOfWork,
    book: PriceBook,
    invoice_id: str,
    *,
    status: str,
    event: StripeEvent,
    now: datetime,
) -> None:
    """Move our invoice the way Stripe says; a move it can't make (a void invoice Stripe
    says is paid) is logged for an operator, not applied and not dead-lettered."""
    try:
        await apply_invoice_status(
            uow,
            book,
            invoice_id=invoice_id,
            status=status,
            cause=f"stripe {event.event_id}",
            now=now,
        )
    except (InvoiceNotFound, InvalidTransition) as exc:
        log.warning("stripe_invoice_status_not_applied", invoice=invoice_id, reason=exc.detail)


def _positive_int(raw: str, event: StripeEvent) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidStripeEvent(f"{event.event_id}: metadata.quantity {raw!r} is not a count")
    return int(raw)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _failure_message(obj: dict[str, object] | object) -> str | None:
    if not isinstance(obj, dict):
        return None
    error = obj.get("last_payment_error") or obj.get("last_finalization_error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None
