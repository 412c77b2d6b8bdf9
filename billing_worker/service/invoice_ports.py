"""What closing periods and pushing invoices need from storage: the invoice store and the
close schedule, as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from billing_worker.domain.invoice_model import (
    CreditUse,
    InvoiceDraft,
    LateUsage,
    MeterUsage,
    PlanChangeEntry,
    StoredInvoice,
)
from billing_worker.domain.periods import BillingPeriod, PeriodCalendar


@dataclass(frozen=True, slots=True)
class InvoiceToSync:
    """An invoice the Stripe sync has to push."""

    invoice_id: str
    customer: str
    currency: str
    period: BillingPeriod
    subscription: str | None
    """The live Stripe subscription that bills its plan fee: the worker's lines can go
    onto its next invoice."""


class InvoiceStore(Protocol):
    """Invoices and what closing a period reads."""

    async def closed_periods(
        self, pairs: Sequence[tuple[str, datetime]]
    ) -> set[tuple[str, datetime]]:
        """Those (account, period start) pairs already invoiced."""
        ...

    async def invoice_for(self, account: str, period: BillingPeriod) -> str | None:
        """The id of the account's invoice for ``period``."""
        ...

    async def plan_changes(self, account: str, period: BillingPeriod) -> list[PlanChangeEntry]:
        """Every plan change in effect before the period's end, in order."""
        ...

    async def usage(
        self, account: str, period: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[MeterUsage]:
        """Each meter's period total with the ledger entries behind it."""
        ...

    async def credits_used(self, account: str, period: BillingPeriod) -> CreditUse:
        """Credits grants paid for usage in the period, and those no grant covered."""
        ...

    async def late_usage(
        self, account: str, before: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[LateUsage]:
        """Usage of invoiced periods before ``before`` recorded since their invoice."""
        ...

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
        ...

    async def as_draft(self, invoice: StoredInvoice) -> InvoiceDraft:
        """The stored invoice with its lines, as the close built it."""
        ...

    async def assign_number(self, invoice_id: str, issued_at: datetime) -> str:
        """Give the invoice the next number of ``issued_at``'s year (gap-free: the counter
        is locked until the transaction ends, and a rollback gives the number back)."""
        ...

    async def get(self, invoice_id: str, *, lock: bool = False) -> StoredInvoice | None:
        """The invoice."""
        ...

    async def set_status(self, invoice_id: str, status: str) -> None:
        """Move the invoice to ``status``."""
        ...

    async def to_sync(self, limit: int) -> list[InvoiceToSync]:
        """Invoices to push, locked, with the live subscription billing their plan fee."""
        ...

    async def sync_lines(self, invoice_id: str) -> list[tuple[int, str, Decimal]]:
        """(line no, description, amount) of the lines the worker bills."""
        ...

    async def record_sync(self, invoice_id: str, stripe_invoice_id: str) -> None:
        """The invoice is in Stripe as an invoice of its own."""
        ...

    async def record_pending_sync(self, invoice_id: str, subscription_id: str) -> None:
        """The invoice's lines are pending invoice items on the subscription."""
        ...

    async def record_stripe_invoice(
        self,
        invoice_id: str,
        stripe_invoice_id: str,
        *,
        tax: Decimal | None,
        total: Decimal | None,
    ) -> bool:
        """Stripe finalized the invoice billing ours: its id, tax and total."""
        ...

    async def record_sync_failure(self, invoice_id: str, error: str, *, permanent: bool) -> None:
        """Count a failed push; keep a permanent one's error."""
        ...


class CloseSchedule(Protocol):
    """Which periods are due for closing: each account's close watermark."""

    async def due_periods(
        self, cutoff: datetime, *, account: str | None, limit: int
    ) -> list[tuple[str, BillingPeriod]]:
        """(account, period) of the periods ended by ``cutoff`` without an invoice yet,
        oldest first, reading only accounts with something due."""
        ...

    async def advance(self, account: str, calendar: PeriodCalendar) -> None:
        """Move the account's watermark past its invoiced periods (account row locked)."""
        ...

    async def reopen(self, periods: Sequence[tuple[str, BillingPeriod]]) -> None:
        """Usage landed in these ended periods: move a watermark back to one that has no
        invoice yet."""
        ...
