"""``charge.refunded``: a reversing payment entry, and the credits of a refunded pack."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from billing_worker.domain.pricebook import PriceBook, RefundPolicy
from billing_worker.domain.stripe import (
    IntentPayment,
    StripeEvent,
    major_units,
    metadata_account,
    refunded_share,
    text,
)
from billing_worker.service.ports import UnitOfWork
from billing_worker.service.stripe_accounts import account_of

log = structlog.get_logger(__name__)


async def apply_charge(uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime) -> str:
    """Book what the charge's refunds add since the last event, once.

    The account is the one the charge names or its customer's, else the one the ledger's
    payment for its payment intent was made for (a guest Checkout names neither customer
    nor account on its charge); all of those that are known must agree.
    """
    charge = event.obj
    intent = text(charge, "payment_intent")
    paid = await uow.stripe.payment_of_intent(intent) if intent is not None else None
    account = await account_of(
        uow,
        event,
        metadata_account(charge),
        create_on=book.default_plan,
        now=now,
        recorded=paid.account if paid is not None else None,
        recorded_by=f"payment intent {intent} paid {paid.object_id} of" if paid else None,
    )
    refunded, currency = major_units(charge.get("amount_refunded"), charge.get("currency"))
    # charge.refunded carries the running total refunded; the ledger takes the difference,
    # so partial refunds are each reversed once.
    already = await uow.stripe.refunded_so_far(str(event.object_id))
    if refunded > already:
        details: dict[str, Any] = {"payment_intent": intent}
        if paid is not None and paid.details.get("for") == "credit pack":
            charged, _ = major_units(charge.get("amount"), charge.get("currency"))
            details |= await _take_back_credits(
                uow,
                book,
                account=account,
                pack=paid,
                event=event,
                now=now,
                charged=charged,
                before=already,
                after=refunded,
            )
        await uow.stripe.append_payment(
            account=account,
            kind="refund",
            amount=-(refunded - already),
            currency=currency,
            object_id=str(event.object_id),
            event_id=event.event_id,
            details=details,
            at=event.created,
        )
    return account


async def _take_back_credits(
    uow: UnitOfWork,
    book: PriceBook,
    *,
    account: str,
    pack: IntentPayment,
    event: StripeEvent,
    now: datetime,
    charged: Decimal,
    before: Decimal,
    after: Decimal,
) -> dict[str, Any]:
    """Claw back the credits this refund stands for (its share of the pack, as the share of
    the charge refunded grew from ``before`` to ``after``), at most what is unspent of
    the pack's grant; say in the ledgers what was taken and what was spent already.

    Shares are of the running total, so partial refunds together take back exactly the
    refunded share of the pack, and a full refund the whole of it (what is left of it).
    """
    pack_credits = Decimal(str(pack.details.get("credits", "0")))
    grant_id = pack.details.get("grant_id")
    due = refunded_share(pack_credits, charged, after) - refunded_share(
        pack_credits, charged, before
    )
    facts: dict[str, Any] = {"credit_pack": pack.object_id, "credits_refunded": str(due)}
    if book.credit_refund_policy is RefundPolicy.KEEP:
        return facts | {"credits_kept": str(due), "on_refund": RefundPolicy.KEEP.value}
    if due <= 0 or not isinstance(grant_id, int):
        return facts
    taken = await uow.credits.claw_back(
        account=account,
        grant_id=grant_id,
        amount=due,
        event_id=event.event_id,
        now=now,
        pricebook_version=book.version,
    )
    if taken is None:
        log.warning(
            "refunded_pack_grant_missing", account=account, grant_id=grant_id, pack=pack.object_id
        )
        return facts | {"credits_clawed_back": "0", "credits_not_found": str(due)}
    spent = due - taken
    facts |= {
        "grant_id": grant_id,
        "credits_clawed_back": str(taken),
        "credits_already_spent": str(spent),
    }
    await uow.accounts.append_entry(
        account,
        "credits_clawed_back",
        {
            **facts,
            "charge": event.object_id,
            "refunded": str(after - before),
            "event_id": event.event_id,
        },
        book.version,
        now,
    )
    if spent > 0:
        log.info("refunded_credits_already_spent", account=account, pack=pack.object_id)
    return facts
