"""``pricebook check FILE``: validate a price book and print what it defines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from billing_worker.adapters.pricebook_file import PriceBookError, load_pricebook
from billing_worker.domain.pricebook import (
    Free,
    Graduated,
    Package,
    PerUnit,
    PriceBook,
    PriceModel,
    Volume,
)
from billing_worker.entrypoints.cli_support import table
from schemas.events import format_decimal as plain


def add_pricebook_commands(commands: Any) -> None:
    """Register ``pricebook check``."""
    pricebook = commands.add_parser("pricebook", help="validate a price book and show it")
    pricebook_commands = pricebook.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = pricebook_commands.add_parser(
        "check", help="validate FILE and print what it defines (exit 1 if invalid)"
    )
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="machine-readable output")


def check_pricebook(path: Path, *, as_json: bool, out: TextIO) -> int:
    """Validate ``path``; print what it defines (exit 0) or what is wrong (exit 1)."""
    try:
        book = load_pricebook(path)
    except PriceBookError as exc:
        sys.stderr.write(f"invalid price book: {exc}\n")
        return 1
    summary = describe_pricebook(book)
    if as_json:
        out.write(json.dumps(summary, indent=2, default=str) + "\n")
        return 0
    out.write(f"price book {book.version} (sha256 {book.digest[:12]}), currency {book.currency}, ")
    out.write(f"default plan {book.default_plan}: OK\n\n")
    table(
        out,
        ["meter", "fed by", "value", "aggregation", "filters", "unit"],
        [
            [
                m["name"],
                ", ".join(m["event_types"]),
                m["value"],
                m["aggregation"],
                _kv(m["filters"]),
                m["unit"],
            ]
            for m in summary["meters"]
        ],
    )
    rows = []
    for plan in summary["plans"]:
        terms = "; ".join(
            f"{meter}: {t['included']} incl., limit {t['limit'] or '-'} ({t['enforcement']})"
            for meter, t in plan["meters"].items()
        )
        rows.append(
            [
                plan["name"],
                f"{plan['price']} {plan['currency']}/{plan['interval']}",
                terms or "-",
                "/".join(str(t) for t in plan["thresholds"]),
                plan["credit_grant"],
            ]
        )
    out.write("\n")
    table(out, ["plan", "price", "meters", "thresholds %", "credits/period"], rows)
    out.write("\n")
    table(
        out,
        ["price of", "model", "free qty", "by dimension"],
        [
            [
                p["meter"],
                p["model"],
                p["free_quantity"],
                _kv(p["by_value"]) if p["dimension"] else "-",
            ]
            for p in summary["prices"]
        ],
    )
    out.write("\n")
    table(out, ["meter", "credits per unit"], [[m, c] for m, c in summary["credit_costs"].items()])
    out.write("\n")
    table(
        out,
        ["credit pack", "credits", "price"],
        [
            [c["name"], c["credits"], f"{c['price']} {c['currency']}"]
            for c in summary["credit_products"]
        ],
    )
    out.write("\n")
    table(out, ["stripe price id", "buys"], [[k, v] for k, v in summary["stripe_prices"].items()])
    return 0


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


def _kv(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items()) or "-"
