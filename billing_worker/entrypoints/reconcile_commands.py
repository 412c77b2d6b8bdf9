"""``billing-worker reconcile stripe``: what Stripe holds against our invoices and ledger.

It reads Stripe (GET requests only) and our database (one read-only snapshot), lists every
difference with its cause and repair, and replaces the open differences of its scope in
``stripe_reconcile_differences``, which the worker's gauges read. It writes no ledger.

Exit status: 0 Stripe and the ledger agree, 1 differences found, 2 bad input, Stripe
features off (no BILLING_STRIPE_API_KEY), or Stripe or the database unreachable.
"""

# ruff: noqa: PLC0415 - the adapters are imported when the command runs (fast --help)
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from billing_worker.config import Settings
from billing_worker.entrypoints.cli_support import (
    command_database,
    configured_pricebook,
    fail,
    table,
    write_json,
)
from billing_worker.service.reconcile_kinds import REPAIRS

if TYPE_CHECKING:
    from billing_worker.service.reconcile_model import Difference

MONTH = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


def add_reconcile_commands(commands: Any) -> None:
    """Register ``reconcile stripe``."""
    reconcile = commands.add_parser(
        "reconcile",
        help="compare our invoices and payment ledger with what an outside system holds",
    )
    targets = reconcile.add_subparsers(dest="target", required=True, metavar="TARGET")
    stripe = targets.add_parser(
        "stripe",
        help="every invoice pushed to Stripe against Stripe's invoices, items, payments and "
        "refunds (BILLING_STRIPE_API_KEY, read-only); exit 1 on any difference",
    )
    stripe.add_argument(
        "--period", type=_month, help="only invoices whose period starts in this month (YYYY-MM)"
    )
    stripe.add_argument("--json", action="store_true", help="machine-readable output")


def _month(text: str) -> str:
    if not MONTH.match(text):
        raise argparse.ArgumentTypeError(f"not a month like 2026-11: {text!r}")
    return text


async def run_reconcile_command(args: argparse.Namespace, settings: Settings) -> int:
    """``reconcile stripe``; return the exit status."""
    from billing_worker.adapters.postgres.database import redacted
    from billing_worker.adapters.postgres.errors import translate
    from billing_worker.adapters.postgres.reconcile_store import (
        ALL,
        read_our_side,
        save_findings,
    )
    from billing_worker.adapters.stripe_reconcile import (
        StripeReadError,
        StripeReadRequest,
        StripeReconcileReader,
    )
    from billing_worker.domain.errors import TransientError
    from billing_worker.service.reconcile import reconcile

    key = settings.stripe_api_key
    if key is None or not key.get_secret_value():
        return fail(
            "Stripe features are off without BILLING_STRIPE_API_KEY: there is no Stripe "
            "account to reconcile with"
        )
    scope = args.period or ALL
    url = settings.database_url.get_secret_value()
    async with command_database(settings, configured_pricebook(settings), writes=False) as engine:
        try:
            ours = await read_our_side(engine, args.period)
            reader = StripeReconcileReader(
                key.get_secret_value(), api_base=settings.stripe_api_base
            )
            try:
                view = await reader.read(
                    StripeReadRequest(
                        customers=ours.customers,
                        invoice_ids=tuple(
                            i.stripe_invoice_id for i in ours.invoices if i.stripe_invoice_id
                        ),
                        subscription_ids=tuple(
                            i.stripe_subscription_id
                            for i in ours.invoices
                            if i.stripe_subscription_id
                        ),
                    )
                )
            except StripeReadError as exc:
                base = settings.stripe_api_base or "Stripe's"
                return fail(f"cannot read Stripe (BILLING_STRIPE_API_BASE={base}): {exc.detail}")
            now = settings.clock()
            found = reconcile(ours.invoices, ours.accounts, view, now=now, strays=scope == ALL)
            await save_findings(engine, scope, found, ran_at=now, checked=len(ours.invoices))
        except Exception as exc:
            if isinstance(translate(exc), TransientError):
                return fail(f"cannot reach the database (BILLING_DATABASE_URL={redacted(url)})")
            raise
    report = Report(scope, len(ours.invoices), now, found)
    if args.json:
        write_json(sys.stdout, report.as_json())
    else:
        report.write(sys.stdout)
    return 1 if found else 0


class Report:
    """What one run found, as text or JSON."""

    def __init__(self, scope: str, checked: int, ran_at: datetime, found: list[Difference]) -> None:
        self.scope = scope
        self.checked = checked
        self.ran_at = ran_at
        self.found = found

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON object."""
        return {
            "clean": not self.found,
            "scope": self.scope,
            "ran_at": self.ran_at,
            "invoices_checked": self.checked,
            "counts": dict(sorted(Counter(d.kind for d in self.found).items())),
            "differences": [d.as_json() for d in self.found],
        }

    def write(self, out: TextIO) -> None:
        """A summary line, a table of the differences, each cause, each kind's repair."""
        scope = "every period" if self.scope == "all" else f"period {self.scope}"
        if not self.found:
            out.write(
                f"reconcile stripe: Stripe agrees with the ledger on all {self.checked} "
                f"invoice(s) checked ({scope})\n"
            )
            return
        invoices = len({d.invoice_id for d in self.found})
        out.write(
            f"reconcile stripe: {len(self.found)} difference(s) in {invoices} invoice(s) "
            f"of {self.checked} checked ({scope})\n\n"
        )
        table(
            out,
            ["kind", "invoice", "account", "stripe object", "ours", "stripe"],
            [
                [
                    d.kind,
                    d.invoice_id,
                    d.account_id or "-",
                    d.stripe_object_id or "-",
                    d.ours or "-",
                    d.stripe or "-",
                ]
                for d in self.found
            ],
        )
        out.write("\ncauses:\n")
        for d in self.found:
            out.write(f"  {d.kind} {d.invoice_id}: {d.cause}\n")
        out.write("\nrepairs:\n")
        for kind in dict.fromkeys(d.kind for d in self.found):
            out.write(f"  {kind}: {REPAIRS[kind]}\n")
