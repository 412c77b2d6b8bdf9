"""Quota thresholds: which alert levels a batch moved an account's period usage across."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, localcontext

from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import EXACT, Enforcement, PriceBook

HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    """An account's usage of one meter in one period, after a change.

    ``previous`` is the usage before the change when it is known (sums and counts), or
    ``None`` (max, latest, unique counts; a plan change), in which case every level at or
    below ``used`` is a candidate and the store keeps only the ones never announced.
    """

    account: str
    meter: str
    period: BillingPeriod
    plan: str
    used: Decimal
    previous: Decimal | None = None


@dataclass(frozen=True, slots=True, order=True)
class ThresholdCrossing:
    """Usage reached ``threshold`` percent of the plan's limit on a meter in a period."""

    account: str
    meter: str
    period: BillingPeriod
    threshold: int
    plan: str
    used: Decimal
    limit: Decimal
    enforcement: Enforcement

    @property
    def event_type(self) -> str:
        """``quota.exceeded`` from 100% up, ``quota.warning`` below."""
        return "quota.exceeded" if self.threshold >= 100 else "quota.warning"


def level_of(limit: Decimal, threshold: int) -> Decimal:
    """The usage at which ``threshold`` percent of ``limit`` is reached (exact)."""
    return limit * threshold / HUNDRED


def crossed_thresholds(book: PriceBook, usages: Iterable[PeriodUsage]) -> list[ThresholdCrossing]:
    """Every (account, meter, period, threshold) the usages reached, sorted.

    A level is crossed when usage is at or above it now and was below it before (or
    "before" is unknown). The store writes each crossing at most once per period, ever,
    so crashes, redeliveries and replicas can't announce a threshold twice.
    """
    with localcontext(EXACT):
        return sorted(_crossings(book, usages))


def _crossings(book: PriceBook, usages: Iterable[PeriodUsage]) -> list[ThresholdCrossing]:
    crossings = []
    for usage in usages:
        plan = book.plan(usage.plan)
        terms = plan.limit_of(usage.meter)
        if terms is None or terms.limit is None:
            continue
        for threshold in plan.thresholds:
            level = level_of(terms.limit, threshold)
            if usage.used >= level and (usage.previous is None or usage.previous < level):
                crossings.append(
                    ThresholdCrossing(
                        account=usage.account,
                        meter=usage.meter,
                        period=usage.period,
                        threshold=threshold,
                        plan=usage.plan,
                        used=usage.used,
                        limit=terms.limit,
                        enforcement=terms.enforcement,
                    )
                )
    return crossings


@dataclass(frozen=True, slots=True)
class QuotaAnswer:
    """The quota check's answer for one request."""

    allowed: bool
    used: Decimal
    limit: Decimal | None
    remaining: Decimal | None


def answer_quota_check(
    book: PriceBook, plan_name: str, meter: str, used: Decimal, quantity: Decimal
) -> QuotaAnswer:
    """May ``quantity`` more be used? Hard limits refuse past the limit; soft ones allow.

    ``remaining`` never goes below zero; ``limit`` and ``remaining`` are ``None`` when the
    plan sets no limit on the meter (always allowed).
    """
    terms = book.plan(plan_name).limit_of(meter)
    if terms is None or terms.limit is None:
        return QuotaAnswer(allowed=True, used=used, limit=None, remaining=None)
    remaining = max(terms.limit - used, Decimal(0))
    allowed = terms.enforcement is Enforcement.SOFT or used + quantity <= terms.limit
    return QuotaAnswer(allowed=allowed, used=used, limit=terms.limit, remaining=remaining)
