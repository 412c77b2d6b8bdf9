"""Push closed invoices of Stripe-linked accounts to Stripe, each once.

Every call to Stripe carries an idempotency key derived from our invoice and line ids
(see ``adapters/stripe_api.py``), so a crash between Stripe's answer and our commit, and
the retry after it, never create a second Stripe invoice. Transient failures (network,
429, 5xx) are retried on the next round; permanent ones (a deleted customer, a bad key)
are recorded on the invoice, which stays open and shows the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import structlog

from billing_worker.domain.pricebook import UsageBilling
from billing_worker.domain.rating import minor_unit_places
from billing_worker.service.ports import UnitOfWorkFactory
from billing_worker.service.stripe_sync_requests import (
    PermanentStripeError,
    SyncInvoice,
    SyncLine,
    TransientStripeError,
)

log = structlog.get_logger(__name__)


class Pusher(Protocol):
    """What pushes one invoice to Stripe (``StripeInvoiceSync``)."""

    async def push(self, invoice: SyncInvoice) -> str | None:
        """Create, fill and finalize the Stripe invoice and return its id; or, for an
        invoice naming a subscription, add its lines as pending items there (None)."""
        ...


@dataclass(frozen=True, slots=True)
class SyncRound:
    """What one round did."""

    pushed: int = 0
    retry_later: int = 0
    failed: int = 0


def to_minor_units(amount: Decimal, currency: str) -> int:
    """A rounded amount in the currency's minor unit, exactly."""
    scaled = amount.scaleb(minor_unit_places(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not rounded to the minor unit")
    return int(scaled)


async def sync_invoices(
    uow_factory: UnitOfWorkFactory,
    sync: Pusher,
    *,
    limit: int = 20,
    usage_billing: UsageBilling = UsageBilling.SUBSCRIPTION,
    automatic_tax: bool = False,
) -> SyncRound:
    """Push up to ``limit`` unsynced invoices; one transaction per invoice.

    Only the lines the worker bills are pushed: a plan fee a Stripe subscription charges
    stays on our invoice, marked so, and is not sent. Where that subscription is still
    live and ``usage_billing`` is ``subscription``, the lines go onto it as pending
    invoice items (its next invoice charges them, with its own fee, once); otherwise
    they make a Stripe invoice of their own.
    """
    pushed = retry = failed = 0
    for _ in range(limit):
        async with uow_factory() as uow:
            batch = await uow.invoices.to_sync(1)
            if not batch:
                break
            found = batch[0]
            invoice_id, currency = found.invoice_id, found.currency
            lines = await uow.invoices.sync_lines(invoice_id)
            onto = found.subscription if usage_billing is UsageBilling.SUBSCRIPTION else None
            request = SyncInvoice(
                invoice_id=invoice_id,
                customer_id=found.customer,
                currency=currency,
                lines=tuple(
                    SyncLine(line_no=n, description=d, amount_minor=to_minor_units(a, currency))
                    for n, d, a in lines
                ),
                period_start=found.period.start,
                period_end=found.period.end,
                subscription_id=onto,
                automatic_tax=automatic_tax,
            )
            try:
                stripe_id = await sync.push(request)
            except TransientStripeError as exc:
                log.warning("stripe_sync_retry_later", invoice=invoice_id, error=exc.detail)
                await uow.invoices.record_sync_failure(invoice_id, exc.detail, permanent=False)
                await uow.commit()
                retry += 1
                break  # Stripe is struggling: try again next round
            except PermanentStripeError as exc:
                log.error("stripe_sync_failed", invoice=invoice_id, error=exc.detail)  # noqa: TRY400
                await uow.invoices.record_sync_failure(invoice_id, exc.detail, permanent=True)
                await uow.commit()
                failed += 1
                continue
            if stripe_id is None and onto is not None:
                await uow.invoices.record_pending_sync(invoice_id, onto)
            elif stripe_id is not None:
                await uow.invoices.record_sync(invoice_id, stripe_id)
            await uow.commit()
            pushed += 1
    return SyncRound(pushed, retry, failed)
