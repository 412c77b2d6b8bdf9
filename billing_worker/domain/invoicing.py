"""Invoicing: one account's billing period as invoice lines. Pure, ``Decimal`` only.

:func:`build_invoice` turns the plans in force over a period (:class:`PlanSpan`), the
period's usage per meter (:class:`MeterUsage`), the credits burned and any adjustments
into an :class:`InvoiceDraft`. Around it: ``invoice_model`` (the data), ``proration``
(shares of a cycle), ``invoice_words`` (lines in words) and ``invoice_adjustments``
(:func:`adjustment_line`, late usage of a closed period). The rules, for all of them:

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

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import (
    Decimal,
    localcontext,
)

from billing_worker.domain.invoice_model import (
    ADJUSTMENT,
    CREDITS,
    NO_CREDITS,
    USAGE,
    CreditUse,
    InvoiceDraft,
    InvoiceLine,
    MeterUsage,
    PlanSpan,
    check_quantity,
)
from billing_worker.domain.invoice_words import (
    money_text,
    price_text,
    quantity_text,
    unpriced_text,
    usage_text,
)
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.plan_fee import plan_fee_line
from billing_worker.domain.pricebook import (
    AGGREGATIONS_THAT_ADD,
    EXACT,
    ZERO,
    DimensionValue,
    Meter,
    MeterPrice,
    PriceBook,
    PriceModel,
)
from billing_worker.domain.proration import (
    check_spans,
    prorated_allowance,
)
from billing_worker.domain.rating import (
    TierCharge,
    billable_quantity,
    rate_line,
    round_money,
    tier_breakdown,
)


def build_invoice(
    book: PriceBook,
    *,
    account: str,
    period: BillingPeriod,
    spans: Sequence[PlanSpan],
    usage: Sequence[MeterUsage],
    credit_use: CreditUse = NO_CREDITS,
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
    ``credits`` line (amount 0) for the credits grants paid, when any; a ``credits`` line
    for the credits no grant covered, when any, charged at the price book's
    ``credit_shortfall_price`` (0 without one); ``adjustments`` as given.

    A meter without a price in the book (an allowance-only meter, a credit-priced one)
    gets a 0.00 line when it has usage, so the usage shows; a meter without usage (no
    entries and a quantity of 0) gets no line.

    ``ValueError`` when the spans do not cover the period in order without gaps or
    overlaps, a plan's currency is not the book's, a usage names an unknown meter or a
    meter twice, a quantity is negative, a sum meter's ``by_dimension`` does not add up to
    its quantity, a credit figure is negative, or an adjustment is not an ``adjustment``
    line of an earlier period rounded to the currency's minor unit.
    """
    currency = book.currency
    check_spans(spans, period)
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
    check_quantity(credit_use.applied, "credits applied")
    check_quantity(credit_use.shortfall, "credit shortfall")
    by_meter = _usage_by_meter(book, usage)
    for line in adjustments:
        _check_adjustment(line, period, currency)

    lines = [plan_fee_line(book, span, basis, cycle_months, currency) for span in spans]
    for name in sorted(by_meter):
        meter_usage = by_meter[name]
        if meter_usage.entries == 0 and meter_usage.quantity == 0:
            continue
        allowance = prorated_allowance(book, name, spans, basis)
        lines.extend(_usage_lines(book, meter_usage, allowance, currency))
    lines.extend(_credit_lines(book, credit_use, currency))
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
        credits_applied=credit_use.applied,
        credits_shortfall=credit_use.shortfall,
        total=subtotal,
    )


def _credit_lines(book: PriceBook, use: CreditUse, currency: str) -> list[InvoiceLine]:
    """What grants paid (no charge: credits are prepaid), and what no grant covered."""
    lines = []
    if use.applied > 0:
        lines.append(
            InvoiceLine(
                kind=CREDITS,
                description=f"{quantity_text(use.applied)} credits applied",
                amount=round_money(ZERO, currency),
                quantity=use.applied,
                price="prepaid credits, no charge on this invoice",
            )
        )
    if use.shortfall > 0:
        price = book.credit_shortfall_price
        with localcontext(EXACT):
            exact = ZERO if price is None else use.shortfall * price
        lines.append(
            InvoiceLine(
                kind=CREDITS,
                description=f"{quantity_text(use.shortfall)} credits not covered by a grant",
                amount=round_money(exact, currency),
                quantity=use.shortfall,
                billable=use.shortfall if price is not None else ZERO,
                price=(
                    "not charged (the price book sets no use.shortfall_price)"
                    if price is None
                    else f"{money_text(price, currency)} per credit not covered"
                ),
                unrounded=exact,
            )
        )
    return lines


def _usage_by_meter(book: PriceBook, usage: Sequence[MeterUsage]) -> dict[str, MeterUsage]:
    by_meter: dict[str, MeterUsage] = {}
    for item in usage:
        if item.meter not in book.meters:
            raise ValueError(
                f"usage of meter {item.meter!r}, which price book {book.version} does not define"
            )
        if item.meter in by_meter:
            raise ValueError(f"usage of meter {item.meter!r} given twice")
        check_quantity(item.quantity, f"{item.meter} quantity")
        if item.entries < 0:
            raise ValueError(f"{item.meter} entries must not be negative, got {item.entries}")
        for value, quantity in item.by_dimension.items():
            check_quantity(quantity, f"{item.meter} quantity for {value!r}")
        by_meter[item.meter] = item
    return by_meter


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


def _usage_lines(
    book: PriceBook, usage: MeterUsage, allowance: Decimal, currency: str
) -> list[InvoiceLine]:
    meter = book.meters[usage.meter]
    price = book.prices.get(usage.meter)
    if price is None:
        shown = f"{quantity_text(usage.quantity)} used"
        if allowance:
            shown += f", {quantity_text(allowance)} included"
        words = unpriced_text(book, meter)
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
    dimension_value: DimensionValue | None
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
        label += f" ({price.dimension} {rated.dimension_value.label})"
    figures = usage_text(rated.quantity, rated.included, rated.free, rated.billable)
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
        price=price_text(rated.model, price.free_quantity, meter.unit, currency),
        tiers=rated.breakdown,
        entries=usage.entries,
        first_entry_id=usage.first_entry_id,
        last_entry_id=usage.last_entry_id,
        unrounded=rated.exact,
    )
