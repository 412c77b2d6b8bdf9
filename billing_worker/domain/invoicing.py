"""Invoicing: one account's billing period as invoice lines. Pure, ``Decimal`` only.

:func:`build_invoice` turns the plans in force over a period (:class:`PlanSpan`), the
period's usage per meter (:class:`MeterUsage`), the credits burned and any adjustments
into an :class:`InvoiceDraft`; :func:`adjustment_line` prices late usage of a closed
period.

Money
-----
The rule of :mod:`billing_worker.domain.rating`: amounts stay exact through rating, each
line's amount is rounded **once** with :func:`~billing_worker.domain.rating.round_money`,
and the subtotal and total are sums of the rounded lines. ``InvoiceLine.unrounded`` keeps
the amount before that one rounding.

Proration
---------
A plan in force over part of the period is charged, and includes, that part of its terms:
``fraction = span seconds / period seconds`` (microseconds, exactly). The fee of a span is
``price * span / period`` computed with a single division; the included allowance of a
meter is ``sum(included * span) / period`` over the spans, again one division, so a period
split into spans of one plan includes exactly the plan's quantity, and BASIC (1000) for a
third then BIG (10000) for two thirds includes exactly 7000.

A fraction such as 1/3 has no finite decimal expansion. Such a quotient is carried to
:data:`~billing_worker.domain.pricebook.EXACT`'s 200 significant digits (exact whenever it
terminates). For a fee that is only the input of the one rounding, and it rounds as the
exact rational would: the exact fee lies either on a rounding boundary (then the quotient
terminates and is exact) or, for any period shorter than centuries, at least ~1e-40 away
from one, while the error of a 200-digit quotient is below 1e-160. A plan-fee line's
``quantity`` is :func:`prorate`, the fraction rounded to 18 places for display.

A prorated *allowance* is a quantity that rating must subtract exactly, so one with more
than ``MAX_PLACES`` (18) places is rounded **up** to 18 places, in the customer's favour:
the billable quantity is then the exact billable quantity rounded down to 18 places.

Annual plans
------------
A plan with ``interval = "year"`` is billed monthly: each (monthly) period charges
``price / 12``, prorated like any fee and rounded once per line. Twelve rounded twelfths
can differ from the yearly price by a few minor units (100.00 / 12 = 8.33, 12 x 8.33 =
99.96); periods are assumed to be calendar months (the worker's billing period).

Per-dimension prices
--------------------
A meter priced per dimension value (``MeterPrice.dimension``) gets one line per value of
``MeterUsage.by_dimension``, values sorted, each rated with ``price.model_for(value)``. The
meter's allowance and its price's ``free_quantity`` apply **once to the meter**: they are
taken off the dimension values **in sorted order** (the allowance first, then the free
units), each value absorbing as much as it has before the next value is reached. For a sum
or count meter the values must add up to ``quantity``; usage without a breakdown is rated
as a single line with the price's default model. Late usage of such a meter is adjusted
per dimension value (:func:`adjustment_line` refuses one without ``dimension_value``).

Totals
------
``total == subtotal``: no taxes or discounts yet. Without adjustments every line is
non-negative, so the total is too. An adjustment can be negative (a ``max`` or ``latest``
meter whose late events lowered the period's figure, or a volume price crossing into a
cheaper tier), and ``build_invoice`` does not clamp: a negative total means the account is
owed that amount, and settling it (a credit note, a balance) is the caller's business.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from typing import assert_never

from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import (
    AGGREGATIONS_THAT_ADD,
    EXACT,
    MAX_PLACES,
    ZERO,
    Free,
    Graduated,
    Interval,
    Meter,
    MeterPrice,
    Package,
    PerUnit,
    PriceBook,
    PriceModel,
    Tier,
    Volume,
)
from billing_worker.domain.rating import (
    TierCharge,
    billable_quantity,
    minor_unit_places,
    rate_line,
    round_money,
    tier_breakdown,
)

PLAN_FEE = "plan_fee"
USAGE = "usage"
CREDITS = "credits"
ADJUSTMENT = "adjustment"
LINE_KINDS = (PLAN_FEE, USAGE, CREDITS, ADJUSTMENT)

MONTHS_PER_YEAR = 12
"""An annual plan's fee is spread over this many monthly periods."""

_QUOTIENT = Context(
    prec=EXACT.prec,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
"""Divisions (proration) and display rounding: like ``EXACT`` but a quotient that does not
terminate is carried to 200 significant digits instead of raising ``Inexact``."""

_QUANTITY_QUANTUM = Decimal(1).scaleb(-MAX_PLACES)
_DISPLAY_PLACES = 6
_DISPLAY_QUANTUM = Decimal(1).scaleb(-_DISPLAY_PLACES)
_ONE_MICROSECOND = timedelta(microseconds=1)
_MICROSECONDS_PER_DAY = 86_400_000_000


# --- the data ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanSpan:
    """The plan in force over ``[start, end)`` within the period (timezone-aware)."""

    plan: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"plan span bounds must be timezone-aware ({self.plan})")
        if not self.start < self.end:
            raise ValueError(
                f"plan span must end after it starts: {self.plan} {self.start} .. {self.end}"
            )


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's usage in the period, from the ledger."""

    meter: str
    quantity: Decimal
    """The period total (per the meter's aggregation)."""
    entries: int
    """Ledger entries behind it."""
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    by_dimension: Mapping[str, Decimal] = field(default_factory=dict)
    """For meters priced per dimension: the total per dimension value (keys as the price
    book spells them, see :func:`~billing_worker.domain.pricebook.dimension_key`)."""


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line of an invoice, as the customer reads it."""

    kind: str
    """``plan_fee`` | ``usage`` | ``credits`` | ``adjustment``."""
    description: str
    """In words, e.g. ``PLUS plan, 2026-11-01 to 2026-11-13 (12/30 days)`` or
    ``tokens: 1,234,567 used, 1,000,000 included, 234,567 billable``."""
    amount: Decimal
    """Rounded once, to the currency's minor unit."""
    meter: str | None = None
    dimension_value: str | None = None
    quantity: Decimal = ZERO
    """Usage lines: the usage; plan fees: the fraction of the period; credits: the
    credits; adjustments: the corrected period total."""
    included: Decimal = ZERO
    free_quantity: Decimal = ZERO
    billable: Decimal = ZERO
    """The units the price applies to (0 for a meter without a price)."""
    price: str = ""
    """The price applied, in words: ``0.50 per website``, ``graduated per token: first
    1,000 at 0.01, then 0.005``."""
    tiers: tuple[TierCharge, ...] = ()
    entries: int = 0
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    refers_to: BillingPeriod | None = None
    """Adjustments: the closed period they correct."""
    unrounded: Decimal = ZERO
    """The exact amount before the one rounding."""


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    """An account's period as invoice lines, not yet issued."""

    account: str
    period: BillingPeriod
    currency: str
    plan: str
    """The plan in force at the end of the period."""
    pricebook_version: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    """Sum of the line amounts."""
    credits_applied: Decimal
    """Credits burned in the period: informational, credits are prepaid, not money."""
    total: Decimal
    """``== subtotal`` (no taxes or discounts yet). Non-negative unless an adjustment is
    negative; a negative total is owed to the account (see the module docstring)."""


# --- proration -----------------------------------------------------------------------------


def _micros(start: datetime, end: datetime) -> int:
    return (end - start) // _ONE_MICROSECOND


def _quotient(numerator: Decimal, denominator: int) -> Decimal:
    """``numerator / denominator``: exact when it terminates, else 200 significant digits."""
    with localcontext(_QUOTIENT):
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
    fraction = _quotient(Decimal(_micros(span.start, span.end)), _micros(period.start, period.end))
    with localcontext(_QUOTIENT):
        rounded = fraction.quantize(_QUANTITY_QUANTUM)
    return fraction if rounded == fraction else rounded


def _check_spans(spans: Sequence[PlanSpan], period: BillingPeriod) -> None:
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


def _allowance(
    book: PriceBook, meter: str, spans: Sequence[PlanSpan], period: BillingPeriod
) -> Decimal:
    """sum(included * span) / period in one division; rounded up to 18 places if longer."""
    with localcontext(EXACT):
        numerator = ZERO
        for span in spans:
            terms = book.plan(span.plan).limit_of(meter)
            if terms is not None and terms.included:
                numerator += terms.included * _micros(span.start, span.end)
    allowance = _quotient(numerator, _micros(period.start, period.end))
    with localcontext(_QUOTIENT):
        rounded = allowance.quantize(_QUANTITY_QUANTUM, rounding=ROUND_CEILING)
    return allowance if rounded == allowance else rounded


# --- build_invoice -------------------------------------------------------------------------


def build_invoice(
    book: PriceBook,
    *,
    account: str,
    period: BillingPeriod,
    spans: Sequence[PlanSpan],
    usage: Sequence[MeterUsage],
    credits_used: Decimal = ZERO,
    adjustments: Sequence[InvoiceLine] = (),
    cycle_period: BillingPeriod | None = None,
    cycle_months: int = 1,
) -> InvoiceDraft:
    """The invoice of ``account`` for ``period``: plan fees, usage, credits, adjustments.

    ``cycle_period`` is the whole billing cycle ``period`` is part of, ``cycle_months`` its
    length in months (a calendar month by default: ``period`` itself, 1). Fees and
    allowances are prorated against it: the stub period an account has when it moves onto
    its subscription's cycle pays for the part of the cycle it covers. A monthly fee is
    charged ``cycle_months`` times per cycle, a yearly one ``cycle_months``/12 of a year.

    Lines, in order: one ``plan_fee`` line per span (a $0 plan still has its 0.00 line:
    an invoice always names its plan); one ``usage`` line per meter with usage (meters
    sorted by name; one per dimension value for per-dimension prices, values sorted); a
    ``credits`` line (amount 0) when ``credits_used > 0``; ``adjustments`` as given.

    A meter without a price in the book (an allowance-only meter, a credit-priced one)
    gets a 0.00 line when it has usage, so the usage shows; a meter without usage (no
    entries and a quantity of 0) gets no line.

    ``ValueError`` when the spans do not cover the period in order without gaps or
    overlaps, a plan's currency is not the book's, a usage names an unknown meter or a
    meter twice, a quantity is negative, a sum meter's ``by_dimension`` does not add up to
    its quantity, ``credits_used`` is negative, or an adjustment is not an ``adjustment``
    line of an earlier period rounded to the currency's minor unit.
    """
    currency = book.currency
    _check_spans(spans, period)
    basis = period if cycle_period is None else cycle_period
    if basis.start > period.start or basis.end < period.end or cycle_months < 1:
        raise ValueError(
            f"the cycle {basis.start} .. {basis.end} ({cycle_months} months) does not "
            f"contain the period {period.start} .. {period.end}"
        )
    for span in spans:
        plan = book.plan(span.plan)
        if plan.currency != currency:
            raise ValueError(
                f"plan {span.plan} is priced in {plan.currency}, the price book in {currency}: "
                "an invoice has one currency"
            )
    if not credits_used.is_finite() or credits_used < 0:
        raise ValueError(f"credits_used must be a non-negative number, not {credits_used}")
    by_meter = _usage_by_meter(book, usage)
    for line in adjustments:
        _check_adjustment(line, period, currency)

    lines = [_plan_fee_line(book, span, basis, cycle_months, currency) for span in spans]
    for name in sorted(by_meter):
        meter_usage = by_meter[name]
        if meter_usage.entries == 0 and meter_usage.quantity == 0:
            continue
        allowance = _allowance(book, name, spans, basis)
        lines.extend(_usage_lines(book, meter_usage, allowance, currency))
    if credits_used > 0:
        lines.append(
            InvoiceLine(
                kind=CREDITS,
                description=f"{_quantity_text(credits_used)} credits applied",
                amount=round_money(ZERO, currency),
                quantity=credits_used,
                price="prepaid credits, no charge on this invoice",
            )
        )
    lines.extend(adjustments)

    with localcontext(EXACT):
        subtotal = sum((line.amount for line in lines), round_money(ZERO, currency))
    return InvoiceDraft(
        account=account,
        period=period,
        currency=currency,
        plan=spans[-1].plan,
        pricebook_version=book.version,
        lines=tuple(lines),
        subtotal=subtotal,
        credits_applied=credits_used,
        total=subtotal,
    )


def _usage_by_meter(book: PriceBook, usage: Sequence[MeterUsage]) -> dict[str, MeterUsage]:
    by_meter: dict[str, MeterUsage] = {}
    for item in usage:
        if item.meter not in book.meters:
            raise ValueError(
                f"usage of meter {item.meter!r}, which price book {book.version} does not define"
            )
        if item.meter in by_meter:
            raise ValueError(f"usage of meter {item.meter!r} given twice")
        _check_quantity(item.quantity, f"{item.meter} quantity")
        if item.entries < 0:
            raise ValueError(f"{item.meter} entries must not be negative, got {item.entries}")
        for value, quantity in item.by_dimension.items():
            _check_quantity(quantity, f"{item.meter} quantity for {value!r}")
        by_meter[item.meter] = item
    return by_meter


def _check_quantity(quantity: Decimal, what: str) -> None:
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(f"{what} must be a non-negative number, not {quantity}")


def _check_adjustment(line: InvoiceLine, period: BillingPeriod, currency: str) -> None:
    if line.kind != ADJUSTMENT:
        raise ValueError(f"adjustments must be {ADJUSTMENT!r} lines, not {line.kind!r}")
    if line.refers_to is None or line.refers_to.end > period.start:
        raise ValueError(
            f"an adjustment must refer to a period closed before {period.start}, "
            f"not {line.refers_to}"
        )
    if round_money(line.amount, currency) != line.amount:
        raise ValueError(
            f"adjustment amount {line.amount} is not rounded to the {currency} minor unit"
        )


def _plan_fee_line(
    book: PriceBook, span: PlanSpan, period: BillingPeriod, months: int, currency: str
) -> InvoiceLine:
    """``period`` is the whole cycle (``months`` long) the span is prorated against."""
    plan = book.plan(span.plan)
    span_us, period_us = _micros(span.start, span.end), _micros(period.start, period.end)
    yearly = plan.interval is Interval.YEAR
    with localcontext(EXACT):
        numerator = plan.price * span_us * months
    exact = _quotient(numerator, period_us * (MONTHS_PER_YEAR if yearly else 1))
    dates = f"{_moment_text(span.start)} to {_moment_text(span.end)}"
    description = f"{span.plan} plan, {dates}"
    if span_us != period_us:
        description += f" ({_days_text(span_us)}/{_days_text(period_us)} days)"
    if yearly and months != MONTHS_PER_YEAR:
        description += f", {months}/{MONTHS_PER_YEAR} of the yearly fee"
        every = "monthly" if months == 1 else f"every {months} months"
        price = f"{_money_text(plan.price, currency)} per year, billed {every}"
    elif yearly:
        price = f"{_money_text(plan.price, currency)} per year"
    elif months != 1:
        description += f", {months} months"
        price = f"{_money_text(plan.price, currency)} per month, billed every {months} months"
    else:
        price = f"{_money_text(plan.price, currency)} per month"
    return InvoiceLine(
        kind=PLAN_FEE,
        description=description,
        amount=round_money(exact, currency),
        quantity=prorate(span, period),
        price=price,
        unrounded=exact,
    )


def _usage_lines(
    book: PriceBook, usage: MeterUsage, allowance: Decimal, currency: str
) -> list[InvoiceLine]:
    meter = book.meters[usage.meter]
    price = book.prices.get(usage.meter)
    if price is None:
        shown = f"{_quantity_text(usage.quantity)} used"
        if allowance:
            shown += f", {_quantity_text(allowance)} included"
        words = _unpriced_text(book, meter)
        return [
            InvoiceLine(
                kind=USAGE,
                description=f"{meter.name}: {shown} ({words})",
                amount=round_money(ZERO, currency),
                meter=meter.name,
                quantity=usage.quantity,
                included=allowance,
                price=words,
                entries=usage.entries,
                first_entry_id=usage.first_entry_id,
                last_entry_id=usage.last_entry_id,
            )
        ]
    if price.dimension is None or not usage.by_dimension:
        rated = rate_line(price, usage.quantity, included=allowance)
        return [
            _rated_line(
                meter,
                price,
                usage,
                _Rated(
                    model=price.model,
                    dimension_value=None,
                    quantity=usage.quantity,
                    included=rated.included,
                    free=rated.free_quantity,
                    billable=rated.billable,
                    breakdown=rated.breakdown,
                    exact=rated.amount,
                ),
                currency,
            )
        ]
    if meter.aggregation in AGGREGATIONS_THAT_ADD:
        with localcontext(EXACT):
            total = sum(usage.by_dimension.values(), ZERO)
        if total != usage.quantity:
            raise ValueError(
                f"{meter.name}: the quantities by {price.dimension} add up to {total}, "
                f"not to the period's {usage.quantity}"
            )
    lines = []
    allowance_left, free_left = allowance, price.free_quantity
    for value in sorted(usage.by_dimension):
        quantity = usage.by_dimension[value]
        with localcontext(EXACT):
            included = min(allowance_left, quantity)
            allowance_left -= included
            free = min(free_left, quantity - included)
            free_left -= free
        model = price.model_for(value)
        billable = billable_quantity(quantity, included=included, free_quantity=free)
        breakdown = tier_breakdown(model, billable)
        with localcontext(EXACT):
            exact = sum((charge.amount for charge in breakdown), ZERO)
        rated_value = _Rated(model, value, quantity, included, free, billable, breakdown, exact)
        lines.append(_rated_line(meter, price, usage, rated_value, currency))
    return lines


@dataclass(frozen=True, slots=True)
class _Rated:
    """One usage line's figures, exact."""

    model: PriceModel
    dimension_value: str | None
    quantity: Decimal
    included: Decimal
    free: Decimal
    billable: Decimal
    breakdown: tuple[TierCharge, ...]
    exact: Decimal


def _rated_line(
    meter: Meter, price: MeterPrice, usage: MeterUsage, rated: _Rated, currency: str
) -> InvoiceLine:
    label = meter.name
    if rated.dimension_value is not None:
        label += f" ({price.dimension} {rated.dimension_value})"
    figures = _usage_text(rated.quantity, rated.included, rated.free, rated.billable)
    return InvoiceLine(
        kind=USAGE,
        description=f"{label}: {figures}",
        amount=round_money(rated.exact, currency),
        meter=meter.name,
        dimension_value=rated.dimension_value,
        quantity=rated.quantity,
        included=rated.included,
        free_quantity=rated.free,
        billable=rated.billable,
        price=_price_text(rated.model, price.free_quantity, meter.unit, currency),
        tiers=rated.breakdown,
        entries=usage.entries,
        first_entry_id=usage.first_entry_id,
        last_entry_id=usage.last_entry_id,
        unrounded=rated.exact,
    )


# --- adjustments ---------------------------------------------------------------------------


def adjustment_line(
    book: PriceBook,
    *,
    meter: str,
    refers_to: BillingPeriod,
    included: Decimal,
    invoiced_quantity: Decimal,
    new_quantity: Decimal,
    invoiced_amount: Decimal,
    currency: str,
    entries: int,
    first_entry_id: int | None,
    last_entry_id: int | None,
    dimension_value: str | None = None,
    free_quantity: Decimal | None = None,
) -> InvoiceLine:
    """Late usage of a closed period: what its line should have cost, less what it did.

    ``amount = round_money(rate at new_quantity after the allowance) - invoiced_amount``:
    the corrected line rounded once, minus the (rounded) amount already invoiced, so the
    two invoices together charge exactly what one correct invoice would have. Negative
    when the period's figure went down (a ``max`` or ``latest`` meter) or a volume price
    crossed into a cheaper tier.

    ``included`` is the allowance the closed invoice applied to the line. A per-dimension
    line names its ``dimension_value`` (the model is ``price.model_for`` it) and the free
    units the closed line was given (``free_quantity``; ``None`` means the price's
    ``free_quantity``). A meter without a price rates at 0. The line's ``quantity`` is
    the corrected period total (``new_quantity``), ``billable`` and ``tiers`` its rating.

    ``ValueError`` for an unknown meter, a negative quantity, an ``invoiced_amount`` not
    rounded to ``currency``'s minor unit, or a meter priced per dimension without a
    ``dimension_value``: its late usage is priced per value (the meter's total under one
    model would be wrong; events without the field are keyed ``"null"``).
    """
    if meter not in book.meters:
        raise ValueError(f"meter {meter!r} is not defined in price book {book.version}")
    for value, what in (
        (included, "included"),
        (invoiced_quantity, "invoiced_quantity"),
        (new_quantity, "new_quantity"),
    ):
        _check_quantity(value, what)
    if not invoiced_amount.is_finite() or round_money(invoiced_amount, currency) != (
        invoiced_amount
    ):
        raise ValueError(
            f"invoiced_amount {invoiced_amount} is not rounded to the {currency} minor unit"
        )
    unit = book.meters[meter].unit
    price = book.prices.get(meter)
    breakdown: tuple[TierCharge, ...] = ()
    if price is None:
        free, billable = ZERO, ZERO
        words = _unpriced_text(book, book.meters[meter])
    else:
        if price.dimension is not None and dimension_value is None:
            raise ValueError(
                f"meter {meter!r} is priced per {price.dimension}: its late usage needs the "
                f"{price.dimension} it is for (dimension_value)"
            )
        free = price.free_quantity if free_quantity is None else free_quantity
        _check_quantity(free, "free_quantity")
        model = price.model_for(dimension_value)
        billable = billable_quantity(new_quantity, included=included, free_quantity=free)
        breakdown = tier_breakdown(model, billable)
        words = _price_text(model, price.free_quantity, unit, currency)
    with localcontext(EXACT):
        corrected = sum((charge.amount for charge in breakdown), ZERO)
        amount = round_money(corrected, currency) - invoiced_amount
        unrounded = corrected - invoiced_amount
        late = new_quantity - invoiced_quantity
    amount = round_money(amount, currency)  # same value, in the minor unit's places
    label = meter
    if price is not None and price.dimension is not None:
        label += f" ({price.dimension} {dimension_value})"
    description = (
        f"late usage of {label} for {_period_text(refers_to)}: "
        f"{_quantity_text(new_quantity)} used ({_change_text(late, invoiced_quantity)} invoiced)"
    )
    if included:
        description += f", {_quantity_text(included)} included"
    if free:
        description += f", {_quantity_text(free)} free"
    if price is not None:
        description += f", {_quantity_text(billable)} billable"
    description += (
        f"; {_money_text(round_money(corrected, currency), currency)} less "
        f"{_money_text(invoiced_amount, currency)} already invoiced"
    )
    return InvoiceLine(
        kind=ADJUSTMENT,
        description=description,
        amount=amount,
        meter=meter,
        dimension_value=dimension_value,
        quantity=new_quantity,
        included=included,
        free_quantity=free,
        billable=billable,
        price=words,
        tiers=breakdown,
        entries=entries,
        first_entry_id=first_entry_id,
        last_entry_id=last_entry_id,
        refers_to=refers_to,
        unrounded=unrounded,
    )


# --- words ---------------------------------------------------------------------------------


def _quantity_text(value: Decimal) -> str:
    """``1,234,567``; ``2.5``; more than 6 places shown rounded to 6 (exact in the fields)."""
    with localcontext(_QUOTIENT):
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -_DISPLAY_PLACES:
            value = value.quantize(_DISPLAY_QUANTUM)
        text = f"{value:,f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _money_text(value: Decimal, currency: str) -> str:
    """A price or amount with at least the currency's minor-unit places: ``0.50``,
    ``0.002``, ``10,000.00``."""
    places = minor_unit_places(currency)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -places:
        with localcontext(_QUOTIENT):
            value = value.quantize(Decimal(1).scaleb(-places))
    return f"{value:,f}"


def _plural(unit: str, count: Decimal) -> str:
    return unit if count == 1 or unit.endswith("s") else f"{unit}s"


def _tier_price(tier: Tier, currency: str) -> str:
    text = _money_text(tier.unit_price, currency)
    if tier.flat_fee:
        text += f" + {_money_text(tier.flat_fee, currency)} flat"
    return text


def _graduated_text(tiers: Sequence[Tier], currency: str) -> str:
    parts = []
    lower = ZERO
    for index, tier in enumerate(tiers):
        at = _tier_price(tier, currency)
        if tier.up_to is None:
            parts.append(f"then {at}" if index else f"all at {at}")
            break
        with localcontext(EXACT):
            width = tier.up_to - lower
        parts.append(f"{'next' if index else 'first'} {_quantity_text(width)} at {at}")
        lower = tier.up_to
    return ", ".join(parts)


def _volume_text(tiers: Sequence[Tier], currency: str) -> str:
    parts = []
    lower: Decimal | None = None
    for tier in tiers:
        at = _tier_price(tier, currency)
        if tier.up_to is None:
            above = f"above {_quantity_text(lower)}" if lower is not None else "any total"
            parts.append(f"{above} at {at}")
            break
        parts.append(f"up to {_quantity_text(tier.up_to)} at {at}")
        lower = tier.up_to
    return ", ".join(parts)


def _price_text(model: PriceModel, free_quantity: Decimal, unit: str, currency: str) -> str:
    """The price model in words (``free_quantity`` is the price's, per period)."""
    match model:
        case PerUnit(unit_price=unit_price):
            text = f"{_money_text(unit_price, currency)} per {unit}"
        case Graduated(tiers=tiers):
            text = f"graduated per {unit}: {_graduated_text(tiers, currency)}"
        case Volume(tiers=tiers):
            text = (
                f"volume per {unit}, every unit at the tier the total reaches: "
                f"{_volume_text(tiers, currency)}"
            )
        case Package(package_size=size, package_price=package_price):
            text = (
                f"package: {_money_text(package_price, currency)} per "
                f"{_quantity_text(size)} {_plural(unit, size)}, a started package in full"
            )
        case Free():
            text = "free"
        case _:
            assert_never(model)
    if free_quantity:
        text += f", after {_quantity_text(free_quantity)} free per period"
    return text


def _unpriced_text(book: PriceBook, meter: Meter) -> str:
    cost = book.credit_costs.get(meter.name)
    if cost is not None:
        return f"paid with credits, {_quantity_text(cost)} credits per {meter.unit}"
    return "no usage charge"


def _usage_text(quantity: Decimal, included: Decimal, free: Decimal, billable: Decimal) -> str:
    parts = [f"{_quantity_text(quantity)} used"]
    if included:
        parts.append(f"{_quantity_text(included)} included")
    if free:
        parts.append(f"{_quantity_text(free)} free")
    parts.append(f"{_quantity_text(billable)} billable")
    return ", ".join(parts)


def _change_text(late: Decimal, invoiced_quantity: Decimal) -> str:
    invoiced = _quantity_text(invoiced_quantity)
    if late > 0:
        return f"{_quantity_text(late)} more than the {invoiced}"
    if late < 0:
        return f"{_quantity_text(-late)} less than the {invoiced}"
    return f"the same as the {invoiced}"


def _moment_text(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    if utc.time() == datetime.min.time():
        return f"{utc:%Y-%m-%d}"
    if utc.second or utc.microsecond:
        return f"{utc:%Y-%m-%d %H:%M:%S} UTC"
    return f"{utc:%Y-%m-%d %H:%M} UTC"


def _days_text(micros: int) -> str:
    days = _quotient(Decimal(micros), _MICROSECONDS_PER_DAY)
    if days == days.to_integral_value():
        return str(int(days))
    with localcontext(_QUOTIENT):
        return _quantity_text(days.quantize(Decimal("0.01")))


def _period_text(period: BillingPeriod) -> str:
    if calendar_month_of(period.start) == period:
        return f"{period.start.astimezone(UTC):%Y-%m}"
    return f"{_moment_text(period.start)} to {_moment_text(period.end)}"


@dataclass(frozen=True, slots=True)
class LateUsage:
    """Usage of an invoiced period recorded after its invoice (or its last adjustment)."""

    period: BillingPeriod
    meter: str
    quantity: Decimal
    invoiced_quantity: Decimal
    included: Decimal
    invoiced_amount: Decimal
    entries: int
    first_entry_id: int
    last_entry_id: int
    dimension_value: str | None = None
    free_quantity: Decimal | None = None


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """An invoice row."""

    invoice_id: str
    account: str
    period: BillingPeriod
    status: str
    plan: str
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    pricebook_version: str
    last_entry_id: int | None
    closed_at: datetime
    stripe_invoice_id: str | None
    stripe_sync_error: str | None
    stripe_sync_attempts: int
