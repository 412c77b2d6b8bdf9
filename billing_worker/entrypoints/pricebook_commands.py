"""``pricebook check FILE``: validate a price book and print what it defines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from billing_worker.adapters.pricebook_file import PriceBookError, load_pricebook
from billing_worker.adapters.pricebook_summary import describe_pricebook
from billing_worker.entrypoints.cli_support import table


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


def _kv(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items()) or "-"
