"""Apply one relayed Stripe event: deduplicated by id, ordered per object, one transaction.

Each event is claimed by its id first, in the transaction that applies it, so a redelivery
is a duplicate whatever happened before. Then the object's clock decides whether it is
stale (Stripe does not order deliveries: an older event for the same object must not
undo a newer one). Effects go to the ledgers and the outbox in the same transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.stripe import ENDED_STATUSES, StripeEvent
from billing_worker.service.ports import UnitOfWork, UnitOfWorkFactory
from billing_worker.service.stripe_accounts import apply_customer
from billing_worker.service.stripe_payments import (
    apply_checkout,
    apply_invoice,
    apply_payment_intent,
)
from billing_worker.service.stripe_refunds import apply_charge
from billing_worker.service.stripe_subscriptions import (
    CYCLE_MARGIN,
    apply_subscription,
    follow_cycle,
)


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
    """Apply ``event`` once; raise ``PermanentError`` for one that names no account.

    A handled event with nothing to apply yet (a customer no account is named for, see
    ``apply_customer``) is acked as ``IGNORED``; its object's clock still moves, so an
    older event of that customer stays stale."""
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
        if account is None:  # nothing to apply yet (the applier logged why)
            await uow.stripe.set_outcome(event, StripeOutcome.IGNORED, None)
            await uow.commit()
            return StripeOutcome.IGNORED
        if event.object_type == "subscription" and not event.event_type.endswith(".trial_will_end"):
            await follow_cycle(uow, book, account, event, not_before=now + cycle_margin, now=now)
        await uow.stripe.set_outcome(event, StripeOutcome.APPLIED, account)
        await uow.commit()
    return StripeOutcome.APPLIED


Applier = Callable[[UnitOfWork, PriceBook, StripeEvent, datetime], Awaitable[str | None]]
"""Applies one family of events: returns the account, or None when there is nothing to
apply yet."""

_APPLY: dict[str, Applier] = {
    "customer": apply_customer,
    "customer.subscription": apply_subscription,
    "checkout.session": apply_checkout,
    "invoice": apply_invoice,
    "payment_intent": apply_payment_intent,
    "charge": apply_charge,
}

__all__ = ["CYCLE_MARGIN", "HANDLED", "StripeOutcome", "apply_stripe_event"]
