"""Invoices on PostgreSQL: which periods are due, what a period holds, the invoice rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.invoice_model import (
    InvoiceDraft,
    InvoiceLine,
    LateUsage,
    MeterUsage,
    StoredInvoice,
)
from billing_worker.domain.periods import BillingPeriod

CLOSED_PERIODS = text("""
    SELECT i.account_id, i.period_start
    FROM invoices AS i
    JOIN json_to_recordset(CAST(:rows AS json)) AS p(a text, ps timestamptz)
      ON i.account_id = p.a AND i.period_start = p.ps
""")

INVOICE_FOR = text("""
    SELECT invoice_id FROM invoices WHERE account_id = :account AND period_start = :start
""")

PLAN_CHANGES = text("""
    SELECT effective_at, details ->> 'plan', details ->> 'previous_plan'
    FROM account_ledger
    WHERE account_id = :account AND kind = 'plan_changed' AND effective_at < :end
    ORDER BY effective_at, entry_id
""")

USAGE = text("""
    SELECT g.meter, g.quantity, count(l.entry_id), min(l.entry_id), max(l.entry_id)
    FROM usage_aggregates AS g
    JOIN usage_ledger AS l
      ON l.account_id = g.account_id AND l.meter = g.meter AND l.period_start = g.period_start
    WHERE g.account_id = :account AND g.period_start = :start
    GROUP BY g.meter, g.quantity
    ORDER BY g.meter
""")

BY_DIMENSION = text("""
    SELECT coalesce(l.dimensions ->> :dimension, 'null'), sum(l.quantity)
    FROM usage_ledger AS l
    WHERE l.account_id = :account AND l.period_start = :start AND l.meter = :meter
    GROUP BY 1 ORDER BY 1
""")

CREDITS_USED = text("""
    SELECT coalesce(sum(CASE kind WHEN 'burn' THEN -credits ELSE credits END), 0)
    FROM credit_ledger
    WHERE account_id = :account AND kind IN ('burn', 'shortfall')
      AND effective_at >= :start AND effective_at < :end
""")

# Per earlier invoiced period, meter (and dimension value, for meters priced per
# dimension): what was invoiced so far (the latest line's quantity, the sum of amounts)
# and the usage-ledger entries recorded after that.
LATE_USAGE = text("""
    WITH dims AS (
        SELECT * FROM json_to_recordset(CAST(:dims AS json)) AS d(m text, dim text)
    ), invoiced AS (
        SELECT i.period_start, i.period_end, i.last_entry_id
        FROM invoices AS i WHERE i.account_id = :account AND i.period_start < :start
    ), billed AS (
        SELECT coalesce(l.refers_to_start, inv.period_start) AS ps, l.meter,
               l.dimension_value AS dv,
               (array_agg(l.quantity ORDER BY inv.period_start DESC, l.line_no DESC))[1] AS q,
               (array_agg(l.included ORDER BY inv.period_start, l.line_no))[1] AS inc,
               (array_agg(l.free_quantity ORDER BY inv.period_start, l.line_no))[1] AS fq,
               sum(l.amount) AS amt,
               max(l.last_entry_id) AS thru
        FROM invoice_lines AS l JOIN invoices AS inv USING (invoice_id)
        WHERE inv.account_id = :account AND l.kind IN ('usage', 'adjustment')
        GROUP BY 1, 2, 3
    ), entries AS (
        SELECT u.entry_id, u.period_start, u.meter, u.quantity,
               CASE WHEN d.dim IS NULL THEN NULL
                    ELSE coalesce(u.dimensions ->> d.dim, 'null') END AS dv
        FROM usage_ledger AS u
        JOIN invoiced AS i USING (period_start)
        LEFT JOIN dims AS d ON d.m = u.meter
        WHERE u.account_id = :account
    ), late AS (
        SELECT e.period_start, e.meter, e.dv, count(*) AS n, min(e.entry_id) AS f,
               max(e.entry_id) AS l
        FROM entries AS e
        JOIN invoiced AS i USING (period_start)
        LEFT JOIN billed AS b
          ON b.ps = e.period_start AND b.meter = e.meter AND b.dv IS NOT DISTINCT FROM e.dv
        WHERE e.entry_id > coalesce(i.last_entry_id, 0) AND e.entry_id > coalesce(b.thru, 0)
        GROUP BY 1, 2, 3
    )
    SELECT i.period_start, i.period_end, late.meter, late.dv,
           CASE WHEN late.dv IS NULL THEN g.quantity
                ELSE (SELECT sum(e2.quantity) FROM entries AS e2
                      WHERE e2.period_start = late.period_start AND e2.meter = late.meter
                        AND e2.dv = late.dv) END,
           coalesce(b.q, 0), coalesce(b.inc, 0), b.fq, coalesce(b.amt, 0),
           late.n, late.f, late.l
    FROM late
    JOIN invoiced AS i USING (period_start)
    JOIN usage_aggregates AS g
      ON g.account_id = :account AND g.period_start = late.period_start AND g.meter = late.meter
    LEFT JOIN billed AS b
      ON b.ps = late.period_start AND b.meter = late.meter AND b.dv IS NOT DISTINCT FROM late.dv
    ORDER BY 1, 3, 4
""")

INSERT_INVOICE = text("""
    INSERT INTO invoices (invoice_id, account_id, period_start, period_end, status, plan,
                          currency, subtotal, credits_applied, total, pricebook_version,
                          last_entry_id)
    VALUES (:id, :account, :start, :end, :status, :plan, :currency, :subtotal, :credits,
            :total, :version, :last_entry_id)
    ON CONFLICT (account_id, period_start) DO NOTHING
    RETURNING invoice_id
""")

INSERT_LINES = text("""
    INSERT INTO invoice_lines (invoice_id, line_no, kind, description, meter, dimension_value,
                               quantity, included, free_quantity, billable, price, tiers,
                               amount, unrounded, entries, first_entry_id, last_entry_id,
                               refers_to_start, refers_to_end)
    SELECT :id, l.n, l.k, l.d, l.m, l.dv, l.q, l.inc, l.f, l.b, l.p, l.t, l.a, l.u, l.e,
           l.fe, l.le, l.rs, l.re
    FROM json_to_recordset(CAST(:lines AS json)) AS l(
        n int, k text, d text, m text, dv text, q numeric, inc numeric, f numeric,
        b numeric, p text, t jsonb, a numeric, u numeric, e int, fe bigint, le bigint,
        rs timestamptz, re timestamptz)
""")

GET_INVOICE = text("""
    SELECT invoice_id, account_id, period_start, period_end, status, plan, currency,
           subtotal, credits_applied, total, pricebook_version, last_entry_id, closed_at,
           stripe_invoice_id, stripe_sync_error, stripe_sync_attempts
    FROM invoices WHERE invoice_id = :id
""")

LOCK_INVOICE = text("SELECT status FROM invoices WHERE invoice_id = :id FOR UPDATE")

SET_STATUS = text("UPDATE invoices SET status = :status WHERE invoice_id = :id")

GET_LINES = text("""
    SELECT line_no, kind, description, meter, dimension_value, quantity, included,
           free_quantity, billable, price, tiers, amount, unrounded, entries,
           first_entry_id, last_entry_id, refers_to_start, refers_to_end
    FROM invoice_lines WHERE invoice_id = :id ORDER BY line_no
""")

LINE_ENTRIES = text("""
    SELECT entry_id, event_source, event_id, event_type, occurred_at, quantity,
           pricebook_version
    FROM usage_ledger
    WHERE account_id = :account AND period_start = :start AND meter = :meter
      AND entry_id BETWEEN :first AND :last
    ORDER BY entry_id
    LIMIT :limit
""")


TO_SYNC = text("""
    SELECT i.invoice_id, c.customer_id, i.currency, i.period_start, i.period_end
    FROM invoices AS i
    JOIN LATERAL (SELECT customer_id FROM stripe_customers AS sc
                  WHERE sc.account_id = i.account_id
                  ORDER BY linked_at DESC LIMIT 1) AS c ON true
    WHERE i.stripe_invoice_id IS NULL AND i.stripe_sync_error IS NULL
      AND i.status = 'open'
    ORDER BY i.closed_at, i.invoice_id
    LIMIT :limit
    FOR UPDATE OF i SKIP LOCKED
""")

SYNC_LINES = text("""
    SELECT line_no, description, amount FROM invoice_lines
    WHERE invoice_id = :id ORDER BY line_no
""")

SYNCED = text("""
    UPDATE invoices SET stripe_invoice_id = :stripe_id, stripe_synced_at = now(),
           stripe_sync_attempts = stripe_sync_attempts + 1
    WHERE invoice_id = :id
""")

SYNC_FAILED = text("""
    UPDATE invoices SET stripe_sync_attempts = stripe_sync_attempts + 1,
           stripe_sync_error = CASE WHEN :permanent THEN :error ELSE NULL END
    WHERE invoice_id = :id
""")


def _json(rows: object) -> str:
    return orjson.dumps(rows, default=str).decode()


class PostgresInvoices:
    """``InvoiceStore`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

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

    async def plan_changes(
        self, account: str, period: BillingPeriod
    ) -> list[tuple[datetime, str, str | None]]:
        """(effective at, plan, previous plan) of every change before the period's end."""
        result = await self._conn.execute(PLAN_CHANGES, {"account": account, "end": period.end})
        return [(at, str(plan), prev) for at, plan, prev in result]

    async def usage(
        self, account: str, period: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[MeterUsage]:
        """Each meter's period total with the ledger entries behind it; per dimension value
        for the meters in ``dimensions`` (meter -> the data field it is priced by)."""
        params = {"account": account, "start": period.start}
        usages = []
        for meter, quantity, entries, first, last in await self._conn.execute(USAGE, params):
            by_dimension: dict[str, Decimal] = {}
            if meter in dimensions:
                rows = await self._conn.execute(
                    BY_DIMENSION, {**params, "meter": meter, "dimension": dimensions[meter]}
                )
                by_dimension = {str(value): total for value, total in rows}
            usages.append(MeterUsage(meter, quantity, entries, first, last, by_dimension))
        return usages

    async def credits_used(self, account: str, period: BillingPeriod) -> Decimal:
        """Credits burned (and short) by usage in the period."""
        row = await self._conn.execute(
            CREDITS_USED, {"account": account, "start": period.start, "end": period.end}
        )
        return Decimal(row.scalar_one())

    async def late_usage(
        self, account: str, before: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[LateUsage]:
        """Usage of the account's invoiced periods before ``before`` recorded since, per
        meter (and per dimension value for the meters in ``dimensions``)."""
        dims = [{"m": meter, "dim": dim} for meter, dim in sorted(dimensions.items())]
        result = await self._conn.execute(
            LATE_USAGE, {"account": account, "start": before.start, "dims": _json(dims)}
        )
        return [
            LateUsage(BillingPeriod(ps, pe), m, q, iq, inc, ia, n, first, last, dv, fq)
            for ps, pe, m, dv, q, iq, inc, fq, ia, n, first, last in result
        ]

    async def insert(
        self, invoice_id: str, draft: InvoiceDraft, *, status: str, last_entry_id: int | None
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
                    "total": draft.total,
                    "version": draft.pricebook_version,
                    "last_entry_id": last_entry_id,
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
                "dv": line.dimension_value,
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
        (iid, account, start, end, status, plan, currency, subtotal, credit_total, total,
         version, last_entry_id, closed_at, stripe_id, stripe_error, attempts) = row  # fmt: skip
        return StoredInvoice(
            iid, account, BillingPeriod(start, end), status, plan, currency, subtotal,
            credit_total, total, version, last_entry_id, closed_at, stripe_id, stripe_error,
            attempts,
        )  # fmt: skip

    async def to_sync(self, limit: int) -> list[tuple[str, str, str, BillingPeriod]]:
        """(invoice id, Stripe customer, currency, period) of open invoices of linked
        accounts not pushed to Stripe yet, locked so replicas share the work."""
        result = await self._conn.execute(TO_SYNC, {"limit": limit})
        return [(i, c, cur, BillingPeriod(s, e)) for i, c, cur, s, e in result]

    async def sync_lines(self, invoice_id: str) -> list[tuple[int, str, Decimal]]:
        """(line no, description, amount) of an invoice."""
        result = await self._conn.execute(SYNC_LINES, {"id": invoice_id})
        return [(int(n), str(d), a) for n, d, a in result]

    async def record_sync(self, invoice_id: str, stripe_invoice_id: str) -> None:
        """The invoice is in Stripe under ``stripe_invoice_id``."""
        await self._conn.execute(SYNCED, {"id": invoice_id, "stripe_id": stripe_invoice_id})

    async def record_sync_failure(self, invoice_id: str, error: str, *, permanent: bool) -> None:
        """Count a failed push; a permanent one keeps its error (visible, not retried)."""
        await self._conn.execute(
            SYNC_FAILED, {"id": invoice_id, "error": error, "permanent": permanent}
        )

    async def set_status(self, invoice_id: str, status: str) -> None:
        """Move the invoice to ``status`` (the caller writes the ledger entry)."""
        await self._conn.execute(SET_STATUS, {"id": invoice_id, "status": status})

    async def as_draft(self, invoice: StoredInvoice) -> InvoiceDraft:
        """The stored invoice with its lines, as the close built it (tiers left out)."""
        lines = tuple(
            InvoiceLine(
                kind=row["kind"],
                description=row["description"],
                amount=row["amount"],
                meter=row["meter"],
                dimension_value=row["dimension_value"],
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
            total=invoice.total,
        )

    async def lines(self, invoice_id: str) -> list[dict[str, Any]]:
        """The invoice's lines as stored."""
        result = await self._conn.execute(GET_LINES, {"id": invoice_id})
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]

    async def line_entries(
        self, account: str, period: BillingPeriod, meter: str, *, first: int, last: int, limit: int
    ) -> list[dict[str, Any]]:
        """The usage-ledger entries behind a line (the first ``limit``)."""
        result = await self._conn.execute(
            LINE_ENTRIES,
            {
                "account": account,
                "start": period.start,
                "meter": meter,
                "first": first,
                "last": last,
                "limit": limit,
            },
        )
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]


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
