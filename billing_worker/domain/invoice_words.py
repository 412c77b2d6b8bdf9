"""Invoice lines in words: quantities, money, prices and periods as the customer reads them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import (
    Decimal,
    localcontext,
)
from typing import assert_never

from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import (
    EXACT,
    ZERO,
    Free,
    Graduated,
    Meter,
    Package,
    PerUnit,
    PriceBook,
    PriceModel,
    Tier,
    Volume,
)
from billing_worker.domain.proration import (
    QUOTIENT,
    quotient,
)
from billing_worker.domain.rating import minor_unit_places

DISPLAY_PLACES = 6
DISPLAY_QUANTUM = Decimal(1).scaleb(-DISPLAY_PLACES)
MICROSECONDS_PER_DAY = 86_400_000_000


def quantity_text(value: Decimal) -> str:
    """``1,234,567``; ``2.5``; ``~1,216,666.666667`` (more than 6 places: rounded to 6 and
    marked ``~``; the line's fields keep it exact); ``0.0000001`` (a non-zero value that
    would round to 0 is shown whole, so a line that reads "0 used" used nothing)."""
    exponent = value.as_tuple().exponent
    prefix = ""
    if isinstance(exponent, int) and exponent < -DISPLAY_PLACES:
        with localcontext(QUOTIENT):
            rounded = value.quantize(DISPLAY_QUANTUM)
        if rounded not in (0, value):
            value, prefix = rounded, "~"
    text = f"{value:,f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else prefix + text


def money_text(value: Decimal, currency: str) -> str:
    """A price or amount with at least the currency's minor-unit places: ``0.50``,
    ``0.002``, ``10,000.00``."""
    places = minor_unit_places(currency)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -places:
        with localcontext(QUOTIENT):
            value = value.quantize(Decimal(1).scaleb(-places))
    return f"{value:,f}"


def plural(unit: str, count: Decimal) -> str:
    return unit if count == 1 or unit.endswith("s") else f"{unit}s"


def tier_price(tier: Tier, currency: str) -> str:
    text = money_text(tier.unit_price, currency)
    if tier.flat_fee:
        text += f" + {money_text(tier.flat_fee, currency)} flat"
    return text


def graduated_text(tiers: Sequence[Tier], currency: str) -> str:
    parts = []
    lower = ZERO
    for index, tier in enumerate(tiers):
        at = tier_price(tier, currency)
        if tier.up_to is None:
            parts.append(f"then {at}" if index else f"all at {at}")
            break
        with localcontext(EXACT):
            width = tier.up_to - lower
        parts.append(f"{'next' if index else 'first'} {quantity_text(width)} at {at}")
        lower = tier.up_to
    return ", ".join(parts)


def volume_text(tiers: Sequence[Tier], currency: str) -> str:
    parts = []
    lower: Decimal | None = None
    for tier in tiers:
        at = tier_price(tier, currency)
        if tier.up_to is None:
            above = f"above {quantity_text(lower)}" if lower is not None else "any total"
            parts.append(f"{above} at {at}")
            break
        parts.append(f"up to {quantity_text(tier.up_to)} at {at}")
        lower = tier.up_to
    return ", ".join(parts)


def price_text(model: PriceModel, free_quantity: Decimal, unit: str, currency: str) -> str:
    """The price model in words (``free_quantity`` is the price's, per period)."""
    match model:
        case PerUnit(unit_price=unit_price):
            text = f"{money_text(unit_price, currency)} per {unit}"
        case Graduated(tiers=tiers):
            text = f"graduated per {unit}: {graduated_text(tiers, currency)}"
        case Volume(tiers=tiers):
            text = (
                f"volume per {unit}, every unit at the tier the total reaches: "
                f"{volume_text(tiers, currency)}"
            )
        case Package(package_size=size, package_price=package_price):
            text = (
                f"package: {money_text(package_price, currency)} per "
                f"{quantity_text(size)} {plural(unit, size)}, a started package in full"
            )
        case Free():
            text = "free"
        case _:
            assert_never(model)
    if free_quantity:
        text += f", after {quantity_text(free_quantity)} free per period"
    return text


def unpriced_text(book: PriceBook, meter: Meter) -> str:
    cost = book.credit_costs.get(meter.name)
    if cost is not None:
        return f"paid with credits, {quantity_text(cost)} credits per {meter.unit}"
    return "no usage charge"


def usage_text(quantity: Decimal, included: Decimal, free: Decimal, billable: Decimal) -> str:
    parts = [f"{quantity_text(quantity)} used"]
    if included:
        parts.append(f"{quantity_text(included)} included")
    if free:
        parts.append(f"{quantity_text(free)} free")
    parts.append(f"{quantity_text(billable)} billable")
    return ", ".join(parts)


def change_text(late: Decimal, invoiced_quantity: Decimal) -> str:
    invoiced = quantity_text(invoiced_quantity)
    if late > 0:
        return f"{quantity_text(late)} more than the {invoiced}"
    if late < 0:
        return f"{quantity_text(-late)} less than the {invoiced}"
    return f"the same as the {invoiced}"


def moment_text(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    if utc.time() == datetime.min.time():
        return f"{utc:%Y-%m-%d}"
    if utc.second or utc.microsecond:
        return f"{utc:%Y-%m-%d %H:%M:%S} UTC"
    return f"{utc:%Y-%m-%d %H:%M} UTC"


def days_text(micros: int) -> str:
    days = quotient(Decimal(micros), MICROSECONDS_PER_DAY)
    if days == days.to_integral_value():
        return str(int(days))
    with localcontext(QUOTIENT):
        return quantity_text(days.quantize(Decimal("0.01")))


def period_text(period: BillingPeriod) -> str:
    if calendar_month_of(period.start) == period:
        return f"{period.start.astimezone(UTC):%Y-%m}"
    return f"{moment_text(period.start)} to {moment_text(period.end)}"
