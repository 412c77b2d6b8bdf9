"""Operator commands for periods and invoices: ``close-periods``, ``invoice show``
(``--explain``), ``invoice pdf``, ``invoice void``, ``invoice mark-uncollectible``,
``report``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.invoice_pdf import Seller, render_invoice_pdf
from billing_worker.adapters.postgres.invoice_document import invoice_document
from billing_worker.adapters.postgres.reports import period_report
from billing_worker.adapters.postgres.stripe_reads import account_stripe
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.config import Settings
from billing_worker.domain.periods import calendar_month_of
from billing_worker.domain.pricebook import PriceBook
from billing_worker.entrypoints.cli_support import (
    command_database,
    configured_pricebook,
    iso_time,
    table,
    write_json,
)
from billing_worker.service.invoices import InvoiceNotFound, close_due_periods, move_invoice


def add_invoicing_commands(commands: Any) -> None:
    """Register the sub-commands."""
    close = commands.add_parser(
        "close-periods", help="close every due billing period into an invoice, now"
    )
    close.add_argument("--account", help="only this account")
    close.add_argument("--as-of", type=iso_time, help="pretend it is this time (ISO 8601)")
    close.add_argument("--json", action="store_true", help="machine-readable output")

    invoice = commands.add_parser("invoice", help="look at an invoice or change its status")
    actions = invoice.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the invoice as a table")
    show.add_argument("invoice_id")
    show.add_argument(
        "--explain", action="store_true", help="list the ledger entries behind each line"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    pdf = actions.add_parser("pdf", help="the invoice as a PDF file (as the HTTP API serves it)")
    pdf.add_argument("invoice_id")
    pdf.add_argument("-o", "--output", required=True, type=Path, help="where to write it")
    finalize = actions.add_parser(
        "finalize",
        help="move a draft invoice (BILLING_INVOICE_REVIEW) to open: it is announced "
        "(invoice.ready) and pushed to Stripe",
    )
    finalize.add_argument("invoice_id")
    for action, status in (("void", "void"), ("mark-uncollectible", "uncollectible")):
        move = actions.add_parser(action, help=f"mark the invoice {status} (a ledger entry)")
        move.add_argument("invoice_id")

    report = commands.add_parser("report", help="revenue and invoices of one month")
    report.add_argument("--period", required=True, type=_month, help="YYYY-MM")
    report.add_argument("--json", action="store_true", help="machine-readable output")


def _month(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month like 2026-11: {value!r}") from None


async def run_invoicing_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch; return the exit status. ``invoice show`` and ``report`` only read."""
    book = configured_pricebook(settings)
    reads_only = args.command == "report" or getattr(args, "action", None) in ("show", "pdf")
    async with command_database(settings, book, writes=not reads_only) as engine:
        return await _run(args, settings, book, engine)


async def _run(
    args: argparse.Namespace, settings: Settings, book: PriceBook, engine: AsyncEngine
) -> int:
    out = sys.stdout
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    now = settings.clock()
    if args.command == "close-periods":
        closed = await close_due_periods(
            uow,
            book,
            as_of=args.as_of or now,
            grace=timedelta(seconds=settings.close_grace_seconds),
            account=args.account,
            review=settings.invoice_review,
        )
        rows = [
            [c.invoice_id, c.account, f"{c.period.start:%Y-%m}", c.total, c.currency]
            for c in closed
        ]
        if args.json:
            keys = ["invoice_id", "account", "period", "total", "currency"]
            out.write(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2) + "\n")
        else:
            out.write(f"closed {len(closed)} period(s)\n")
            if rows:
                table(out, ["invoice", "account", "period", "total", "currency"], rows)
        return 0
    if args.command == "report":
        async with engine.connect() as conn:
            report = await period_report(conn, calendar_month_of(args.period))
        _print_report(report, as_json=args.json, out=out)
        return 0
    if args.action == "show":
        return await show_invoice(
            engine, book, args.invoice_id, explain=args.explain, as_json=args.json, out=out
        )
    if args.action == "pdf":
        return await write_invoice_pdf(engine, book, settings, args.invoice_id, args.output)
    status = {"void": "void", "finalize": "open"}.get(args.action, "uncollectible")
    try:
        before, after = await move_invoice(
            uow, book, invoice_id=args.invoice_id, status=status, cause="operator", now=now
        )
    except InvoiceNotFound as exc:
        sys.stderr.write(f"billing-worker: {exc.detail}\n")
        return 1
    out.write(f"{args.invoice_id}: {before} -> {after}\n")
    return 0


async def write_invoice_pdf(
    engine: AsyncEngine, book: PriceBook, settings: Settings, invoice_id: str, output: Path
) -> int:
    """Write the invoice's PDF to ``output``: exit status 0, nothing on stdout and a line
    on stderr naming the file; 1 when there is no such invoice or the file can't be
    written."""
    async with engine.connect() as conn:
        document = await invoice_document(conn, book, invoice_id, explain=False)
        if document is None:
            sys.stderr.write(f"billing-worker: no invoice {invoice_id!r}\n")
            return 1
        customer, _ = await account_stripe(conn, document["account"])
    body = render_invoice_pdf(document, Seller.from_settings(settings), customer=customer)
    try:
        await asyncio.to_thread(output.write_bytes, body)
    except OSError as exc:
        sys.stderr.write(f"billing-worker: can't write {output}: {exc.strerror or exc}\n")
        return 1
    sys.stderr.write(f"wrote {output} ({len(body):,} bytes)\n")
    return 0


async def show_invoice(
    engine: AsyncEngine,
    book: PriceBook,
    invoice_id: str,
    *,
    explain: bool,
    as_json: bool,
    out: TextIO,
) -> int:
    """Print invoice ``invoice_id`` (``invoice show``; the demo prints its invoice with it);
    exit status 1 when there is no such invoice."""
    async with engine.connect() as conn:
        invoice = await invoice_document(conn, book, invoice_id, explain=explain)
    if invoice is None:
        sys.stderr.write(f"no invoice {invoice_id!r}\n")
        return 1
    if as_json:
        write_json(out, invoice)
        return 0
    out.write(
        f"invoice {invoice['invoice_id']}"
        + (f" (number {invoice['number']})" if invoice["number"] else "")
        + f" — account {invoice['account']}, "
        f"{invoice['period']['start'][:10]} .. {invoice['period']['end'][:10]}, "
        f"plan {invoice['plan']}, {invoice['status']}, price book {invoice['pricebook_version']}\n"
    )
    if (
        invoice["stripe_invoice_id"]
        or invoice["stripe_sync_error"]
        or invoice["stripe_sync_target"]
    ):
        error = invoice["stripe_sync_error"]
        onto = invoice["stripe_subscription_id"]
        out.write(
            f"stripe: {invoice['stripe_invoice_id'] or '-'}"
            + (f" (pending items on subscription {onto})" if onto else "")
            + (f" (sync error: {error})" if error else "")
            + (f", tax {invoice['tax']}" if invoice["tax"] is not None else "")
            + "\n"
        )
    out.write("\n")
    lines = invoice["lines"]
    rows = [
        [x["line_no"], x["kind"], x["description"], x["price"] or "", x["amount"]] for x in lines
    ]
    rows.append(["", "", "subtotal", "", invoice["subtotal"]])
    credit_words = f"credits applied: {invoice['credits_applied']}"
    if invoice["credits_shortfall"] != "0":
        credit_words += f"; not covered by a grant: {invoice['credits_shortfall']}"
    rows.append(["", "", credit_words, "", ""])
    rows.append(["", "", f"TOTAL ({invoice['currency']})", "", invoice["total"]])
    if invoice["billed_by_subscription"] != "0":
        rows.append(
            ["", "", "  billed by Stripe subscription", "", invoice["billed_by_subscription"]]
        )
        rows.append(["", "", "  billed by the worker", "", invoice["billed_by_worker"]])
    table(out, ["#", "kind", "description", "price", "amount"], rows)
    if explain:
        for line in lines:
            _explain_line(line, out)
    return 0


def _explain_line(line: dict[str, Any], out: TextIO) -> None:
    out.write(f"\nline {line['line_no']} ({line['kind']}): {line['description']}\n")
    out.write(
        f"  quantity {line['quantity']}, included {line['included']}, free "
        f"{line['free_quantity']}, billable {line['billable']}; exact amount "
        f"{line['unrounded']}, rounded once to {line['amount']}\n"
    )
    for tier in line["tiers"]:
        out.write(
            f"  tier {tier['tier']}: {tier['units']} units ({tier['from']}..{tier['to']}) "
            f"at {tier['unit_price']} + {tier['flat_fee']} = {tier['amount']}\n"
        )
    behind = line["entries_behind"]
    if not behind:
        return
    listed = line["ledger_entries"]
    more = f" (first {len(listed)}):\n" if behind > len(listed) else ":\n"
    out.write(
        f"  {behind} ledger entries, ids {line['first_entry_id']}..{line['last_entry_id']}" + more
    )
    for entry in listed:
        out.write(
            f"    #{entry['entry_id']} {entry['event_source']}/{entry['event_id']} "
            f"{entry['event_type']} {entry['quantity']} at "
            f"{entry['occurred_at'][:19].replace('T', ' ')} "
            f"(price book {entry['pricebook_version']})\n"
        )


def _print_report(report: dict[str, Any], *, as_json: bool, out: TextIO) -> None:
    if as_json:
        write_json(out, report)
        return
    out.write(
        f"report {report['period']['start'][:7]}: {report['invoices']} invoice(s), "
        f"{report['active_accounts']} active account(s)\n\n"
    )
    table(
        out,
        ["plan", "currency", "invoices", "revenue"],
        [[r["plan"], r["currency"], r["invoices"], r["revenue"]] for r in report["by_plan"]]
        or [["(none)", "", "", ""]],
    )
    out.write("\n")
    table(
        out,
        ["meter", "currency", "revenue"],
        [[r["meter"], r["currency"], r["revenue"]] for r in report["by_meter"]]
        or [["(none)", "", ""]],
    )
    out.write("\n")
    table(
        out,
        ["status", "currency", "invoices", "amount"],
        [[r["status"], r["currency"], r["invoices"], r["amount"]] for r in report["by_status"]]
        or [["(none)", "", "", ""]],
    )
    out.write("\n")
    table(
        out,
        ["billed by", "currency", "amount"],
        [[_biller(r["billed_by"]), r["currency"], r["amount"]] for r in report["billed_by"]]
        or [["(none)", "", ""]],
    )
    credit = report["credits"]
    out.write(
        f"\ncredits: {credit['applied']} applied, {credit['shortfall']} not covered by a grant\n"
    )


def _biller(billed_by: str) -> str:
    return "Stripe subscription" if billed_by == "stripe_subscription" else "the worker"
