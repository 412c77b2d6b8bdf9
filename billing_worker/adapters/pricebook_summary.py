"""A price book as JSON-ready data: what ``pricebook check --json`` prints and the API's
``/v1/plans`` serves."""

from __future__ import annotations

from typing import Any

from billing_worker.domain.pricebook import (
    Free,
    Graduated,
    Package,
    PerUnit,
    PriceBook,
    PriceModel,
    Volume,
)
from schemas.events import format_decimal as plain


def describe_model(model: PriceModel) -> str:
    """A price model in one line."""
    if isinstance(model, PerUnit):
        return f"per unit {plain(model.unit_price)}"
    if isinstance(model, Package):
        return f"{plain(model.package_price)} per {plain(model.package_size)} units (started)"
    if isinstance(model, Free):
        return "free"
    kind = "graduated" if isinstance(model, Graduated) else "volume"
    assert isinstance(model, (Graduated, Volume))  # noqa: S101 - exhausts the union for mypy
    tiers = ", ".join(
        f"{'≤' + plain(t.up_to) if t.up_to is not None else 'rest'} @ {plain(t.unit_price)}"
        + (f" +{plain(t.flat_fee)}" if t.flat_fee else "")
        for t in model.tiers
    )
    return f"{kind}: {tiers}"


def describe_pricebook(book: PriceBook) -> dict[str, Any]:
    """Everything the book defines, as JSON-ready data."""
    return {
        "version": book.version,
        "digest": book.digest,
        "currency": book.currency,
        "default_plan": book.default_plan,
        "credits_low_balance": plain(book.credits_low_balance),
        "meters": [
            {
                "name": m.name,
                "event_types": list(m.event_types),
                "value": f"data.{m.value_field or 'quantity'}",
                "aggregation": m.aggregation.value,
                "filters": dict(m.filters),
                "unit": m.unit,
                "late_events": m.late_events,
            }
            for m in book.meters.values()
        ],
        "plans": [
            {
                "name": p.name,
                "price": plain(p.price),
                "currency": p.currency,
                "interval": p.interval.value,
                "thresholds": list(p.thresholds),
                "credit_grant": plain(p.credit_grant),
                "meters": {
                    meter: {
                        "included": plain(t.included),
                        "limit": plain(t.limit) if t.limit is not None else None,
                        "enforcement": t.enforcement.value,
                    }
                    for meter, t in p.meters.items()
                },
            }
            for p in book.plans.values()
        ],
        "prices": [
            {
                "meter": p.meter,
                "model": describe_model(p.model),
                "free_quantity": plain(p.free_quantity),
                "dimension": p.dimension,
                "by_value": {v: describe_model(m) for v, m in p.by_value.items()},
            }
            for p in book.prices.values()
        ],
        "credit_costs": {meter: plain(cost) for meter, cost in book.credit_costs.items()},
        "credit_products": [
            {
                "name": c.name,
                "credits": plain(c.credits),
                "price": plain(c.price),
                "currency": c.currency,
            }
            for c in book.credit_products.values()
        ],
        "stripe_prices": {
            s.price_id: f"plan {s.plan}" if s.plan else f"credit pack {s.credit_product}"
            for s in book.stripe_prices.values()
        },
    }
