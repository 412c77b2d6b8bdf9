"""Which account a Stripe event belongs to, and the ``customer.*`` events that link one."""

from __future__ import annotations

from datetime import datetime

import structlog

from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.stripe import (
    AccountMismatch,
    StripeEvent,
    UnresolvedAccount,
    metadata_account,
    text,
)
from billing_worker.service.ports import UnitOfWork

log = structlog.get_logger(__name__)


async def account_of(
    uow: UnitOfWork,
    event: StripeEvent,
    *candidates: str | None,
    create_on: str,
    now: datetime,
    recorded: str | None = None,
    recorded_by: str | None = None,
) -> str:
    """The account the event names, else its customer's (or ``recorded``); created if new.

    Every account the event implies must be one and the same: those it names, the one its
    customer is linked to, and ``recorded``, the one its object is already kept under (or,
    as ``recorded_by`` words it, the one a payment the worker holds for it was made for).
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
        source = recorded_by or f"{event.object_type} {event.object_id} is kept under"
        claims.append((source, recorded))
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


async def apply_customer(
    uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime
) -> str | None:
    """Link the customer to the account its ``metadata.account_id`` names.

    A customer that names no account is not an error: Checkout creates the customer
    before anything names the account (``customer.created`` with empty metadata), and the
    session, subscription and invoice events that follow name it. Such an event is acked
    as ignored (None), saying why in the log; one of a customer already linked keeps the
    link and is applied to that account.
    """
    customer = str(event.object_id)
    account = metadata_account(event.obj)
    if account is None:
        linked = await uow.stripe.customer_account(customer)
        if linked is None:
            log.info(
                "stripe_customer_names_no_account",
                event_id=event.event_id,
                event_type=event.event_type,
                customer=customer,
                reason="no metadata.account_id and not linked yet: later events name it",
            )
        return linked
    await uow.accounts.create(account, book.default_plan, now)
    if await uow.stripe.link_customer(customer, account):
        await uow.accounts.append_entry(
            account,
            "stripe_customer_linked",
            {"customer": customer, "event_id": event.event_id},
            book.version,
            now,
        )
    return account
