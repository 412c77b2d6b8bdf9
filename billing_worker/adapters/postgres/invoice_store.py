"""Invoices on PostgreSQL: which periods are due, what a period holds, the invoice rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import text

from billing_worker.adapters.postgres.closing_reads import (
    DIMENSION_VALUE,
    LINE_DIMENSION,
    ClosingReads,
    stored_dimension,
)
from billing_worker.adapters.postgres.sync_records import SyncRecords
from billing_worker.domain.invoice_model import (
    InvoiceDraft,
    InvoiceLine,
    StoredInvoice,
)
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import DimensionValue

CLOSED_PERIODS = text("""
    SELECT i.account_id, i.period_start
    FROM invoices AS i
    JOIN json_to_recordset(CAST(:rows AS json)) AS p(a text, ps timestamptz)
      ON i.account_id = p.a AND i.period_start = p.ps
""")

INVOICE_FOR = text("""
    SELECT invoice_id FROM invoices WHERE account_id = :account AND period_start = :start
""")

INSERT_INVOICE = text("""
    INSERT INTO invoices (invoice_id, account_id, period_start, period_end, status, plan,
                          currency, subtotal, credits_applied, credits_shortfall, total,
                          pricebook_version, last_entry_id, closed_at)
    VALUES (:id, :account, :start, :end, :status, :plan, :currency, :subtotal, :credits,
            :shortfall, :total, :version, :last_entry_id, :closed_at)
    ON CONFLICT (account_id, period_start) DO NOTHING
    RETURNING invoice_id
""")

INSERT_LINES = text("""
    INSERT INTO invoice_lines (invoice_id, line_no, kind, description, meter, dimension_value,
                               dimension_kind, quantity, included, free_quantity, billable,
                               price, tiers, amount, unrounded, entries, first_entry_id,
                               last_entry_id, refers_to_start, refers_to_end, billed_by,
                               stripe_subscription_id)
    SELECT :id, l.n, l.k, l.d, l.m, l.dv, l.dk, l.q, l.inc, l.f, l.b, l.p, l.t, l.a, l.u, l.e,
           l.fe, l.le, l.rs, l.re, l.by, l.sub
    FROM json_to_recordset(CAST(:lines AS json)) AS l(
        n int, k text, d text, m text, dv text, dk text, q numeric, inc numeric, f numeric,
        b numeric, p text, t jsonb, a numeric, u numeric, e int, fe bigint, le bigint,
        rs timestamptz, re timestamptz, by text, sub text)
""")

GET_INVOICE = text("""
    SELECT invoice_id, account_id, period_start, period_end, status, plan, currency,
           subtotal, credits_applied, credits_shortfall, total, pricebook_version,
           last_entry_id, closed_at, stripe_invoice_id, stripe_sync_error, stripe_sync_attempts,
           stripe_sync_target, stripe_subscription_id, tax, stripe_total, number
    FROM invoices WHERE invoice_id = :id
""")

LOCK_INVOICE = text("SELECT status FROM invoices WHERE invoice_id = :id FOR UPDATE")

SET_STATUS = text("UPDATE invoices SET status = :status WHERE invoice_id = :id")

# The year's counter row stays locked until the transaction ends: numbers go out one at a
# time, and a rollback gives its number back (see migration 0012).
ASSIGN_NUMBER = text("""
    WITH next AS (
        INSERT INTO invoice_number_series AS s (year, last_number) VALUES (:year, 1)
        ON CONFLICT (year) DO UPDATE SET last_number = s.last_number + 1
        RETURNING last_number
    )
    UPDATE invoices
    SET number = :year || '-' || lpad(next.last_number::text,
                                      greatest(6, length(next.last_number::text)), '0')
    FROM next WHERE invoice_id = :id AND number IS NULL
    RETURNING number
""")

GET_LINES = text(f"""
    SELECT line_no, kind, description, meter,
           {
    LINE_DIMENSION.format(l="invoice_lines", text="dimension_value", kind="dimension_kind")
},
           quantity, included,
           free_quantity, billable, price, tiers, amount, unrounded, entries,
           first_entry_id, last_entry_id, refers_to_start, refers_to_end, billed_by,
           stripe_subscription_id
    FROM invoice_lines WHERE invoice_id = :id ORDER BY line_no
""")

# The entries behind a line: its meter's in the line's range, and for a per-dimension line
# only those carrying its value (of its kind), counted whole and listed up to :limit.
LINE_ENTRIES = text(f"""
    WITH behind AS (
        SELECT entry_id, event_source, event_id, event_type, occurred_at, quantity,
               pricebook_version,
               {
    DIMENSION_VALUE.format(d="CAST(:field AS text)", dims="dimensions", text="dv", kind="dk")
}
        FROM usage_ledger
        WHERE account_id = :account AND period_start = :start AND meter = :meter
          AND entry_id BETWEEN :first AND :last
    )
    SELECT entry_id, event_source, event_id, event_type, occurred_at, quantity,
           pricebook_version, count(*) OVER () AS of
    FROM behind
    WHERE CAST(:field AS text) IS NULL OR (dv = :value AND dk = :kind)
    ORDER BY entry_id
    LIMIT :limit
""")


def _json(rows: object) -> str:
    return orjson.dumps(rows, default=str).decode()


class PostgresInvoices(ClosingReads, SyncRecords):
    """``InvoiceStore`` on one open transaction."""

    async def closed_periods(
        self, pairs: Sequence[tuple[str, datetime]]
    ) -> set[tuple[str, datetime]]:
        """Those (account, period start) pairs already invoiced."""
        rows = [{"a": a, "ps": start.isoformat()} for a, start in pairs]
        result = await self._conn.execute(CLOSED_PERIODS, {"rows": _json(rows)})
        return {(str(a), start) for a, start in result}

    async def invoice_for(self, account: str, period: BillingPeriod) -> str | None:
        """The id of the account's invoice for ``period``, if it was closed."""
        row = (
            await self._conn.execute(INVOICE_FOR, {"account": account, "start": period.start})
        ).first()
        return str(row[0]) if row is not None else None

    async def insert(
        self,
        invoice_id: str,
        draft: InvoiceDraft,
        *,
        status: str,
        last_entry_id: int | None,
        closed_at: datetime,
    ) -> bool:
        """Write the invoice and its lines; False if the period was invoiced already."""
        inserted = (
            await self._conn.execute(
                INSERT_INVOICE,
                {
                    "id": invoice_id,
                    "account": draft.account,
                    "start": draft.period.start,
                    "end": draft.period.end,
                    "status": status,
                    "plan": draft.plan,
                    "currency": draft.currency,
                    "subtotal": draft.subtotal,
                    "credits": draft.credits_applied,
                    "shortfall": draft.credits_shortfall,
                    "total": draft.total,
                    "version": draft.pricebook_version,
                    "last_entry_id": last_entry_id,
                    "closed_at": closed_at,
                },
            )
        ).first()
        if inserted is None:
            return False
        lines = [
            {
                "n": n,
                "k": line.kind,
                "d": line.description,
                "m": line.meter,
                "dv": line.dimension_value.text if line.dimension_value else None,
                "dk": line.dimension_value.kind.value if line.dimension_value else None,
                "q": str(line.quantity),
                "inc": str(line.included),
                "f": str(line.free_quantity),
                "b": str(line.billable),
                "p": line.price,
                "t": [_tier(t) for t in line.tiers],
                "a": str(line.amount),
                "u": str(line.unrounded),
                "e": line.entries,
                "fe": line.first_entry_id,
                "le": line.last_entry_id,
                "rs": line.refers_to.start.isoformat() if line.refers_to else None,
                "re": line.refers_to.end.isoformat() if line.refers_to else None,
                "by": line.billed_by,
                "sub": line.stripe_subscription_id,
            }
            for n, line in enumerate(draft.lines, start=1)
        ]
        await self._conn.execute(INSERT_LINES, {"id": invoice_id, "lines": _json(lines)})
        return True

    async def get(self, invoice_id: str, *, lock: bool = False) -> StoredInvoice | None:
        """The invoice (locked until the transaction ends with ``lock``)."""
        if lock:
            await self._conn.execute(LOCK_INVOICE, {"id": invoice_id})
        row = (await self._conn.execute(GET_INVOICE, {"id": invoice_id})).first()
        if row is None:
            return None
        (iid, account, start, end, status, plan, currency, subtotal, applied, short, total,
         version, last_entry_id, closed_at, stripe_id, stripe_error, attempts, target,
         subscription, tax, stripe_total, number) = row  # fmt: skip
        return StoredInvoice(
            iid, account, BillingPeriod(start, end), status, plan, currency, subtotal,
            applied, short, total, version, last_entry_id, closed_at, stripe_id, stripe_error,
            attempts, target, subscription, tax, stripe_total, number,
        )  # fmt: skip

    async def set_status(self, invoice_id: str, status: str) -> None:
        """Move the invoice to ``status`` (the caller writes the ledger entry)."""
        await self._conn.execute(SET_STATUS, {"id": invoice_id, "status": status})

    async def assign_number(self, invoice_id: str, issued_at: datetime) -> str:
        """Give the invoice the next number of ``issued_at``'s year; the counter row stays
        locked until the transaction ends, so call this last before committing."""
        year = issued_at.astimezone(UTC).year
        row = (await self._conn.execute(ASSIGN_NUMBER, {"id": invoice_id, "year": year})).first()
        if row is None:
            raise ValueError(f"invoice {invoice_id} is missing or numbered already")
        return str(row[0])

    async def as_draft(self, invoice: StoredInvoice) -> InvoiceDraft:
        """The stored invoice with its lines, as the close built it (tiers left out)."""
        lines = tuple(
            InvoiceLine(
                kind=row["kind"],
                description=row["description"],
                amount=row["amount"],
                meter=row["meter"],
                dimension_value=stored_dimension(row["dimension_value"], row["dimension_kind"]),
                quantity=row["quantity"],
                included=row["included"],
                free_quantity=row["free_quantity"],
                billable=row["billable"],
                price=row["price"],
                entries=row["entries"],
                first_entry_id=row["first_entry_id"],
                last_entry_id=row["last_entry_id"],
                refers_to=(
                    BillingPeriod(row["refers_to_start"], row["refers_to_end"])
                    if row["refers_to_start"] is not None
                    else None
                ),
                unrounded=row["unrounded"],
                billed_by=row["billed_by"],
                stripe_subscription_id=row["stripe_subscription_id"],
            )
            for row in await self.lines(invoice.invoice_id)
        )
        return InvoiceDraft(
            account=invoice.account,
            period=invoice.period,
            currency=invoice.currency,
            plan=invoice.plan,
            pricebook_version=invoice.pricebook_version,
            lines=lines,
            subtotal=invoice.subtotal,
            credits_applied=invoice.credits_applied,
            credits_shortfall=invoice.credits_shortfall,
            total=invoice.total,
        )

    async def lines(self, invoice_id: str) -> list[dict[str, Any]]:
        """The invoice's lines as stored."""
        result = await self._conn.execute(GET_LINES, {"id": invoice_id})
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]

    async def line_entries(
        self,
        account: str,
        period: BillingPeriod,
        meter: str,
        *,
        first: int,
        last: int,
        limit: int,
        dimension: tuple[str, DimensionValue] | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many usage-ledger entries are behind a line, and the first ``limit``; for a
        per-dimension line (``dimension``: the field and the line's value), only those
        carrying its value."""
        field, value = dimension if dimension is not None else (None, None)
        result = await self._conn.execute(
            LINE_ENTRIES,
            {
                "account": account,
                "start": period.start,
                "meter": meter,
                "first": first,
                "last": last,
                "limit": limit,
                "field": field,
                "value": value.text if value else None,
                "kind": value.kind.value if value else None,
            },
        )
        keys = [k for k in result.keys() if k != "of"]  # noqa: SIM118 - a Result, not a dict
        rows = result.all()
        entries = [dict(zip(keys, row[:-1], strict=True)) for row in rows]
        return (int(rows[0][-1]) if rows else 0), entries


def _tier(charge: Any) -> dict[str, str]:
    return {
        "tier": str(charge.tier_index),
        "from": str(charge.from_quantity),
        "to": str(charge.to_quantity),
        "units": str(charge.units),
        "unit_price": str(charge.unit_price),
        "flat_fee": str(charge.flat_fee),
        "amount": str(charge.amount),
    }


__all__ = ["PostgresInvoices"]
