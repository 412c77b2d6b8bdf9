"""``billing-worker verify`` and ``billing-worker rebuild``: the projections (totals, unique
values, credit balances, invoice totals and statuses, account plans) against the ledgers.

``verify`` reads everything in one REPEATABLE READ, read-only transaction: a consistent
picture while the worker writes, since a batch commits its ledger rows and totals at once.
``rebuild`` finds the accounts with differences that way, then repairs each in its own
transaction under the account lock (``adapters/postgres/projection_repair.py``).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.errors import translate
from billing_worker.adapters.postgres.projections import (
    PROJECTIONS,
    Difference,
    MeterTerms,
    checked_rows,
    find_differences,
    load_meter_terms,
)
from billing_worker.config import Settings
from billing_worker.domain.errors import TransientError
from billing_worker.domain.pricebook import PriceBook
from billing_worker.entrypoints.cli_support import (
    command_database,
    configured_pricebook,
    fail,
    table,
    write_json,
)
from billing_worker.entrypoints.progress import progress
from schemas.events import format_decimal

ACCOUNT_EXISTS = text("SELECT 1 FROM accounts WHERE account_id = :account")


async def run_projection_command(args: argparse.Namespace, settings: Settings) -> int:
    """``verify`` or ``rebuild``; return the exit status."""
    from billing_worker.adapters.postgres.database import redacted  # noqa: PLC0415

    book = configured_pricebook(settings)
    url = settings.database_url.get_secret_value()
    unreachable = f"cannot reach the database (BILLING_DATABASE_URL={redacted(url)})"
    writes = args.command == "rebuild" and args.yes
    async with command_database(settings, book, writes=writes) as engine:
        try:
            if args.account is not None and not await _exists(engine, args.account):
                return fail(f"no account {args.account!r}")
            if args.command == "verify":
                return await _verify(engine, book, args.account, as_json=args.json, out=sys.stdout)
            return await _rebuild(engine, book, args, out=sys.stdout)
        except Exception as exc:
            if isinstance(translate(exc), TransientError):
                return fail(f"{unreachable}: {_first_line(exc)}")
            raise


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else repr(orig)


async def _exists(engine: AsyncEngine, account: str) -> bool:
    async with engine.connect() as conn:
        return (await conn.execute(ACCOUNT_EXISTS, {"account": account})).first() is not None


async def consistent_differences(
    engine: AsyncEngine, book: PriceBook, account: str | None
) -> tuple[MeterTerms, list[Difference], dict[str, int]]:
    """Meter terms, differences and row counts, read in one read-only snapshot."""
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            terms = await load_meter_terms(conn, book)
            found = await find_differences(conn, terms, account)
            counts = await checked_rows(conn, account)
    return terms, found, counts


async def _verify(
    engine: AsyncEngine, book: PriceBook, account: str | None, *, as_json: bool, out: TextIO
) -> int:
    _, found, counts = await consistent_differences(engine, book, account)
    if as_json:
        write_json(
            out,
            {
                "clean": not found,
                "account": account,
                "checked": counts,
                "differences": [d.as_json() for d in found],
            },
        )
        return 1 if found else 0
    checked = ", ".join(f"{n} {name}" for name, n in counts.items())
    scope = f" of account {account}" if account else ""
    if not found:
        out.write(f"verify: every projection{scope} matches the ledgers (checked {checked})\n")
        return 0
    out.write(
        f"verify: {len(found)} difference(s){scope} between the projections and the ledgers "
        f"(checked {checked})\n\n"
    )
    print_differences(found, out)
    out.write("\nrepair them with `billing-worker rebuild --yes` (see `rebuild` without --yes)\n")
    return 1


async def _rebuild(
    engine: AsyncEngine, book: PriceBook, args: argparse.Namespace, *, out: TextIO
) -> int:
    from billing_worker.adapters.postgres.projection_repair import (  # noqa: PLC0415
        rebuild_account,
    )

    terms, found, _ = await consistent_differences(engine, book, args.account)
    accounts = sorted({d.account for d in found})
    if not args.yes:
        return _preview(found, accounts, as_json=args.json, out=out)
    repaired: list[Difference] = []
    failed: list[dict[str, str]] = []
    with progress("rebuilding accounts", total=len(accounts), unit="account") as bar:
        for account in accounts:
            try:
                repaired.extend(await rebuild_account(engine, account, terms))
            except sa_exc.DBAPIError as exc:  # one account's bad data must not stop the rest
                failed.append({"account": account, "error": _first_line(exc)})
            bar.update(1)
    if args.json:
        write_json(
            out,
            {
                "accounts": len(accounts),
                "repaired": [d.as_json() for d in repaired],
                "failed": failed,
            },
        )
    else:
        changed = len({d.account for d in repaired})
        out.write(f"rebuild: repaired {len(repaired)} difference(s) in {changed} account(s)\n")
        if repaired:
            out.write("\n")
            print_differences(repaired, out, stored="was", expected="now")
        for failure in failed:
            out.write(f"could not repair {failure['account']}: {failure['error']}\n")
        if failed:
            out.write(
                "the database refused what the ledgers say for those accounts (e.g. credits "
                "burned past a grant after its balance was changed by hand): correct the "
                "ledgers with a reversing entry, then rebuild again\n"
            )
    return 1 if failed else 0


def _preview(found: list[Difference], accounts: list[str], *, as_json: bool, out: TextIO) -> int:
    if as_json:
        write_json(out, {"dry_run": True, "differences": [d.as_json() for d in found]})
        return 1 if found else 0
    if not found:
        out.write("rebuild: every projection matches the ledgers; nothing to repair\n")
        return 0
    out.write(f"rebuild would repair {len(found)} difference(s) in {len(accounts)} account(s):\n\n")
    print_differences(found, out)
    out.write("\nnothing was changed: add --yes to write the repairs\n")
    return 1


def print_differences(
    found: list[Difference], out: TextIO, *, stored: str = "stored", expected: str = "ledger says"
) -> None:
    """One line per differing field, projections in a fixed order."""
    rows = []
    for d in sorted(found, key=lambda d: (PROJECTIONS.index(d.projection), d.account)):
        for name, was, wanted in d.changes():
            rows.append([d.projection, d.account, _key(d), name, _shown(was), _shown(wanted)])
    table(out, ["projection", "account", "key", "field", stored, expected], rows)


def _key(difference: Difference) -> str:
    key = difference.key
    if "grant_id" in key:
        return f"grant {key['grant_id']}"
    if "invoice_id" in key:
        return f"invoice {key['invoice_id']}"
    return " ".join(_shown(value) for value in key.values()) or "-"


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format_decimal(value)
    return str(value)
