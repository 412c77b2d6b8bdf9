"""Account use cases: change plan, grant credits, expire credits, look at an account."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.invoice_model import BILLED_BY_WORKER
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import DEFAULT_GRANT_PRIORITY, CreditSource, PriceBook
from billing_worker.domain.quotas import PeriodUsage, crossed_thresholds
from billing_worker.service.events import quota_alert, subscription_changed
from billing_worker.service.ports import UnitOfWork, UnitOfWorkFactory


class UnknownPlan(PermanentError):
    """The price book has no such plan."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_plan")


class UnknownAccount(PermanentError):
    """No such account."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_account")


@dataclass(frozen=True, slots=True)
class PlanChange:
    """What a plan change did."""

    account: str
    previous_plan: str | None
    plan: str
    previous_status: str | None
    status: str
    changed: bool
    quota_events: int


async def change_plan(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    *,
    account: str,
    plan: str,
    status: str = "active",
    cause: str = "operator",
    change_id: str,
    now: datetime,
) -> PlanChange:
    """``apply_plan_change`` in a transaction of its own."""
    async with uow_factory() as uow:
        change = await apply_plan_change(
            uow,
            book,
            account=account,
            plan=plan,
            status=status,
            cause=cause,
            change_id=change_id,
            now=now,
        )
        await uow.commit()
    return change


async def apply_plan_change(
    uow: UnitOfWork,
    book: PriceBook,
    *,
    account: str,
    plan: str,
    status: str,
    cause: str,
    change_id: str,
    now: datetime,
    period: BillingPeriod | None = None,
    effective_at: datetime | None = None,
    billed_by: str = BILLED_BY_WORKER,
    subscription: str | None = None,
) -> PlanChange:
    """Move ``account`` to ``plan`` (and ``status``) from ``effective_at`` (default
    ``now``) on, inside ``uow``; its fee billed by ``billed_by`` (the worker, or the Stripe
    ``subscription`` that charges it itself).

    - the account ledger gets a ``plan_changed`` entry, the outbox ``subscription.changed``
      (naming ``period``, the subscription's current period when known);
    - the new plan's limits and thresholds apply to the rest of the current period (no
      usage is rewritten): thresholds the usage so far already reaches under the new
      limits are announced now, unless announced before in this period;
    - the previous plan's credit grant for the period expires (a ledger entry) and the
      new plan's is granted, so credits follow the plan immediately.

    ``change_id`` names the change (a Stripe event id, an operator request id): applying
    the same change twice announces it once. An unknown account is created on ``plan``.
    A change of who bills the fee alone is a change too: the invoice's plan-fee lines
    follow it, so a fee is never charged by both the worker and Stripe.
    """
    if plan not in book.plans:
        raise UnknownPlan(
            f"no plan {plan!r} in price book {book.version} (plans: {', '.join(book.plans)})"
        )
    # Locked FOR UPDATE, the account row serialises this change with usage batches for
    # the account (their foreign-key checks wait): a batch allocating the old plan's
    # grant can't interleave with the change that ends it.
    previous_plan: str | None = None
    previous_status: str | None = None
    previous_billing: tuple[str, str | None] = (BILLED_BY_WORKER, None)
    effective = effective_at or now
    if not await uow.accounts.create(account, plan, min(now, effective)):
        before = await uow.accounts.get(account, lock=True)
        if before is None:  # pragma: no cover - accounts are never deleted
            raise UnknownAccount(f"account {account!r} vanished")
        previous_plan, previous_status = before.plan, before.status
        previous_billing = (before.plan_billed_by, before.plan_subscription)
    usage_period = (await uow.accounts.period_calendar(account)).period_of(now)
    billing = (billed_by, subscription if billed_by != BILLED_BY_WORKER else None)
    changed = (previous_plan, previous_status, previous_billing) != (plan, status, billing)
    quota_events = 0
    if changed:
        await uow.accounts.set_plan(
            account, plan, status, effective, billed_by=billing[0], subscription=billing[1]
        )
        await uow.accounts.append_entry(
            account,
            "plan_changed",
            {
                "plan": plan,
                "status": status,
                "previous_plan": previous_plan,
                "previous_status": previous_status,
                "cause": cause,
                "change_id": change_id,
                "billed_by": billing[0],
                "subscription": billing[1],
            },
            book.version,
            now,
            effective_at=effective,
        )
        await uow.outbox.add(
            [
                subscription_changed(
                    account=account,
                    plan=plan,
                    status=status,
                    previous_plan=previous_plan,
                    previous_status=previous_status,
                    period=period or usage_period,
                    cause=cause,
                    change_id=change_id,
                    at=now,
                )
            ]
        )
        if previous_plan is not None and previous_plan != plan:
            await uow.credits.end_plan_grants(account, usage_period, now, book.version)
            await uow.credits.allocate_plan_grants([(account, usage_period)], book, now)
        usage = await uow.accounts.period_usage(account, usage_period)
        crossings = crossed_thresholds(
            book,
            [PeriodUsage(account, m, usage_period, plan, used) for m, used in usage.items()],
        )
        if crossings:
            quota_events = await uow.outbox.add_quota_alerts(
                [quota_alert(c, now) for c in crossings]
            )
    return PlanChange(account, previous_plan, plan, previous_status, status, changed, quota_events)


async def grant_credits(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    *,
    account: str,
    amount: Decimal,
    source: CreditSource,
    key: str,
    note: str,
    now: datetime,
    expires_at: datetime | None = None,
    priority: int | None = None,
) -> int | None:
    """``add_grant`` in a transaction of its own."""
    async with uow_factory() as uow:
        grant_id = await add_grant(
            uow,
            book,
            account=account,
            amount=amount,
            source=source,
            key=key,
            note=note,
            now=now,
            expires_at=expires_at,
            priority=priority,
        )
        await uow.commit()
    return grant_id


async def add_grant(
    uow: UnitOfWork,
    book: PriceBook,
    *,
    account: str,
    amount: Decimal,
    source: CreditSource,
    key: str,
    note: str,
    now: datetime,
    expires_at: datetime | None = None,
    priority: int | None = None,
) -> int | None:
    """Grant credits (promotional or purchased); ``None`` when ``key`` was granted already.

    The key makes a grant idempotent: an operator re-running a command, or Stripe
    redelivering a purchase, grants once. An unknown account is created on the default plan.
    """
    if amount <= 0:
        raise PermanentError(f"a grant must be positive, not {amount}", reason="invalid_grant")
    if expires_at is not None and expires_at <= now:
        raise PermanentError(
            f"expiry {expires_at.isoformat()} is not in the future", reason="invalid_grant"
        )
    await uow.accounts.create(account, book.default_plan, now)
    return await uow.credits.add_grant(
        account=account,
        source=source,
        amount=amount,
        priority=DEFAULT_GRANT_PRIORITY[source] if priority is None else priority,
        valid_from=now,
        expires_at=expires_at,
        key=f"{source.value}:{key}",
        note=note,
        pricebook_version=book.version,
    )


async def expire_credits(uow_factory: UnitOfWorkFactory, book: PriceBook, now: datetime) -> int:
    """Write expiry entries for every grant past its expiry; return how many expired."""
    total = 0
    while True:
        async with uow_factory() as uow:
            expired = await uow.credits.expire_due(now, book.version)
            await uow.commit()
        total += expired
        if expired == 0:
            return total


def request_id(*parts: str) -> str:
    """A stable id for an operator request made of ``parts``."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
