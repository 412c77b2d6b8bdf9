"""Answer a quota check from the stored totals: may this account use that much more?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.quotas import QuotaAnswer, answer_quota_check
from schemas.quota_check import QuotaCheckReply, QuotaCheckRequest


class UnknownMeter(PermanentError):
    """The request names a meter the price book does not define."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_meter")


@dataclass(frozen=True, slots=True)
class QuotaCheckResult:
    """The answer and the period it is about."""

    answer: QuotaAnswer
    period: BillingPeriod


class UsageReader(Protocol):
    """Reads what a quota check needs in one round trip, outside any transaction."""

    async def plan_and_usage(
        self, account: str, meter: str, now: datetime
    ) -> tuple[str | None, Decimal, BillingPeriod]:
        """The account's plan (None if never seen), its usage of ``meter`` in its billing
        period containing ``now``, and that period."""
        ...


async def check_quota(
    reader: UsageReader,
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
    plan, used, period = await reader.plan_and_usage(account, meter, now)
    answer = answer_quota_check(book, plan or book.default_plan, meter, used, quantity)
    return QuotaCheckResult(answer=answer, period=period)


async def answer_request(
    reader: UsageReader, book: PriceBook, request: QuotaCheckRequest, now: datetime
) -> QuotaCheckReply:
    """The reply to a quota check, the same over AMQP and HTTP."""
    result = await check_quota(
        reader,
        book,
        account=request.account,
        meter=request.meter,
        quantity=request.quantity,
        now=now,
    )
    answer = result.answer
    return QuotaCheckReply(
        account=request.account,
        meter=request.meter,
        allowed=answer.allowed,
        used=answer.used,
        limit=answer.limit,
        remaining=answer.remaining,
        period_end=result.period.end,
    )
