"""The plan-fee line of an invoice: a plan span's share of the cycle's fee, in words, and
who bills it."""

from __future__ import annotations

from decimal import localcontext

from billing_worker.domain.invoice_model import (
    BILLED_BY_SUBSCRIPTION,
    MONTHS_PER_YEAR,
    PLAN_FEE,
    InvoiceLine,
    PlanSpan,
)
from billing_worker.domain.invoice_words import days_text, moment_text, money_text
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import EXACT, Interval, PriceBook
from billing_worker.domain.proration import micros, prorate, quotient
from billing_worker.domain.rating import round_money


def plan_fee_line(
    book: PriceBook, span: PlanSpan, period: BillingPeriod, months: int, currency: str
) -> InvoiceLine:
    """``period`` is the whole cycle (``months`` long) the span is prorated against."""
    plan = book.plan(span.plan)
    span_us, period_us = micros(span.start, span.end), micros(period.start, period.end)
    yearly = plan.interval is Interval.YEAR
    with localcontext(EXACT):
        numerator = plan.price * span_us * months
    exact = quotient(numerator, period_us * (MONTHS_PER_YEAR if yearly else 1))
    dates = f"{moment_text(span.start)} to {moment_text(span.end)}"
    description = f"{span.plan} plan, {dates}"
    if span_us != period_us:
        description += f" ({days_text(span_us)}/{days_text(period_us)} days)"
    if yearly and months != MONTHS_PER_YEAR:
        description += f", {months}/{MONTHS_PER_YEAR} of the yearly fee"
        every = "monthly" if months == 1 else f"every {months} months"
        price = f"{money_text(plan.price, currency)} per year, billed {every}"
    elif yearly:
        price = f"{money_text(plan.price, currency)} per year"
    elif months != 1:
        description += f", {months} months"
        price = f"{money_text(plan.price, currency)} per month, billed every {months} months"
    else:
        price = f"{money_text(plan.price, currency)} per month"
    if span.billed_by == BILLED_BY_SUBSCRIPTION:
        description += f", billed by Stripe subscription {span.subscription}"
    return InvoiceLine(
        kind=PLAN_FEE,
        description=description,
        amount=round_money(exact, currency),
        quantity=prorate(span, period),
        price=price,
        unrounded=exact,
        billed_by=span.billed_by,
        stripe_subscription_id=span.subscription,
    )
