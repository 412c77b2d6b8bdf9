"""Operator commands: ``pricebook check``, ``account show``, ``account set-plan``,
``credits grant``. Each prints a table on a terminal, or JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from billing_worker.adapters.postgres.account_view import grants, period_totals, recent_entries
from billing_worker.adapters.pricebook_file import PriceBookError, load_pricebook
from billing_worker.config import Settings
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.pricebook import (
    CreditSource,
    Free,
    Graduated,
    Package,
    PerUnit,
    PriceBook,
    PriceModel,
    Volume,
)
from billing_worker.service.accounts import change_plan, grant_credits
from billing_worker.service.ports import UnitOfWorkFactory


def add_operator_commands(commands: Any) -> None:
    """Register the operator sub-commands."""
    pricebook = commands.add_parser("pricebook", help="validate a price book and show it")
    pricebook_commands = pricebook.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = pricebook_commands.add_parser(
        "check", help="validate FILE and print what it defines (exit 1 if invalid)"
    )
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="machine-readable output")

    account = commands.add_parser("account", help="look at or change an account")
    account_commands = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = account_commands.add_parser(
        "show", help="plan, period usage against limits, credit grants, recent ledger entries"
    )
    show.add_argument("account")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--entries", type=int, default=15, help="recent ledger entries to list")
    set_plan = account_commands.add_parser(
        "set-plan", help="move an account to a plan from now on (new limits for the period)"
    )
    set_plan.add_argument("account")
    set_plan.add_argument("plan")
    set_plan.add_argument("--status", default="active")

    credit = commands.add_parser("credits", help="grant credits")
    credit_commands = credit.add_subparsers(dest="action", required=True, metavar="ACTION")
    grant = credit_commands.add_parser("grant", help="grant promotional credits to an account")
    grant.add_argument("account")
    grant.add_argument("amount", type=_decimal)
    grant.add_argument("--expires", type=_time, help="ISO 8601 time; default: never")
    grant.add_argument("--note", default="", help="why (kept with the grant)")
    grant.add_argument(
        "--key",
        help="idempotency key: the same key grants once (default: a new key each run)",
    )
    grant.add_argument("--priority", type=int, help="burn order; lower burns first (default 5)")


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (e.g. Z or +00:00): {text!r}")
    return moment.astimezone(UTC)


async def run_operator_command(args: argparse.Namespace, settings: Settings) -> int:  # noqa: PLR0911 - one exit per outcome
    """Dispatch an operator command; return the exit status."""
    out = sys.stdout
    if args.command == "pricebook":
        return check_pricebook(args.file, as_json=args.json, out=out)
    try:
        book = load_pricebook(settings.pricebook)
    except PriceBookError as exc:
        sys.stderr.write(f"billing-worker: invalid price book (BILLING_PRICEBOOK): {exc}\n")
        return 2
    from billing_worker.adapters.postgres.database import (  # noqa: PLC0415 - keep --help fast
        create_engine_for,
        prepare_database,
    )
    from billing_worker.adapters.postgres.pricebooks import (  # noqa: PLC0415
        PriceBookVersionConflict,
        register_pricebook,
    )
    from billing_worker.adapters.postgres.usage_store import (  # noqa: PLC0415
        PostgresUnitOfWork,
    )

    url = settings.database_url.get_secret_value()
    prepare_database(url)
    engine = create_engine_for(url, pool_size=1)
    try:
        await register_pricebook(engine, book)
        now = settings.clock()
        if args.command == "account" and args.action == "show":
            async with engine.connect() as conn:
                return await show_account(
                    conn,
                    book,
                    args.account,
                    now=now,
                    entries=args.entries,
                    as_json=args.json,
                    out=out,
                )
        if args.command in ("close-periods", "invoice", "report"):
            from billing_worker.entrypoints.invoicing_commands import (  # noqa: PLC0415
                run_invoicing_command,
            )

            return await run_invoicing_command(args, settings, book, engine)
        uow_factory = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        if args.command == "account":
            return await _set_plan(args, book, uow_factory, now, out)
        return await _grant(args, book, uow_factory, now, out)
    except PriceBookVersionConflict as exc:
        sys.stderr.write(f"billing-worker: {exc}\n")
        return 2
    except PermanentError as exc:
        sys.stderr.write(f"billing-worker: {exc.detail}\n")
        return 1
    finally:
        await engine.dispose()


async def _set_plan(
    args: argparse.Namespace,
    book: PriceBook,
    uow_factory: UnitOfWorkFactory,
    now: datetime,
    out: TextIO,
) -> int:
    change = await change_plan(
        uow_factory,
        book,
        account=args.account,
        plan=args.plan,
        status=args.status,
        cause="operator",
        change_id=f"operator:{uuid.uuid4()}",
        now=now,
    )
    if not change.changed:
        out.write(f"{change.account} is already on {change.plan} ({change.status})\n")
    else:
        out.write(
            f"{change.account}: {change.previous_plan or '(new)'} -> {change.plan} "
            f"({change.status}) from {now.isoformat()}; "
            f"{change.quota_events} quota event(s) announced\n"
        )
    return 0


async def _grant(
    args: argparse.Namespace,
    book: PriceBook,
    uow_factory: UnitOfWorkFactory,
    now: datetime,
    out: TextIO,
) -> int:
    key = args.key or str(uuid.uuid4())
    grant_id = await grant_credits(
        uow_factory,
        book,
        account=args.account,
        amount=args.amount,
        source=CreditSource.PROMOTIONAL,
        key=key,
        note=args.note,
        now=now,
        expires_at=args.expires,
        priority=args.priority,
    )
    if grant_id is None:
        out.write(f"key {key!r} was granted before; nothing changed\n")
    else:
        out.write(f"granted {args.amount} credits to {args.account} (grant {grant_id})\n")
    return 0


# --- pricebook check ------------------------------------------------------------------------


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
        return f"per unit {model.unit_price}"
    if isinstance(model, Package):
        return f"{model.package_price} per {model.package_size} units (started)"
    if isinstance(model, Free):
        return "free"
    kind = "graduated" if isinstance(model, Graduated) else "volume"
    assert isinstance(model, (Graduated, Volume))  # noqa: S101 - exhausts the union for mypy
    tiers = ", ".join(
        f"{'≤' + str(t.up_to) if t.up_to is not None else 'rest'} @ {t.unit_price}"
        + (f" +{t.flat_fee}" if t.flat_fee else "")
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
        "credits_low_balance": str(book.credits_low_balance),
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
                "price": str(p.price),
                "currency": p.currency,
                "interval": p.interval.value,
                "thresholds": list(p.thresholds),
                "credit_grant": str(p.credit_grant),
                "meters": {
                    meter: {
                        "included": str(t.included),
                        "limit": str(t.limit) if t.limit is not None else None,
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
                "free_quantity": str(p.free_quantity),
                "dimension": p.dimension,
                "by_value": {v: describe_model(m) for v, m in p.by_value.items()},
            }
            for p in book.prices.values()
        ],
        "credit_costs": {meter: str(cost) for meter, cost in book.credit_costs.items()},
        "credit_products": [
            {
                "name": c.name,
                "credits": str(c.credits),
                "price": str(c.price),
                "currency": c.currency,
            }
            for c in book.credit_products.values()
        ],
        "stripe_prices": {
            s.price_id: f"plan {s.plan}" if s.plan else f"credit pack {s.credit_product}"
            for s in book.stripe_prices.values()
        },
    }


# --- account show ---------------------------------------------------------------------------


async def show_account(
    conn: Any,
    book: PriceBook,
    account: str,
    *,
    now: datetime,
    entries: int,
    as_json: bool,
    out: TextIO,
) -> int:
    """Print the account (exit 1 when there is no such account)."""
    from billing_worker.adapters.postgres.account_store import (  # noqa: PLC0415
        PostgresAccounts,
    )

    stored = await PostgresAccounts(conn).get(account)
    if stored is None:
        sys.stderr.write(f"no account {account!r}\n")
        return 1
    period = (await PostgresAccounts(conn).period_calendar(account)).period_of(now)
    plan = book.plan(stored.plan)
    totals = await period_totals(conn, account, period)
    usage = {t.meter: t for t in totals}
    meters = []
    for name in sorted(set(usage) | set(plan.meters)):
        total = usage.get(name)
        terms = plan.limit_of(name)
        used = total.quantity if total else Decimal(0)
        limit = terms.limit if terms else None
        meters.append(
            {
                "meter": name,
                "used": str(used),
                "events": total.events if total else 0,
                "included": str(terms.included) if terms else "0",
                "limit": str(limit) if limit is not None else None,
                "used_percent": f"{used * 100 / limit:.1f}" if limit else None,
                "enforcement": terms.enforcement.value if terms and limit is not None else None,
            }
        )
    grant_rows = await grants(conn, account)
    live = [
        g for g in grant_rows if g.remaining > 0 and (g.expires_at is None or g.expires_at > now)
    ]
    recent = await recent_entries(conn, account, entries)
    report: dict[str, Any] = {
        "account": account,
        "plan": stored.plan,
        "status": stored.status,
        "created_at": stored.created_at.isoformat(),
        "plan_changed_at": stored.plan_changed_at.isoformat() if stored.plan_changed_at else None,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "pricebook_version": book.version,
        "meters": meters,
        "credit_balance": str(sum((g.remaining for g in live), Decimal(0))),
        "grants": [
            {
                "grant_id": g.grant_id,
                "source": g.source,
                "amount": str(g.amount),
                "remaining": str(g.remaining),
                "priority": g.priority,
                "valid_from": g.valid_from.isoformat(),
                "expires_at": g.expires_at.isoformat() if g.expires_at else None,
                "note": g.note,
            }
            for g in grant_rows
        ],
        "recent_entries": [
            {
                "ledger": e.ledger,
                "entry_id": e.entry_id,
                "recorded_at": e.recorded_at.isoformat(),
                "effective_at": e.effective_at.isoformat(),
                "what": e.what,
                "ref": e.ref,
                "pricebook_version": e.pricebook_version,
            }
            for e in recent
        ],
    }
    if as_json:
        out.write(json.dumps(report, indent=2) + "\n")
        return 0
    out.write(f"account {account}: plan {stored.plan} ({stored.status}), ")
    out.write(f"period {period.start:%Y-%m-%d} .. {period.end:%Y-%m-%d}, ")
    out.write(f"price book {book.version}\n\n")
    table(
        out,
        ["meter", "used", "events", "included", "limit", "used %"],
        [
            [
                m["meter"],
                m["used"],
                m["events"],
                m["included"],
                m["limit"] or "-",
                m["used_percent"] or "-",
            ]
            for m in meters
        ]
        or [["(no usage this period)", "", "", "", "", ""]],
    )
    out.write(f"\ncredit balance: {report['credit_balance']}\n")
    table(
        out,
        ["grant", "source", "amount", "remaining", "priority", "expires"],
        [
            [
                g["grant_id"],
                g["source"],
                g["amount"],
                g["remaining"],
                g["priority"],
                g["expires_at"] or "never",
            ]
            for g in report["grants"]
        ]
        or [["(none)", "", "", "", "", ""]],
    )
    out.write("\nrecent ledger entries:\n")
    table(
        out,
        ["recorded", "ledger", "entry", "ref", "price book"],
        [
            [
                e.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
                e.ledger,
                e.what,
                e.ref,
                e.pricebook_version or "-",
            ]
            for e in recent
        ]
        or [["(none)", "", "", "", ""]],
    )
    return 0


def table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned text table."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    render: Callable[[list[str]], str] = lambda row: "  ".join(  # noqa: E731
        cell.ljust(width) for cell, width in zip(row, widths, strict=True)
    ).rstrip()
    out.write(render(cells[0]) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells[1:]:
        out.write(render(row) + "\n")


def _kv(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items()) or "-"
