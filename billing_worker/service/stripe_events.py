"""Apply one relayed Stripe event: deduplicated by id, ordered per object, one transaction.

Each event is claimed by its id first, in the transaction that applies it, so a redelivery
is a duplicate whatever happened before. Then the object's clock decides whether it is
stale (Stripe does not order deliveries: an older event for the same object must not
undo a newer one). Effects go to the ledgers and the outbox in the same transaction.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import structlog

from billing_worker.domain.periods import cycle_of_subscription
from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.domain.stripe import (
    ENDED_STATUSES,
    OFF_STATUSES,
    AccountMismatch,
    InvalidStripeEvent,
    StripeEvent,
    UnknownPrice,
    UnresolvedAccount,
    invoice_subscription_account,
    major_units,
    metadata_account,
    metadata_text,
    plan_for,
    subscription_terms,
    text,
)
from billing_worker.service.accounts import add_grant, apply_plan_change
from billing_worker.service.events import invoice_payment
from billing_worker.service.invoices import (
    InvalidTransition,
    InvoiceNotFound,
    apply_invoice_status,
)
from billing_worker.service.ports import UnitOfWork, UnitOfWorkFactory

log = structlog.get_logger(__name__)

CYCLE_MARGIN = timedelta(hours=1)
"""How far ahead, at least, an account's move onto its subscription's billing cycle takes
effect (the worker adds the allowed clock skew): longer than any process caches a period
calendar, so every replica agrees on the period of every event it accepts."""


class StripeOutcome(enum.StrEnum):
    """What became of a Stripe event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"


HANDLED = frozenset(
    {
        "customer.created",
        "customer.updated",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "charge.refunded",
    }
)


async def apply_stripe_event(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    event: StripeEvent,
    *,
    now: datetime,
    cycle_margin: timedelta = CYCLE_MARGIN,
) -> StripeOutcome:
    """Apply ``event`` once; raise ``PermanentError`` for one that names no account."""
    async with uow_factory() as uow:
        if not await uow.stripe.claim_event(event):
            return StripeOutcome.DUPLICATE
        if event.event_type not in HANDLED:
            await uow.stripe.set_outcome(event, StripeOutcome.IGNORED, None)
            await uow.commit()
            return StripeOutcome.IGNORED
        terminal = event.event_type == "customer.subscription.deleted" or (
            event.object_type == "subscription" and event.obj.get("status") in ENDED_STATUSES
        )
        if not await uow.stripe.advance_object(event, terminal=terminal):
            await uow.stripe.set_outcome(event, StripeOutcome.STALE, None)
            await uow.commit()
            return StripeOutcome.STALE
        account = await _APPLY[event.event_type.rsplit(".", 1)[0]](uow, book, event, now)
        if event.object_type == "subscription" and not event.event_type.endswith(
            (".deleted", ".trial_will_end")
        ):
            await _follow_cycle(uow, book, account, event, not_before=now + cycle_margin, now=now)
        await uow.stripe.set_outcome(event, StripeOutcome.APPLIED, account)
        await uow.commit()
    return StripeOutcome.APPLIED


async def _account_of(
    uow: UnitOfWork,
    event: StripeEvent,
    *candidates: str | None,
    create_on: str,
    now: datetime,
    recorded: str | None = None,
) -> str:
    """The account the event names, else its customer's (or ``recorded``); created if new.

    Every account the event implies must be one and the same: those it names, the one its
    customer is linked to, and ``recorded``, the one its object is already kept under.
    Otherwise a genuinely signed event (metadata set wrongly, a ``client_reference_id``
    taken from a payment link) could hand one account's customer, subscription, payments
    or credits to another; it is refused instead, changing nothing.
    """
    customer = text(event.obj, "customer")
    linked = await uow.stripe.customer_account(customer) if customer is not None else None
    named = [candidate for candidate in candidates if candidate]
    claims = [("the event names", account) for account in named]
    if linked is not None:
        claims.append((f"customer {customer} is linked to", linked))
    if recorded is not None:
        claims.append((f"{event.object_type} {event.object_id} is kept under", recorded))
    if len({account for _, account in claims}) > 1:
        raise AccountMismatch(
            f"{event.event_type} {event.event_id}: the accounts it implies differ: "
            + "; ".join(f"{source} {account}" for source, account in claims)
            + ". A customer moves only by its own metadata.account_id (customer.updated)"
        )
    if named:
        await uow.accounts.create(named[0], create_on, now)
        return named[0]
    if claims:
        return claims[0][1]
    raise UnresolvedAccount(
        f"{event.event_type} {event.event_id}: {event.object_type} {event.object_id} names no "
        "account (metadata.account_id) and its customer "
        f"{customer or '(none)'} is not linked to one"
    )


async def _customer(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    account = metadata_account(event.obj)
    if account is None:
        raise UnresolvedAccount(
            f"customer {event.object_id} has no metadata.account_id: set it when creating "
            "the customer"
        )
    await uow.accounts.create(account, book.default_plan, now)
    if await uow.stripe.link_customer(str(event.object_id), account):
        await uow.accounts.append_entry(
            account,
            "stripe_customer_linked",
            {"customer": event.object_id, "event_id": event.event_id},
            book.version,
            now,
        )
    return account


async def _subscription(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    terms = subscription_terms(event.obj)
    account = await _account_of(
        uow,
        event,
        metadata_account(event.obj),
        create_on=book.default_plan,
        now=now,
        recorded=await uow.stripe.subscription_account(terms.subscription_id),
    )
    if terms.customer is not None:
        await uow.stripe.link_customer(terms.customer, account)
    if event.event_type.endswith(".trial_will_end"):
        await uow.accounts.append_entry(
            account,
            "trial_will_end",
            {
                "subscription": terms.subscription_id,
                "trial_end": terms.trial_end.isoformat() if terms.trial_end else None,
                "event_id": event.event_id,
            },
            book.version,
            now,
        )
        return account
    current = await uow.accounts.get(account, lock=True)
    if event.event_type.endswith(".deleted"):
        status, plan = "canceled", book.default_plan
    else:
        status = terms.status
        plan = plan_for(book, terms, current_plan=current.plan if current else None)
    await uow.stripe.save_subscription(terms, account, plan)
    if status in OFF_STATUSES:
        # another live subscription of the account (a new Checkout replacing this one)
        # keeps the account on its plan
        other = await uow.stripe.other_live_subscription(account, terms.subscription_id)
        if other is not None:
            plan, status = other
    await apply_plan_change(
        uow,
        book,
        account=account,
        plan=plan,
        status=status,
        cause="stripe",
        change_id=event.event_id,
        now=now,
        period=terms.period,
    )
    return account


async def _follow_cycle(
    uow: UnitOfWork,
    book: PriceBook,
    account: str,
    event: StripeEvent,
    *,
    not_before: datetime,
    now: datetime,
) -> None:
    """Move the account's billing periods onto the subscription's cycle, once Stripe names
    it: from the first boundary of its present periods after ``not_before`` and after all
    recorded usage (the account row is locked: no usage batch runs meanwhile), so no
    recorded usage changes period. A cycle of days or weeks is not followed."""
    terms = subscription_terms(event.obj)
    if terms.period is None or terms.status in OFF_STATUSES:
        return
    cycle = cycle_of_subscription(terms.period.start, terms.period.end, terms.billing_cycle_anchor)
    if cycle is None:
        log.info(
            "subscription_cycle_not_followed",
            account=account,
            subscription=terms.subscription_id,
            reason="not a whole number of months",
        )
        return
    await uow.accounts.get(account, lock=True)
    horizon = await uow.accounts.usage_horizon(account)
    calendar = await uow.accounts.period_calendar(account)
    change = calendar.switch_to(cycle, max(not_before, horizon or not_before))
    if change is None:
        return
    await uow.accounts.add_cycle_change(account, change, terms.subscription_id)
    await uow.accounts.append_entry(
        account,
        "period_cycle_changed",
        {
            "effective_from": change.effective_from.isoformat(),
            "anchor": cycle.anchor.isoformat(),
            "months": cycle.months,
            "subscription": terms.subscription_id,
            "event_id": event.event_id,
        },
        book.version,
        now,
    )
    log.info(
        "period_cycle_changed",
        account=account,
        effective_from=change.effective_from.isoformat(),
        cycle=cycle.text,
    )


async def _checkout(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    session = event.obj
    account = await _account_of(
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
            details={"for": "credit pack", "product": product.name, "quantity": quantity},
            at=event.created,
        )
    return account


async def _invoice(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    invoice = event.obj
    account = await _account_of(
        uow,
        event,
        metadata_account(invoice),
        invoice_subscription_account(invoice),
        create_on=book.default_plan,
        now=now,
    )
    kind = event.event_type.removeprefix("invoice.")
    ours = metadata_text(invoice, "billing_invoice_id")
    if kind == "paid":
        amount, currency = major_units(invoice.get("amount_paid"), invoice.get("currency"))
        await uow.stripe.append_payment(
            account=account,
            kind="payment",
            amount=amount,
            currency=currency,
            object_id=str(event.object_id),
            event_id=event.event_id,
            details={"for": "invoice", "invoice_id": ours, "number": invoice.get("number")},
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
    if ours is not None and kind in ("paid", "finalized"):
        status = "paid" if kind == "paid" else "open"
        await _follow_stripe(uow, book, ours, status=status, event=event, now=now)
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


async def _payment_intent(
    uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime
) -> str:
    intent = event.obj
    account = await _account_of(
        uow, event, metadata_account(intent), create_on=book.default_plan, now=now
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


async def _charge(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    charge = event.obj
    account = await _account_of(
        uow, event, metadata_account(charge), create_on=book.default_plan, now=now
    )
    refunded, currency = major_units(charge.get("amount_refunded"), charge.get("currency"))
    # charge.refunded carries the running total refunded; the ledger takes the difference,
    # so partial refunds are each reversed once.
    already = await uow.stripe.refunded_so_far(str(event.object_id))
    if refunded > already:
        await uow.stripe.append_payment(
            account=account,
            kind="refund",
            amount=-(refunded - already),
            currency=currency,
            object_id=str(event.object_id),
            event_id=event.event_id,
            details={"payment_intent": text(charge, "payment_intent")},
            at=event.created,
        )
    return account


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


_APPLY = {
    "customer": _customer,
    "customer.subscription": _subscription,
    "checkout.session": _checkout,
    "invoice": _invoice,
    "payment_intent": _payment_intent,
    "charge": _charge,
}

__all__ = ["HANDLED", "StripeOutcome", "apply_stripe_event"]
