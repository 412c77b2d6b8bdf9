"""Adjustment lines: late usage of a closed period priced as the correction of its line."""

from __future__ import annotations

from decimal import (
    Decimal,
    localcontext,
)

from billing_worker.domain.invoice_model import (
    ADJUSTMENT,
    InvoiceLine,
    check_quantity,
)
from billing_worker.domain.invoice_words import (
    change_text,
    money_text,
    period_text,
    price_text,
    quantity_text,
    unpriced_text,
)
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import (
    EXACT,
    ZERO,
    DimensionValue,
    PriceBook,
)
from billing_worker.domain.rating import (
    TierCharge,
    billable_quantity,
    round_money,
    tier_breakdown,
)


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
    dimension_value: DimensionValue | None = None,
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
    model would be wrong; events without the field have an absent ``DimensionValue``).
    """
    if meter not in book.meters:
        raise ValueError(f"meter {meter!r} is not defined in price book {book.version}")
    for value, what in (
        (included, "included"),
        (invoiced_quantity, "invoiced_quantity"),
        (new_quantity, "new_quantity"),
    ):
        check_quantity(value, what)
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
        words = unpriced_text(book, book.meters[meter])
    else:
        if price.dimension is not None and dimension_value is None:
            raise ValueError(
                f"meter {meter!r} is priced per {price.dimension}: its late usage needs the "
                f"{price.dimension} it is for (dimension_value)"
            )
        free = price.free_quantity if free_quantity is None else free_quantity
        check_quantity(free, "free_quantity")
        model = price.model_for(dimension_value)
        billable = billable_quantity(new_quantity, included=included, free_quantity=free)
        breakdown = tier_breakdown(model, billable)
        words = price_text(model, price.free_quantity, unit, currency)
    with localcontext(EXACT):
        corrected = sum((charge.amount for charge in breakdown), ZERO)
        amount = round_money(corrected, currency) - invoiced_amount
        unrounded = corrected - invoiced_amount
        late = new_quantity - invoiced_quantity
    amount = round_money(amount, currency)  # same value, in the minor unit's places
    label = meter
    if price is not None and price.dimension is not None and dimension_value is not None:
        label += f" ({price.dimension} {dimension_value.label})"
    description = (
        f"late usage of {label} for {period_text(refers_to)}: "
        f"{quantity_text(new_quantity)} used ({change_text(late, invoiced_quantity)} invoiced)"
    )
    if included:
        description += f", {quantity_text(included)} included"
    if free:
        description += f", {quantity_text(free)} free"
    if price is not None:
        description += f", {quantity_text(billable)} billable"
    description += (
        f"; {money_text(round_money(corrected, currency), currency)} less "
        f"{money_text(invoiced_amount, currency)} already invoiced"
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
