"""``account show``, ``account set-plan`` and ``credits grant``: a table on a terminal, or
JSON with ``--json``."""

from __future__ import annotations

import argparse
import sys
import uuid
from datetime import datetime
from typing import Any, TextIO

from billing_worker.config import Settings
from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.entrypoints.cli_support import (
    command_database,
    configured_pricebook,
    finite_decimal,
    iso_time,
    table,
    write_json,
)
from billing_worker.service.accounts import change_plan, grant_credits
from billing_worker.service.ports import UnitOfWorkFactory


def add_account_commands(commands: Any) -> None:
    """Register ``account`` and ``credits``."""
    account = commands.add_parser("account", help="look at or change an account")
    account_commands = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = account_commands.add_parser(
        "show",
        help="plan, period usage against limits, credit grants, recent ledger entries, payments",
    )
    show.add_argument("account")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument(
        "--entries", type=int, default=15, help="recent ledger entries (and payments) to list"
    )
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
    grant.add_argument("amount", type=finite_decimal)
    grant.add_argument("--expires", type=iso_time, help="ISO 8601 time; default: never")
    grant.add_argument("--note", default="", help="why (kept with the grant)")
    grant.add_argument(
        "--key",
        help="idempotency key: the same key grants once (default: a new key each run)",
    )
    grant.add_argument("--priority", type=int, help="burn order; lower burns first (default 5)")


async def run_account_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``account show|set-plan`` or ``credits grant``; return the exit status."""
    from billing_worker.adapters.postgres.unit_of_work import (  # noqa: PLC0415 - fast --help
        PostgresUnitOfWork,
    )

    book = configured_pricebook(settings)
    out = sys.stdout
    reads_only = args.command == "account" and args.action == "show"
    async with command_database(settings, book, writes=not reads_only) as engine:
        now = settings.clock()
        if reads_only:
            return await show_account(engine, book, args, now=now, out=out)
        uow_factory = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        if args.command == "account":
            return await _set_plan(args, book, uow_factory, now, out)
        return await _grant(args, book, uow_factory, now, out)


async def show_account(
    engine: Any, book: PriceBook, args: argparse.Namespace, *, now: datetime, out: TextIO
) -> int:
    """Print the account (exit 1 when there is no such account)."""
    from billing_worker.adapters.postgres.account_summary import (  # noqa: PLC0415
        account_summary,
    )

    async with engine.connect() as conn:
        report = await account_summary(conn, book, args.account, now=now, entries=args.entries)
    if report is None:
        sys.stderr.write(f"no account {args.account!r}\n")
        return 1
    if args.json:
        write_json(out, report)
        return 0
    period = report["period"]
    out.write(f"account {args.account}: plan {report['plan']} ({report['status']}), ")
    out.write(f"period {period['start'][:10]} .. {period['end'][:10]}, ")
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
            for m in report["meters"]
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
                datetime.fromisoformat(e["recorded_at"]).strftime("%Y-%m-%d %H:%M:%S"),
                e["ledger"],
                e["what"],
                e["ref"],
                e["pricebook_version"] or "-",
            ]
            for e in report["recent_entries"]
        ]
        or [["(none)", "", "", "", ""]],
    )
    _payments_table(out, report["payments"])
    return 0


def _payments_table(out: TextIO, payments: list[dict[str, Any]]) -> None:
    from billing_worker.adapters.postgres.account_view import details_text  # noqa: PLC0415

    out.write("\npayments and refunds (Stripe):\n")
    table(
        out,
        ["effective", "kind", "amount", "currency", "stripe object", "details"],
        [
            [
                datetime.fromisoformat(p["effective_at"]).strftime("%Y-%m-%d %H:%M:%S"),
                p["kind"],
                p["amount"],
                p["currency"],
                p["stripe_object_id"],
                details_text(p["details"]),
            ]
            for p in payments
        ]
        or [["(none)", "", "", "", "", ""]],
    )


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
