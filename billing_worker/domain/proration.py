"""Proration: which share of a billing cycle a plan span covers, exactly, in one division."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)

from billing_worker.domain.invoice_model import PlanSpan
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import (
    EXACT,
    MAX_PLACES,
    ZERO,
    PriceBook,
)

QUOTIENT = Context(
    prec=EXACT.prec,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
"""Divisions (proration) and display rounding: like ``EXACT`` but a quotient that does not
terminate is carried to 200 significant digits instead of raising ``Inexact``."""


QUANTITY_QUANTUM = Decimal(1).scaleb(-MAX_PLACES)
ONE_MICROSECOND = timedelta(microseconds=1)


def micros(start: datetime, end: datetime) -> int:
    return (end - start) // ONE_MICROSECOND


def quotient(numerator: Decimal, denominator: int) -> Decimal:
    """``numerator / denominator``: exact when it terminates, else 200 significant digits."""
    with localcontext(QUOTIENT):
        return numerator / Decimal(denominator)


def prorate(span: PlanSpan, period: BillingPeriod) -> Decimal:
    """The fraction of ``period`` that ``span`` covers: span seconds / period seconds.

    Counted in microseconds, exact whenever the quotient has at most 18 places (a half, a
    quarter); otherwise (a third) rounded half-even to 18 places, the precision of any
    quantity. It is what a plan-fee line shows as its quantity; fees and allowances are
    not computed from it but with one division each (see the module docstring), so this
    rounding never reaches money. ``ValueError`` unless the span lies within the period.
    """
    if span.start < period.start or span.end > period.end:
        raise ValueError(
            f"plan span {span.plan} {span.start} .. {span.end} is not within the period "
            f"{period.start} .. {period.end}"
        )
    fraction = quotient(Decimal(micros(span.start, span.end)), micros(period.start, period.end))
    with localcontext(QUOTIENT):
        rounded = fraction.quantize(QUANTITY_QUANTUM)
    return fraction if rounded == fraction else rounded


def check_spans(spans: Sequence[PlanSpan], period: BillingPeriod) -> None:
    """The spans cover the period in order, without gaps or overlaps."""
    if not spans:
        raise ValueError("an invoice needs the plan in force: no plan spans given")
    if spans[0].start != period.start:
        raise ValueError(
            f"the first plan span starts at {spans[0].start}, not at the period start "
            f"{period.start}"
        )
    for before, after in itertools.pairwise(spans):
        if after.start < before.end:
            raise ValueError(
                f"plan spans overlap or are out of order: {before.plan} ends at {before.end}, "
                f"{after.plan} starts at {after.start}"
            )
        if after.start > before.end:
            raise ValueError(
                f"gap between plan spans: {before.plan} ends at {before.end}, "
                f"{after.plan} starts at {after.start}"
            )
    if spans[-1].end != period.end:
        raise ValueError(
            f"the last plan span ends at {spans[-1].end}, not at the period end {period.end}"
        )


def prorated_allowance(
    book: PriceBook, meter: str, spans: Sequence[PlanSpan], period: BillingPeriod
) -> Decimal:
    """sum(included * span) / period in one division; rounded up to 18 places if longer."""
    with localcontext(EXACT):
        numerator = ZERO
        for span in spans:
            terms = book.plan(span.plan).limit_of(meter)
            if terms is not None and terms.included:
                numerator += terms.included * micros(span.start, span.end)
    allowance = quotient(numerator, micros(period.start, period.end))
    with localcontext(QUOTIENT):
        rounded = allowance.quantize(QUANTITY_QUANTUM, rounding=ROUND_CEILING)
    return allowance if rounded == allowance else rounded
