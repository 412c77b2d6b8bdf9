"""What closing a period reads: its plan changes, usage per meter (per dimension value
where a price needs it), the credits it used, and late usage of periods invoiced before."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.invoice_model import CreditUse, LateUsage, MeterUsage, PlanChangeEntry
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import DimensionKind, DimensionValue

# A dimension value's SQL form: (text, kind), the kind from JSON (absent: no such field).
DIMENSION_VALUE = """
    CASE WHEN {d} IS NULL THEN NULL
         WHEN jsonb_typeof({dims} -> {d}) = 'null' THEN 'null'
         ELSE coalesce({dims} ->> {d}, '') END AS {text},
    CASE WHEN {d} IS NULL THEN NULL
         ELSE coalesce(jsonb_typeof({dims} -> {d}), 'absent') END AS {kind}
"""

# A line's stored dimension value as (text, kind). Lines from before kinds were kept
# (revision 0007) hold a string's text, and 'null' for null and absent alike: read as absent.
LINE_DIMENSION = """
    CASE WHEN {l}.dimension_kind IS NULL AND {l}.dimension_value = 'null' THEN ''
         ELSE {l}.dimension_value END AS {text},
    CASE WHEN {l}.dimension_value IS NULL THEN NULL
         ELSE coalesce({l}.dimension_kind,
                       CASE {l}.dimension_value WHEN 'null' THEN 'absent' ELSE 'string' END)
    END AS {kind}
"""

PLAN_CHANGES = text("""
    SELECT effective_at, details ->> 'plan', details ->> 'previous_plan',
           coalesce(details ->> 'billed_by', 'worker'), details ->> 'subscription'
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

_PARAMETER = "CAST(:dimension AS text)"

BY_DIMENSION = text(f"""
    SELECT {DIMENSION_VALUE.format(d=_PARAMETER, dims="l.dimensions", text="v", kind="k")},
           sum(l.quantity)
    FROM usage_ledger AS l
    WHERE l.account_id = :account AND l.period_start = :start AND l.meter = :meter
    GROUP BY 1, 2 ORDER BY 1, 2
""")

# Burns are stored negative (credits leave a grant), shortfalls positive (owed, no grant).
CREDITS_USED = text("""
    SELECT coalesce(sum(-credits) FILTER (WHERE kind = 'burn'), 0),
           coalesce(sum(credits) FILTER (WHERE kind = 'shortfall'), 0)
    FROM credit_ledger
    WHERE account_id = :account AND kind IN ('burn', 'shortfall')
      AND effective_at >= :start AND effective_at < :end
""")

# Per earlier invoiced period, meter (and dimension value, for meters priced per
# dimension): what was invoiced so far (the latest line's quantity, the sum of amounts)
# and the usage-ledger entries recorded after that.
LATE_USAGE = text(f"""
    WITH dims AS (
        SELECT * FROM json_to_recordset(CAST(:dims AS json)) AS d(m text, dim text)
    ), invoiced AS (
        SELECT i.period_start, i.period_end, i.last_entry_id
        FROM invoices AS i WHERE i.account_id = :account AND i.period_start < :start
    ), billed AS (
        SELECT coalesce(l.refers_to_start, inv.period_start) AS ps, l.meter,
               {LINE_DIMENSION.format(l="l", text="dv", kind="dk")},
               (array_agg(l.quantity ORDER BY inv.period_start DESC, l.line_no DESC))[1] AS q,
               (array_agg(l.included ORDER BY inv.period_start, l.line_no))[1] AS inc,
               (array_agg(l.free_quantity ORDER BY inv.period_start, l.line_no))[1] AS fq,
               sum(l.amount) AS amt,
               max(l.last_entry_id) AS thru
        FROM invoice_lines AS l JOIN invoices AS inv USING (invoice_id)
        WHERE inv.account_id = :account AND l.kind IN ('usage', 'adjustment')
        GROUP BY 1, 2, 3, 4
    ), entries AS (
        SELECT u.entry_id, u.period_start, u.meter, u.quantity,
               {DIMENSION_VALUE.format(d="d.dim", dims="u.dimensions", text="dv", kind="dk")}
        FROM usage_ledger AS u
        JOIN invoiced AS i USING (period_start)
        LEFT JOIN dims AS d ON d.m = u.meter
        WHERE u.account_id = :account
    ), late AS (
        SELECT e.period_start, e.meter, e.dv, e.dk, count(*) AS n, min(e.entry_id) AS f,
               max(e.entry_id) AS l
        FROM entries AS e
        JOIN invoiced AS i USING (period_start)
        LEFT JOIN billed AS b
          ON b.ps = e.period_start AND b.meter = e.meter AND b.dv IS NOT DISTINCT FROM e.dv
         AND b.dk IS NOT DISTINCT FROM e.dk
        WHERE e.entry_id > coalesce(i.last_entry_id, 0) AND e.entry_id > coalesce(b.thru, 0)
        GROUP BY 1, 2, 3, 4
    )
    SELECT i.period_start, i.period_end, late.meter, late.dv, late.dk,
           CASE WHEN late.dv IS NULL THEN g.quantity
                ELSE (SELECT sum(e2.quantity) FROM entries AS e2
                      WHERE e2.period_start = late.period_start AND e2.meter = late.meter
                        AND e2.dv = late.dv AND e2.dk = late.dk) END,
           coalesce(b.q, 0), coalesce(b.inc, 0), b.fq, coalesce(b.amt, 0),
           late.n, late.f, late.l
    FROM late
    JOIN invoiced AS i USING (period_start)
    JOIN usage_aggregates AS g
      ON g.account_id = :account AND g.period_start = late.period_start AND g.meter = late.meter
    LEFT JOIN billed AS b
      ON b.ps = late.period_start AND b.meter = late.meter AND b.dv IS NOT DISTINCT FROM late.dv
     AND b.dk IS NOT DISTINCT FROM late.dk
    ORDER BY 1, 3, 4, 5
""")


class ClosingReads:
    """The reads of ``InvoiceStore`` that closing a period makes, on one transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def plan_changes(self, account: str, period: BillingPeriod) -> list[PlanChangeEntry]:
        """Every plan change in effect before the period's end, in order."""
        result = await self._conn.execute(PLAN_CHANGES, {"account": account, "end": period.end})
        return [PlanChangeEntry(at, str(plan), prev, by, sub) for at, plan, prev, by, sub in result]

    async def usage(
        self, account: str, period: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[MeterUsage]:
        """Each meter's period total with the ledger entries behind it; per dimension value
        for the meters in ``dimensions`` (meter -> the data field it is priced by)."""
        params = {"account": account, "start": period.start}
        usages = []
        for meter, quantity, entries, first, last in await self._conn.execute(USAGE, params):
            by_dimension: dict[DimensionValue, Decimal] = {}
            if meter in dimensions:
                rows = await self._conn.execute(
                    BY_DIMENSION, {**params, "meter": meter, "dimension": dimensions[meter]}
                )
                by_dimension = {
                    DimensionValue(str(value), DimensionKind(kind)): total
                    for value, kind, total in rows
                }
            usages.append(MeterUsage(meter, quantity, entries, first, last, by_dimension))
        return usages

    async def credits_used(self, account: str, period: BillingPeriod) -> CreditUse:
        """Credits grants paid for usage in the period, and those no grant covered."""
        result = await self._conn.execute(
            CREDITS_USED, {"account": account, "start": period.start, "end": period.end}
        )
        applied, shortfall = result.one()
        return CreditUse(Decimal(applied), Decimal(shortfall))

    async def late_usage(
        self, account: str, before: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[LateUsage]:
        """Usage of the account's invoiced periods before ``before`` recorded since, per
        meter (and per dimension value for the meters in ``dimensions``)."""
        dims = [{"m": meter, "dim": dim} for meter, dim in sorted(dimensions.items())]
        result = await self._conn.execute(
            LATE_USAGE,
            {"account": account, "start": before.start, "dims": orjson.dumps(dims).decode()},
        )
        return [
            LateUsage(
                BillingPeriod(ps, pe),
                m,
                q,
                iq,
                inc,
                ia,
                n,
                first,
                last,
                stored_dimension(dv, dk),
                fq,
            )
            for ps, pe, m, dv, dk, q, iq, inc, fq, ia, n, first, last in result
        ]


def stored_dimension(text: str | None, kind: str | None) -> DimensionValue | None:
    """A dimension value read back from its (text, kind) columns."""
    return None if text is None or kind is None else DimensionValue(text, DimensionKind(kind))
