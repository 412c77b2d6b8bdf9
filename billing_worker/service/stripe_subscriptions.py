"""``customer.subscription.*``: the plan and status an account's subscription gives it,
and the billing cycle its periods follow."""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from billing_worker.domain.invoice_model import BILLED_BY_SUBSCRIPTION, BILLED_BY_WORKER
from billing_worker.domain.periods import CALENDAR, Cycle, cycle_of_subscription
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.stripe import (
    ENDED_STATUSES,
    LIVE_STATUSES,
    OFF_STATUSES,
    StripeEvent,
    SubscriptionTerms,
    metadata_account,
    plan_for,
    subscription_terms,
)
from billing_worker.service.accounts import apply_plan_change
from billing_worker.service.ports import UnitOfWork
from billing_worker.service.stripe_accounts import account_of

log = structlog.get_logger(__name__)

CYCLE_MARGIN = timedelta(hours=1)
"""How far ahead, at least, an account's move onto its subscription's billing cycle takes
effect (the worker adds the allowed clock skew): longer than any process caches a period
calendar, so every replica agrees on the period of every event it accepts."""


async def apply_subscription(
    uow: UnitOfWork, book: PriceBook, event: StripeEvent, now: datetime
) -> str:
    terms = subscription_terms(event.obj, book)
    recorded = await uow.stripe.subscription_account(terms.subscription_id)
    account = await account_of(
        uow,
        event,
        metadata_account(event.obj),
        create_on=book.default_plan,
        now=now,
        recorded=recorded,
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
    first_seen = recorded is None
    current = await uow.accounts.get(account, lock=True)
    if event.event_type.endswith(".deleted"):
        status, plan = "canceled", book.default_plan
    else:
        status = terms.status
        plan = plan_for(book, terms, current_plan=current.plan if current else None)
    await uow.stripe.save_subscription(terms, account, plan)
    billed_by, billing_subscription = BILLED_BY_WORKER, None
    if status in LIVE_STATUSES:
        # a licensed Stripe price: Stripe invoices the plan's fee itself
        billed_by, billing_subscription = BILLED_BY_SUBSCRIPTION, terms.subscription_id
    elif status not in OFF_STATUSES and current is not None:
        billed_by, billing_subscription = current.plan_billed_by, current.plan_subscription
    if status in OFF_STATUSES:
        # another live subscription of the account (a new Checkout replacing this one)
        # keeps the account on its plan
        other = await uow.stripe.other_live_subscription(account, terms.subscription_id)
        if other is not None:
            plan, status, billing_subscription = other
            billed_by = BILLED_BY_SUBSCRIPTION
    calendar = await uow.accounts.period_calendar(account)
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
        effective_at=effective_from(
            terms,
            event,
            first_seen=first_seen,
            open_from=calendar.period_of(now).start,
            last_change=current.plan_changed_at if current else None,
            now=now,
        ),
        billed_by=billed_by,
        subscription=billing_subscription,
    )
    return account


def effective_from(
    terms: SubscriptionTerms,
    event: StripeEvent,
    *,
    first_seen: bool,
    open_from: datetime,
    last_change: datetime | None,
    now: datetime,
) -> datetime:
    """When the plan a subscription event sets takes effect: a subscription the worker
    learns of from its own start (``start_date``, else its current period's start); an
    ended one from when it ended; any other change from when Stripe made it (the event's
    ``created``), not from when the event happened to arrive.

    Never before the account's present period (closed or closing periods are not
    re-billed), nor before its last plan change (changes stay in order), nor after now.
    """
    if event.event_type.endswith(".deleted") or terms.status in ENDED_STATUSES:
        moment = terms.ended_at or event.created
    elif first_seen:
        moment = terms.started_at or (terms.period.start if terms.period else event.created)
    else:
        moment = event.created
    floor = max(open_from, last_change) if last_change is not None else open_from
    return min(max(moment, floor), now)


async def follow_cycle(
    uow: UnitOfWork,
    book: PriceBook,
    account: str,
    event: StripeEvent,
    *,
    not_before: datetime,
    now: datetime,
) -> None:
    """Move the account's billing periods onto the subscription's cycle, once Stripe names
    it, and back to calendar months once the subscription ended (unless another live one
    sets the cycle): from the first boundary of its present periods after ``not_before``
    and after all recorded usage (the account row is locked: no usage batch runs
    meanwhile), so no recorded usage changes period. A cycle of days or weeks is not
    followed; a paused subscription keeps its cycle for when it resumes."""
    terms = subscription_terms(event.obj, book)
    if event.event_type.endswith(".deleted") or terms.status in ENDED_STATUSES:
        if await uow.stripe.other_live_subscription(account, terms.subscription_id):
            return
        cycle: Cycle | None = CALENDAR
    elif terms.period is None or terms.status in OFF_STATUSES:
        return
    else:
        cycle = cycle_of_subscription(
            terms.period.start, terms.period.end, terms.billing_cycle_anchor
        )
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
