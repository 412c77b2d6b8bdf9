"""Our side of reconciling with Stripe (invoices, lines, payment ledger) and its findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_worker.service.reconcile_model import (
    Difference,
    LedgerRefund,
    OurAccount,
    OurInvoice,
    OurLine,
)

ALL = "all"

# Every invoice the sync pushed, and every other one of a Stripe-linked account (one that
# should have been pushed, or whose id Stripe must not carry).
INVOICES = text("""
    SELECT i.invoice_id, i.account_id, i.status, i.currency, i.period_start, i.closed_at,
           i.stripe_sync_target, i.stripe_synced_at, i.stripe_invoice_id,
           i.stripe_subscription_id, i.stripe_sync_error, i.stripe_total
    FROM invoices AS i
    WHERE (i.stripe_synced_at IS NOT NULL
           OR EXISTS (SELECT 1 FROM stripe_customers AS sc WHERE sc.account_id = i.account_id))
      AND (CAST(:start AS timestamptz) IS NULL
           OR (i.period_start >= :start AND i.period_start < :end))
    ORDER BY i.period_start, i.invoice_id
""")

LINES = text("""
    SELECT invoice_id, line_no, amount, billed_by FROM invoice_lines
    WHERE invoice_id = ANY(:ids) ORDER BY invoice_id, line_no
""")

CUSTOMERS = text("""
    SELECT account_id, customer_id FROM stripe_customers
    WHERE account_id = ANY(:accounts) ORDER BY account_id, linked_at, customer_id
""")

# An invoice payment names the Stripe invoice; a refund the charge (and its payment intent).
PAYMENTS = text("""
    SELECT account_id, stripe_object_id, sum(amount) FROM payment_ledger
    WHERE kind = 'payment' AND account_id = ANY(:accounts)
    GROUP BY account_id, stripe_object_id
""")

REFUNDS = text("""
    SELECT account_id, stripe_object_id, details ->> 'payment_intent', -amount
    FROM payment_ledger
    WHERE kind = 'refund' AND account_id = ANY(:accounts)
    ORDER BY entry_id
""")

# Two runs at once would each delete what the other had not yet committed.
LOCK_FINDINGS = text("SELECT pg_advisory_xact_lock(hashtext('stripe_reconcile_differences'))")
CLEAR_ALL = text("DELETE FROM stripe_reconcile_differences")
CLEAR_PERIOD = text("DELETE FROM stripe_reconcile_differences WHERE period = :period")
INSERT_FINDING = text("""
    INSERT INTO stripe_reconcile_differences
        (period, kind, invoice_id, account_id, stripe_object_id, cause, found_at)
    VALUES (:period, :kind, :invoice_id, :account_id, :stripe_object_id, :cause, :found_at)
""")
SAVE_RUN = text("""
    INSERT INTO stripe_reconcile_runs (scope, ran_at, invoices_checked, differences)
    VALUES (:scope, :ran_at, :checked, :differences)
    ON CONFLICT (scope) DO UPDATE SET ran_at = excluded.ran_at,
        invoices_checked = excluded.invoices_checked, differences = excluded.differences
""")

OPEN_BY_KIND = text("SELECT kind, count(*) FROM stripe_reconcile_differences GROUP BY kind")
LAST_RUN = text("SELECT max(ran_at) FROM stripe_reconcile_runs")


@dataclass(frozen=True, slots=True)
class OurSide:
    """What reconciling compares Stripe with, read in one snapshot."""

    invoices: tuple[OurInvoice, ...]
    accounts: dict[str, OurAccount]

    @property
    def customers(self) -> tuple[str, ...]:
        """Every Stripe customer of the accounts read."""
        return tuple(c for account in self.accounts.values() for c in account.customers)


def month_bounds(period: str) -> tuple[datetime, datetime]:
    """``2026-11`` -> its first instant and the next month's, in UTC."""
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def read_our_side(engine: AsyncEngine, period: str | None) -> OurSide:
    """Invoices of ``period`` (``YYYY-MM`` of their start; None: every period), with their
    lines, customers and payment ledger rows, in one read-only REPEATABLE READ snapshot."""
    start, end = month_bounds(period) if period is not None else (None, None)
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            rows = (await conn.execute(INVOICES, {"start": start, "end": end})).all()
            ids = [row[0] for row in rows]
            lines: dict[str, list[OurLine]] = {}
            for invoice_id, line_no, amount, billed_by in await conn.execute(LINES, {"ids": ids}):
                lines.setdefault(invoice_id, []).append(OurLine(line_no, amount, billed_by))
            accounts = await _accounts(conn, sorted({row[1] for row in rows}))
    invoices = tuple(
        OurInvoice(
            invoice_id=row[0],
            account_id=row[1],
            status=row[2],
            currency=row[3],
            period_start=row[4],
            closed_at=row[5],
            lines=tuple(lines.get(row[0], ())),
            target=row[6],
            synced_at=row[7],
            stripe_invoice_id=row[8],
            stripe_subscription_id=row[9],
            sync_error=row[10],
            stripe_total=row[11],
        )
        for row in rows
    )
    return OurSide(invoices, accounts)


async def _accounts(conn: AsyncConnection, ids: list[str]) -> dict[str, OurAccount]:
    params = {"accounts": ids}
    customers: dict[str, list[str]] = {}
    for account, customer in await conn.execute(CUSTOMERS, params):
        customers.setdefault(account, []).append(customer)
    payments: dict[str, dict[str, Decimal]] = {}
    for account, stripe_id, amount in await conn.execute(PAYMENTS, params):
        payments.setdefault(account, {})[stripe_id] = amount
    refunds: dict[str, list[LedgerRefund]] = {}
    for account, charge, intent, amount in await conn.execute(REFUNDS, params):
        refunds.setdefault(account, []).append(LedgerRefund(charge, intent, amount))
    return {
        account: OurAccount(
            account,
            tuple(customers.get(account, ())),
            payments.get(account, {}),
            tuple(refunds.get(account, ())),
        )
        for account in ids
    }


async def save_findings(
    engine: AsyncEngine,
    scope: str,
    found: Sequence[Difference],
    *,
    ran_at: datetime,
    checked: int,
) -> None:
    """Replace the open differences of ``scope`` (``all`` or a month) with ``found``."""
    async with engine.begin() as conn:
        await conn.execute(LOCK_FINDINGS)
        if scope == ALL:
            await conn.execute(CLEAR_ALL)
        else:
            await conn.execute(CLEAR_PERIOD, {"period": scope})
        if found:
            await conn.execute(
                INSERT_FINDING,
                [
                    {
                        "period": d.period,
                        "kind": d.kind,
                        "invoice_id": d.invoice_id,
                        "account_id": d.account_id,
                        "stripe_object_id": d.stripe_object_id,
                        "cause": d.cause,
                        "found_at": ran_at,
                    }
                    for d in found
                ],
            )
        await conn.execute(
            SAVE_RUN,
            {"scope": scope, "ran_at": ran_at, "checked": checked, "differences": len(found)},
        )


async def open_differences(engine: AsyncEngine) -> tuple[dict[str, int], datetime | None]:
    """Open differences by kind, and when a reconcile run last finished (None: never)."""
    async with engine.connect() as conn:
        counts = {kind: int(n) for kind, n in await conn.execute(OPEN_BY_KIND)}
        last = (await conn.execute(LAST_RUN)).scalar_one()
    return counts, last
