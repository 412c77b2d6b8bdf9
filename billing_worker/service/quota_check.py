"""Answer a quota check from the stored totals: may this account use that much more?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.quotas import QuotaAnswer, answer_quota_check
from billing_worker.service.ports import UnitOfWorkFactory


class UnknownMeter(PermanentError):
    """The request names a meter the price book does not define."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_meter")


@dataclass(frozen=True, slots=True)
class QuotaCheckResult:
    """The answer and the period it is about."""

    answer: QuotaAnswer
    period: BillingPeriod


async def check_quota(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    *,
    account: str,
    meter: str,
    quantity: Decimal,
    now: datetime,
) -> QuotaCheckResult:
    """The account's usage of ``meter`` this period against its plan's limit.

    An account never seen is on the default plan with nothing used.
    """
    if meter not in book.meters:
        known = ", ".join(sorted(book.meters))
        raise UnknownMeter(f"no meter {meter!r} in price book {book.version} (known: {known})")
    period = calendar_month_of(now)
    async with uow_factory() as uow:
        stored = await uow.accounts.get(account)
        plan = stored.plan if stored is not None else book.default_plan
        used = await uow.accounts.meter_usage(account, meter, period) if stored else Decimal(0)
    answer = answer_quota_check(book, plan, meter, used, quantity)
    return QuotaCheckResult(answer=answer, period=period)
