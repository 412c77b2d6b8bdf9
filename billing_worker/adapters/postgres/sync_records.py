"""What the Stripe invoice sync reads and records on PostgreSQL: invoices to push, their
worker-billed lines, and where in Stripe each one went."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.stripe import LIVE_STATUSES
from billing_worker.service.invoice_ports import InvoiceToSync

# An invoice goes onto a subscription only while the subscription that billed its plan
# fee is live: once it ended, Stripe would never invoice pending items on it.
TO_SYNC = text("""
    SELECT i.invoice_id, c.customer_id, i.currency, i.period_start, i.period_end,
           sub.subscription_id
    FROM invoices AS i
    JOIN LATERAL (SELECT customer_id FROM stripe_customers AS sc
                  WHERE sc.account_id = i.account_id
                  ORDER BY linked_at DESC LIMIT 1) AS c ON true
    LEFT JOIN LATERAL (
        SELECT s.subscription_id
        FROM invoice_lines AS l
        JOIN subscriptions AS s ON s.subscription_id = l.stripe_subscription_id
        WHERE l.invoice_id = i.invoice_id AND l.billed_by = 'stripe_subscription'
          AND s.account_id = i.account_id AND s.status = ANY(:live)
        ORDER BY l.line_no DESC LIMIT 1) AS sub ON true
    WHERE i.stripe_synced_at IS NULL AND i.stripe_sync_error IS NULL
      AND i.status = 'open'
    ORDER BY i.closed_at, i.invoice_id
    LIMIT :limit
    FOR UPDATE OF i SKIP LOCKED
""")

SYNC_LINES = text("""
    SELECT line_no, description, amount FROM invoice_lines
    WHERE invoice_id = :id AND billed_by = 'worker' ORDER BY line_no
""")

SYNCED = text("""
    UPDATE invoices SET stripe_invoice_id = :stripe_id, stripe_synced_at = now(),
           stripe_sync_target = 'invoice', stripe_sync_error = NULL,
           stripe_sync_attempts = stripe_sync_attempts + 1
    WHERE invoice_id = :id
""")

SYNCED_PENDING = text("""
    UPDATE invoices SET stripe_subscription_id = :subscription, stripe_synced_at = now(),
           stripe_sync_target = 'subscription', stripe_sync_error = NULL,
           stripe_sync_attempts = stripe_sync_attempts + 1
    WHERE invoice_id = :id
""")

SYNC_FAILED = text("""
    UPDATE invoices SET stripe_sync_attempts = stripe_sync_attempts + 1,
           stripe_sync_error = CASE WHEN :permanent THEN :error ELSE NULL END
    WHERE invoice_id = :id
""")

STRIPE_INVOICE_SEEN = text("""
    UPDATE invoices
    SET stripe_invoice_id = coalesce(stripe_invoice_id, :stripe_id),
        tax = coalesce(:tax, tax), stripe_total = coalesce(:total, stripe_total)
    WHERE invoice_id = :id
      AND (stripe_invoice_id IS NULL OR stripe_invoice_id = :stripe_id)
    RETURNING invoice_id
""")


class SyncRecords:
    """The invoice sync's reads and writes of ``InvoiceStore``, on one transaction."""

    _conn: AsyncConnection

    async def to_sync(self, limit: int) -> list[InvoiceToSync]:
        """Open invoices of linked accounts not pushed to Stripe yet, locked so replicas
        share the work; each with the live subscription that bills its plan fee, if any."""
        result = await self._conn.execute(TO_SYNC, {"limit": limit, "live": sorted(LIVE_STATUSES)})
        return [
            InvoiceToSync(i, c, cur, BillingPeriod(s, e), sub) for i, c, cur, s, e, sub in result
        ]

    async def sync_lines(self, invoice_id: str) -> list[tuple[int, str, Decimal]]:
        """(line no, description, amount) of the lines the worker bills."""
        result = await self._conn.execute(SYNC_LINES, {"id": invoice_id})
        return [(int(n), str(d), a) for n, d, a in result]

    async def record_sync(self, invoice_id: str, stripe_invoice_id: str) -> None:
        """The invoice is in Stripe as an invoice of its own, ``stripe_invoice_id``."""
        await self._conn.execute(SYNCED, {"id": invoice_id, "stripe_id": stripe_invoice_id})

    async def record_pending_sync(self, invoice_id: str, subscription_id: str) -> None:
        """The invoice's lines are pending invoice items on ``subscription_id``."""
        await self._conn.execute(
            SYNCED_PENDING, {"id": invoice_id, "subscription": subscription_id}
        )

    async def record_sync_failure(self, invoice_id: str, error: str, *, permanent: bool) -> None:
        """Count a failed push; a permanent one keeps its error (visible, not retried)."""
        await self._conn.execute(
            SYNC_FAILED, {"id": invoice_id, "error": error, "permanent": permanent}
        )

    async def record_stripe_invoice(
        self,
        invoice_id: str,
        stripe_invoice_id: str,
        *,
        tax: Decimal | None,
        total: Decimal | None,
    ) -> bool:
        """Stripe finalized ``stripe_invoice_id`` billing our invoice: keep its id (for
        lines pushed onto a subscription, the first time it is known), the tax Stripe
        computed and its total. False when our invoice is unknown or in another one."""
        result = await self._conn.execute(
            STRIPE_INVOICE_SEEN,
            {"id": invoice_id, "stripe_id": stripe_invoice_id, "tax": tax, "total": total},
        )
        return result.first() is not None
