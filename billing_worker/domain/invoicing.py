"""One account's billing period as invoice lines: plan fees, usage, credits, adjustments.

Amounts stay exact through rating and are rounded once per line (``round_money``); the
subtotal and total are sums of rounded lines. A plan change mid-period prorates both the
fee and the included allowances by the time each plan was in force.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, localcontext

from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import (
    EXACT,
    ZERO,
    Free,
    Graduated,
    Interval,
    MeterPrice,
    Package,
    PerUnit,
    PriceBook,
    PriceModel,
)
from billing_worker.domain.rating import TierCharge, rate_line, round_money

YEAR_IN_MONTHS = 12
QUANTITY_PLACES = Decimal(1).scaleb(-18)


@dataclass(frozen=True, slots=True)
class PlanSpan:
    """The plan in force over ``[start, end)`` within the period."""

    plan: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's usage in the period, from the ledger."""

    meter: str
    quantity: Decimal
    entries: int
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    by_dimension: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One invoice line and what it is made of."""

    kind: str
    description: str
    amount: Decimal
    meter: str | None = None
    dimension_value: str | None = None
    quantity: Decimal = ZERO
    included: Decimal = ZERO
    free_quantity: Decimal = ZERO
    billable: Decimal = ZERO
    price: str = ""
    tiers: tuple[TierCharge, ...] = ()
    entries: int = 0
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    refers_to: BillingPeriod | None = None
    unrounded: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    """An invoice before it is stored."""

    account: str
    period: BillingPeriod
    currency: str
    plan: str
    pricebook_version: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal


def prorate(span: PlanSpan, period: BillingPeriod) -> Decimal:
    """The fraction of ``period`` that ``span`` covers (to 40 places: 1/3 is not finite)."""
    whole = Decimal((period.end - period.start).total_seconds())
    part = Decimal((span.end - span.start).total_seconds())
    return _divide(part, whole)


def _divide(numerator: Decimal, denominator: Decimal) -> Decimal:
    """Division rounded to 40 places: fractions like 1/3 are not finite decimals."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (numerator / denominator).quantize(Decimal(1).scaleb(-40))


def describe_model(model: PriceModel) -> str:
    """A price model in words."""
    if isinstance(model, PerUnit):
        return f"{model.unit_price} per unit"
    if isinstance(model, Package):
        return f"{model.package_price} per started {model.package_size} units"
    if isinstance(model, Free):
        return "free"
    kind = "graduated" if isinstance(model, Graduated) else "volume"
    parts = [
        f"{'up to ' + str(t.up_to) if t.up_to is not None else 'beyond'} at {t.unit_price}"
        + (f" + {t.flat_fee}" if t.flat_fee else "")
        for t in model.tiers
    ]
    return f"{kind}: " + ", ".join(parts)


def _check_spans(spans: Sequence[PlanSpan], period: BillingPeriod) -> None:
    if not spans:
        raise ValueError("a period needs at least one plan span")
    if spans[0].start != period.start or spans[-1].end != period.end:
        raise ValueError("plan spans must cover the period from start to end")
    for before, after in itertools.pairwise(spans):
        if before.end != after.start:
            raise ValueError("plan spans must follow each other without gaps or overlaps")
    if any(s.start >= s.end for s in spans):
        raise ValueError("a plan span must end after it starts")


def build_invoice(
    book: PriceBook,
    *,
    account: str,
    period: BillingPeriod,
    spans: Sequence[PlanSpan],
    usage: Sequence[MeterUsage],
    credits_used: Decimal = ZERO,
    adjustments: Sequence[InvoiceLine] = (),
) -> InvoiceDraft:
    """The invoice of ``account`` for ``period``; see the module docstring."""
    _check_spans(spans, period)
    currency = book.plan(spans[-1].plan).currency
    lines: list[InvoiceLine] = []
    allowance: dict[str, Decimal] = {}
    for span in spans:
        plan = book.plan(span.plan)
        share = prorate(span, period)
        monthly = plan.price / YEAR_IN_MONTHS if plan.interval is Interval.YEAR else plan.price
        with localcontext(EXACT):
            exact = monthly * share if len(spans) > 1 else monthly
        days = f"{span.start:%Y-%m-%d} to {span.end:%Y-%m-%d}"
        lines.append(
            InvoiceLine(
                kind="plan_fee",
                description=f"{plan.name} plan, {days}"
                + ("" if len(spans) == 1 else f" ({float(share) * 100:.1f}% of the period)"),
                amount=round_money(exact, currency),
                quantity=Decimal(1),
                billable=Decimal(1),
                price=f"{plan.price} {plan.currency} per {plan.interval.value}",
                unrounded=exact,
            )
        )
        seconds = Decimal((span.end - span.start).total_seconds())
        for meter, terms in plan.meters.items():
            with localcontext(EXACT):
                allowance[meter] = allowance.get(meter, ZERO) + terms.included * seconds
    whole = Decimal((period.end - period.start).total_seconds())
    # Included allowances prorated by time under each plan, to the 18 places a quantity has.
    allowance = {
        meter: _divide(seconds_total, whole).quantize(QUANTITY_PLACES).normalize()
        for meter, seconds_total in allowance.items()
    }
    for used in sorted(usage, key=lambda u: u.meter):
        lines.extend(_usage_lines(book, used, allowance.get(used.meter, ZERO), currency))
    if credits_used > 0:
        lines.append(
            InvoiceLine(
                kind="credits",
                description=f"{credits_used} prepaid credits applied",
                amount=round_money(ZERO, currency),
                quantity=credits_used,
            )
        )
    lines.extend(adjustments)
    subtotal = sum((line.amount for line in lines), ZERO)
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


def _usage_lines(
    book: PriceBook, used: MeterUsage, allowance: Decimal, currency: str
) -> list[InvoiceLine]:
    price = book.prices.get(used.meter)
    common = {
        "kind": "usage",
        "meter": used.meter,
        "entries": used.entries,
        "first_entry_id": used.first_entry_id,
        "last_entry_id": used.last_entry_id,
    }
    if price is None:
        return [
            InvoiceLine(
                description=f"{used.meter}: {used.quantity} used (not charged)",
                amount=round_money(ZERO, currency),
                quantity=used.quantity,
                included=allowance,
                price="not charged",
                **common,  # type: ignore[arg-type]
            )
        ]
    if price.dimension is None or not used.by_dimension:
        rated = rate_line(price, used.quantity, included=allowance)
        return [
            InvoiceLine(
                description=f"{used.meter}: {used.quantity} used, {_fmt(allowance)} included, "
                f"{rated.billable} billable",
                amount=round_money(rated.amount, currency),
                quantity=used.quantity,
                included=allowance,
                free_quantity=price.free_quantity,
                billable=rated.billable,
                price=describe_model(price.model),
                tiers=rated.breakdown,
                unrounded=rated.amount,
                **common,  # type: ignore[arg-type]
            )
        ]
    # Per dimension value: the free quantity is used up by the values in sorted order.
    lines = []
    free_left = price.free_quantity
    for value in sorted(used.by_dimension):
        quantity = used.by_dimension[value]
        free_here = min(free_left, quantity)
        free_left -= free_here
        model = price.model_for(value)
        rated = rate_line(_without_free(price), quantity, included=free_here, dimension_value=value)
        lines.append(
            InvoiceLine(
                description=f"{used.meter} ({price.dimension}={value}): {quantity} used, "
                f"{rated.billable} billable",
                amount=round_money(rated.amount, currency),
                dimension_value=value,
                quantity=quantity,
                free_quantity=free_here,
                billable=rated.billable,
                price=describe_model(model),
                tiers=rated.breakdown,
                unrounded=rated.amount,
                **common,  # type: ignore[arg-type]
            )
        )
    return lines


def _without_free(price: MeterPrice) -> MeterPrice:
    return replace(price, free_quantity=ZERO)


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral() else str(value)


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
) -> InvoiceLine:
    """Late usage of a closed period: what the new total costs minus what was invoiced."""
    price = book.prices.get(meter)
    if price is None:
        exact, billable, description = ZERO, ZERO, "not charged"
    else:
        rated = rate_line(price, new_quantity, included=included)
        exact, billable, description = rated.amount, rated.billable, describe_model(price.model)
    amount = round_money(exact, currency) - invoiced_amount
    return InvoiceLine(
        kind="adjustment",
        description=f"late usage of {meter} for {refers_to.start:%Y-%m}: "
        f"{invoiced_quantity} invoiced, now {new_quantity}",
        amount=amount,
        meter=meter,
        quantity=new_quantity,
        included=included,
        billable=billable,
        price=description,
        entries=entries,
        first_entry_id=first_entry_id,
        last_entry_id=last_entry_id,
        refers_to=refers_to,
        unrounded=exact,
    )
