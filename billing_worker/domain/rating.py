"""Rating: how a billable quantity becomes money under a price model. Pure, ``Decimal`` only.

The money rule
--------------
Amounts stay **exact** through rating: :func:`rate`, :func:`rate_increment`,
:func:`tier_breakdown` and :func:`rate_line` never round. An amount is rounded **once,
per invoice line**, with :func:`round_money` (round half up, away from zero, to the
currency's minor unit), and an invoice total is the **sum of its rounded lines**, never
the rounding of an exact total. Rounding per line means the total always equals the sum
of the figures printed on the invoice (and what Stripe, which bills whole minor units per
line, adds up); rounding only the total could leave it a cent away from its own lines.

Credits are not money: :func:`credits_for` is exact and never rounded.

Zero usage costs nothing under every model: no tier is reached by a quantity of 0, so no
tier's flat fee is charged (a fee owed regardless of usage is the plan's ``price``).

Precision
---------
Every computation runs in a local decimal context with :data:`EXACT_PRECISION` digits and
``Inexact`` trapped. Quantities and prices are at most 38 significant digits, so a
product needs up to 76 and a sum of tier amounts a few more; Python's default context
(28 digits, round half even) would silently round such a product. With the trap, a result
that still did not fit would raise :class:`decimal.Inexact` instead of being rounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import assert_never

from billing_worker.domain.pricebook import (
    ZERO,
    DimensionValue,
    Free,
    Graduated,
    MeterPrice,
    Package,
    PerUnit,
    PriceModel,
    Tier,
    Volume,
)

EXACT_PRECISION = 100
"""Significant digits of the rating context: room for a 38-digit quantity times a 38-digit
price (76 digits) plus the carries of summing tier amounts; ``Inexact`` is trapped, so an
amount is exact or the call raises."""

_EXACT = Context(
    prec=EXACT_PRECISION,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
_ROUNDING = Context(
    prec=EXACT_PRECISION,
    rounding=ROUND_HALF_UP,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)

# fmt: off
ZERO_DECIMAL_CURRENCIES = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
    "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
})
# fmt: on
"""Currencies without a minor unit (Stripe's zero-decimal list): rounded to whole units."""

THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
"""Currencies with a thousandth minor unit: rounded to 3 places."""

DEFAULT_MINOR_UNIT_PLACES = 2
"""Places for every other three-letter code (usd, eur, gbp, ... and unknown codes)."""


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierCharge:
    """One row of an invoice line's breakdown: the units priced by one tier, exact.

    ``amount == units * unit_price + flat_fee``. Quantities are billable units (after
    free and included usage are taken off). For graduated pricing ``from_quantity`` and
    ``to_quantity`` bound the slice of the total that fell in the tier; for volume pricing
    the one applied tier covers ``0`` to the total. For a :class:`Package` model the
    pseudo-tier's ``units`` counts the packages started and ``unit_price`` is the package
    price.
    """

    tier_index: int
    """Position of the tier in the model's ``tiers`` (0 for a pseudo-tier)."""
    from_quantity: Decimal
    to_quantity: Decimal
    units: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal
    """Exact, unrounded."""


@dataclass(frozen=True, slots=True)
class RatedLine:
    """One meter's usage in a period, rated: what an invoice line shows, before rounding.

    ``billable = max(0, quantity - included - free_quantity)``; ``amount`` is the exact
    charge for ``billable`` units (round it once with :func:`round_money`); ``breakdown``
    is :func:`tier_breakdown` of the billable units, and its amounts add up to ``amount``.
    """

    meter: str
    quantity: Decimal
    included: Decimal
    free_quantity: Decimal
    billable: Decimal
    amount: Decimal
    breakdown: tuple[TierCharge, ...]


# --- validation ------------------------------------------------------------------------------


def _check_quantity(quantity: Decimal, what: str = "quantity") -> None:
    if not quantity.is_finite():
        raise ValueError(f"{what} must be a finite number, not {quantity}")
    if quantity < 0:
        raise ValueError(f"{what} must not be negative, got {quantity}")


def _check_price(price: Decimal, what: str) -> None:
    if not price.is_finite() or price < 0:
        raise ValueError(f"{what} must be a finite non-negative amount, not {price}")


def check_tiers(tiers: Sequence[Tier], *, require_unbounded_last: bool = False) -> None:
    """Raise ``ValueError`` unless ``tiers`` is a usable tier list.

    Usable: at least one tier; bounds positive, finite and strictly increasing; only the
    last tier unbounded; prices and flat fees finite and non-negative. The price-book
    loader also requires the last tier to be unbounded (``require_unbounded_last``);
    rating accepts a bounded last tier and refuses only quantities beyond it.
    """
    if not tiers:
        raise ValueError("a tiered price needs at least one tier")
    previous = ZERO
    for index, tier in enumerate(tiers):
        last = index == len(tiers) - 1
        _check_price(tier.unit_price, f"tier {index} unit_price")
        _check_price(tier.flat_fee, f"tier {index} flat_fee")
        if tier.up_to is None:
            if not last:
                raise ValueError(f"tier {index} is unbounded but is not the last tier")
            continue
        if not tier.up_to.is_finite() or tier.up_to <= previous:
            raise ValueError(
                f"tier {index} up_to must be greater than the previous bound ({previous}), "
                f"got {tier.up_to}"
            )
        previous = tier.up_to
    if require_unbounded_last and tiers[-1].up_to is not None:
        raise ValueError("the last tier must be unbounded")


def _check_within(tiers: Sequence[Tier], quantity: Decimal) -> None:
    top = tiers[-1].up_to
    if top is not None and quantity > top:
        raise ValueError(
            f"quantity {quantity} is beyond the last tier's bound ({top}); "
            "the price's last tier must be unbounded"
        )


def _check_model(model: PriceModel) -> None:
    match model:
        case PerUnit(unit_price=price):
            _check_price(price, "unit_price")
        case Graduated(tiers=tiers) | Volume(tiers=tiers):
            check_tiers(tiers)
        case Package(package_size=size, package_price=price):
            if not size.is_finite() or size <= 0:
                raise ValueError(f"package_size must be a positive number, not {size}")
            _check_price(price, "package_price")
        case Free():
            pass
        case _:
            assert_never(model)


# --- rating --------------------------------------------------------------------------------


def _charge(
    index: int, low: Decimal, high: Decimal, *, units: Decimal, price: Decimal, fee: Decimal
) -> TierCharge:
    return TierCharge(index, low, high, units, price, fee, units * price + fee)


def _graduated(tiers: Sequence[Tier], quantity: Decimal) -> tuple[TierCharge, ...]:
    """One charge per tier the quantity reaches: the tier's slice ``(lower, upper]`` of
    the total at its price, plus its flat fee."""
    charges = []
    lower = ZERO
    for index, tier in enumerate(tiers):
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = upper - lower
        charges.append(
            _charge(index, lower, upper, units=units, price=tier.unit_price, fee=tier.flat_fee)
        )
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(charges)


def _volume(tiers: Sequence[Tier], quantity: Decimal) -> tuple[TierCharge, ...]:
    """The single tier the total falls in, applied to every unit; nothing for 0."""
    if quantity == 0:
        return ()
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return (
                _charge(
                    index, ZERO, quantity, units=quantity, price=tier.unit_price, fee=tier.flat_fee
                ),
            )
    raise AssertionError("unreachable: _check_within refused quantities beyond the tiers")


def packages_for(quantity: Decimal, package_size: Decimal) -> Decimal:
    """Packages started by ``quantity`` units: ``ceil(quantity / package_size)``, exact.

    Computed with an integer division and its remainder, so a size like ``0.3`` or a
    quotient like ``1/3`` never goes through an inexact division.
    """
    _check_quantity(quantity)
    if not package_size.is_finite() or package_size <= 0:
        raise ValueError(f"package_size must be a positive number, not {package_size}")
    with localcontext(_EXACT):
        whole, rest = divmod(quantity, package_size)
        return whole + 1 if rest else whole


def tier_breakdown(model: PriceModel, quantity: Decimal) -> tuple[TierCharge, ...]:
    """The rows an invoice line shows for ``quantity`` billable units, exact.

    - :class:`Graduated`: one :class:`TierCharge` per tier the quantity reaches, in order.
    - :class:`Volume`: the one tier applied to all units.
    - :class:`PerUnit`: a single pseudo-tier (index 0) for all units.
    - :class:`Package`: a single pseudo-tier whose ``units`` are the packages started.
    - :class:`Free`: empty.

    A quantity of 0 gives an empty breakdown under every model. The amounts always add
    up to :func:`rate` of the same quantity.

    Raises ``ValueError`` for a negative or non-finite quantity, an unusable model (see
    :func:`check_tiers`), or a quantity beyond a bounded last tier.
    """
    _check_quantity(quantity)
    _check_model(model)
    with localcontext(_EXACT):
        if quantity == 0:
            return ()
        match model:
            case PerUnit(unit_price=price):
                return (_charge(0, ZERO, quantity, units=quantity, price=price, fee=ZERO),)
            case Graduated(tiers=tiers):
                _check_within(tiers, quantity)
                return _graduated(tiers, quantity)
            case Volume(tiers=tiers):
                _check_within(tiers, quantity)
                return _volume(tiers, quantity)
            case Package(package_size=size, package_price=price):
                packages = packages_for(quantity, size)
                return (_charge(0, ZERO, quantity, units=packages, price=price, fee=ZERO),)
            case Free():
                return ()
            case _:
                assert_never(model)


def rate(model: PriceModel, quantity: Decimal) -> Decimal:
    """The exact, unrounded amount for ``quantity`` billable units under ``model``.

    - :class:`PerUnit`: ``quantity * unit_price``.
    - :class:`Graduated`: each unit at the price of the tier it falls in; bounds are
      cumulative and inclusive, so with tiers ``(1000, 0.01), (None, 0.005)`` the first
      1000 units cost 0.01 and the rest 0.005. A (possibly fractional) unit in
      ``(previous bound, up_to]`` belongs to that tier; a tier's ``flat_fee`` is charged
      once if any quantity falls in it (Stripe's graduated semantics).
    - :class:`Volume`: every unit at the price of the one tier the total falls in (the
      first whose ``up_to >= quantity``, else the unbounded last tier), plus that tier's
      ``flat_fee``. The amount can drop when the total crosses into a cheaper tier.
    - :class:`Package`: ``ceil(quantity / package_size) * package_price``.
    - :class:`Free`: 0.

    A quantity of 0 costs 0 under every model: no tier is reached, so no flat fee is
    charged. Raises ``ValueError`` for a negative or non-finite quantity, an unusable
    model, or a quantity beyond a bounded last tier.
    """
    charges = tier_breakdown(model, quantity)
    with localcontext(_EXACT):
        return sum((charge.amount for charge in charges), ZERO)


def rate_increment(model: PriceModel, before: Decimal, after: Decimal) -> Decimal:
    """What moving a period's running total from ``before`` to ``after`` costs, exact:
    ``rate(model, after) - rate(model, before)``.

    Increments over consecutive steps add up to the rate of the final total, whatever the
    steps. Negative when ``after < before`` (a total that went down, e.g. a ``latest``
    meter) and, under volume pricing, possibly when a total crosses into a cheaper tier.
    """
    _check_quantity(before, "before")
    _check_quantity(after, "after")
    first, second = rate(model, before), rate(model, after)
    with localcontext(_EXACT):
        return second - first


def billable_quantity(quantity: Decimal, *, included: Decimal, free_quantity: Decimal) -> Decimal:
    """The units the price model applies to: ``max(0, quantity - included - free_quantity)``.

    ``included`` is the plan's allowance for the meter, ``free_quantity`` the price's free
    units; both come off before any tier is counted. All three must be non-negative.
    """
    _check_quantity(quantity)
    _check_quantity(included, "included")
    _check_quantity(free_quantity, "free_quantity")
    with localcontext(_EXACT):
        return max(ZERO, quantity - included - free_quantity)


def rate_line(
    price: MeterPrice,
    quantity: Decimal,
    *,
    included: Decimal = ZERO,
    dimension_value: DimensionValue | None = None,
) -> RatedLine:
    """Rate a meter's period ``quantity`` under ``price``: the exact invoice line.

    The model is ``price.model_for(dimension_value)`` (the dimension value's own model, or
    the price's default); the plan's ``included`` units and the price's ``free_quantity``
    come off first, then the model rates what is left. Nothing is rounded.
    """
    model = price.model_for(dimension_value)
    billable = billable_quantity(quantity, included=included, free_quantity=price.free_quantity)
    breakdown = tier_breakdown(model, billable)
    with localcontext(_EXACT):
        amount = sum((charge.amount for charge in breakdown), ZERO)
    return RatedLine(
        meter=price.meter,
        quantity=quantity,
        included=included,
        free_quantity=price.free_quantity,
        billable=billable,
        amount=amount,
        breakdown=breakdown,
    )


# --- money and credits -----------------------------------------------------------------------


def minor_unit_places(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit: 0, 3, or 2 for any other code.

    Case-insensitive; ``ValueError`` unless the code is three ASCII letters.
    """
    code = currency.lower()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise ValueError(f"currency must be a three-letter ISO 4217 code, not {currency!r}")
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return DEFAULT_MINOR_UNIT_PLACES


def round_money(amount: Decimal, currency: str) -> Decimal:
    """THE rounding rule: ``amount`` rounded half up (``.5`` away from zero) to the
    currency's minor unit (usd/eur 0.01, jpy 1, kwd 0.001; see :func:`minor_unit_places`).

    Apply it once per invoice line to the exact amount from :func:`rate_line`; sum the
    rounded lines for the total (see the module docstring). Symmetric for negative
    amounts (``-0.005 usd -> -0.01``); idempotent; a result of zero is never ``-0``.
    """
    if not amount.is_finite():
        raise ValueError(f"amount must be a finite number, not {amount}")
    quantum = Decimal(1).scaleb(-minor_unit_places(currency))
    with localcontext(_ROUNDING):
        rounded = amount.quantize(quantum)
        return rounded.copy_abs() if rounded.is_zero() else rounded


def credits_for(quantity: Decimal, cost_per_unit: Decimal) -> Decimal:
    """Credits that ``quantity`` units burn at ``cost_per_unit``: the exact product.

    Credits are exact decimals and are never rounded. Both arguments must be finite and
    non-negative.
    """
    _check_quantity(quantity)
    _check_quantity(cost_per_unit, "cost_per_unit")
    with localcontext(_EXACT):
        return quantity * cost_per_unit
