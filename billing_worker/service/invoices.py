"""Close billing periods into invoices, and move invoices through their statuses.

A period is closed in one transaction: the account row is locked (usage batches for the
account hold a key-share lock on it until they commit, so when the lock is ours every
ledger entry of the period is committed, and none can land until we commit); the
invoice, its lines, an ``invoice_issued`` account-ledger entry and ``invoice.ready`` are
written together; the unique (account, period) makes a second closer a no-op. A crash
leaves nothing or the whole invoice. An invoice gets its number in the transaction that
makes it ``open`` (the close, or a draft's finalize), so only drafts have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.invoice_adjustments import adjustment_line
from billing_worker.domain.invoice_model import (
    BILLED_BY_WORKER,
    InvoiceDraft,
    InvoiceLine,
    PlanSpan,
)
from billing_worker.domain.invoicing import build_invoice
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import PriceBook
from billing_worker.service.events import invoice_ready
from billing_worker.service.ports import UnitOfWork, UnitOfWorkFactory

TRANSITIONS = {
    "draft": {"open", "void"},
    "open": {"paid", "uncollectible", "void"},
    "uncollectible": {"paid", "void"},
    "paid": set(),
    "void": set(),
}


class InvoiceNotFound(PermanentError):
    """No invoice of that id."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_invoice")


class InvalidTransition(PermanentError):
    """The invoice can't move to that status from where it is."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="invalid_invoice_transition")


def invoice_id_for(account: str, period: BillingPeriod) -> str:
    """Our invoice id: readable, and the same whoever closes the period.

    ``inv-YYYYMM-<account>`` for a calendar month; a period of a subscription cycle (two
    may start in one month: a stub and the cycle) is named by its start to the second,
    ``inv-YYYYMMDDTHHMMSS-<account>``.
    """
    start = period.start.astimezone(UTC)
    if calendar_month_of(start) == period:
        return f"inv-{start:%Y%m}-{account}"
    return f"inv-{start:%Y%m%dT%H%M%S}-{account}"


@dataclass(frozen=True, slots=True)
class Closed:
    """An invoice a close wrote."""

    invoice_id: str
    account: str
    period: BillingPeriod
    total: str
    currency: str


async def close_due_periods(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    *,
    as_of: datetime,
    grace: timedelta,
    account: str | None = None,
    limit: int = 500,
    review: bool = False,
) -> list[Closed]:
    """Close every period that ended ``grace`` before ``as_of`` and has no invoice yet
    (as drafts with ``review``)."""
    async with uow_factory() as uow:
        due = await uow.schedule.due_periods(as_of - grace, account=account, limit=limit)
        await uow.commit()  # watermarks it found behind were moved up
    closed = []
    for due_account, period in due:
        result = await close_period(
            uow_factory, book, account=due_account, period=period, now=as_of, review=review
        )
        if result is not None:
            closed.append(result)
    return closed


async def close_period(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    *,
    account: str,
    period: BillingPeriod,
    now: datetime,
    review: bool = False,
) -> Closed | None:
    """Close one account's period; None if it was closed already (by another replica).

    The invoice is ``open`` and announced (``invoice.ready``) at once; with ``review`` it
    is a ``draft``, announced and pushed to Stripe only once finalized (``draft`` →
    ``open``, see :func:`apply_invoice_status`)."""
    async with uow_factory() as uow:
        stored = await uow.accounts.get(account, lock=True)
        if stored is None or await uow.invoices.invoice_for(account, period) is not None:
            return None
        calendar = await uow.accounts.period_calendar(account)
        if calendar.period_of(period.start) != period:
            raise ValueError(
                f"{period.start.isoformat()} .. {period.end.isoformat()} is not a billing "
                f"period of account {account} (its period there is "
                f"{calendar.period_of(period.start)})"
            )
        draft, watermark = await draft_invoice(
            uow, book, account=account, period=period, current_plan=stored.plan
        )
        invoice_id = invoice_id_for(account, period)
        if not await uow.invoices.insert(
            invoice_id,
            draft,
            status="draft" if review else "open",
            last_entry_id=watermark,
            closed_at=now,
        ):
            return None
        await uow.accounts.append_entry(
            account,
            "invoice_issued",
            {
                "invoice_id": invoice_id,
                "period_start": period.start.isoformat(),
                "total": str(draft.total),
                "currency": draft.currency,
            },
            book.version,
            now,
        )
        # what is left of the period's plan grants ends with the period's invoice: late usage
        # of it from now on is adjusted on the next invoice, not paid by them
        await uow.credits.end_plan_grants(account, period, period.end, book.version)
        await uow.schedule.advance(account, calendar)
        if not review:
            # numbered last: the year's counter is locked from here to the commit
            number = await uow.invoices.assign_number(invoice_id, now)
            await uow.outbox.add([invoice_ready(invoice_id, draft, at=now, number=number)])
        await uow.commit()
    return Closed(invoice_id, account, period, str(draft.total), draft.currency)


async def draft_invoice(
    uow: UnitOfWork, book: PriceBook, *, account: str, period: BillingPeriod, current_plan: str
) -> tuple[InvoiceDraft, int | None]:
    """The invoice the account's ``period`` closes into as things stand, and the last
    ledger entry it covers; reads only. The close writes exactly this; the upcoming
    invoice shows it."""
    calendar = await uow.accounts.period_calendar(account)
    cycle_period, cycle_months = calendar.cycle_period(period)
    spans = await _plan_spans(uow, account, period, current_plan=current_plan)
    dimensions = {meter: price.dimension for meter, price in book.prices.items() if price.dimension}
    usage = await uow.invoices.usage(account, period, dimensions)
    credits_used = await uow.invoices.credits_used(account, period)
    currency = book.plan(spans[-1].plan).currency
    adjustments = await _adjustments(uow, book, account, period, currency, dimensions)
    draft = build_invoice(
        book,
        account=account,
        period=period,
        spans=spans,
        usage=usage,
        credit_use=credits_used,
        adjustments=adjustments,
        cycle_period=cycle_period,
        cycle_months=cycle_months,
    )
    return draft, max((u.last_entry_id or 0 for u in usage), default=0) or None


async def _plan_spans(
    uow: UnitOfWork, account: str, period: BillingPeriod, *, current_plan: str
) -> list[PlanSpan]:
    """The plans in force over the period, from the account ledger's plan changes."""
    changes = await uow.invoices.plan_changes(account, period)
    before = [c for c in changes if c.effective_at <= period.start]
    during = [c for c in changes if c.effective_at > period.start]
    if before:
        billing = before[-1]
        plan, billed_by, subscription = billing.plan, billing.billed_by, billing.subscription
    elif during:
        plan = during[0].previous_plan or during[0].plan
        billed_by, subscription = BILLED_BY_WORKER, None
    else:
        plan, billed_by, subscription = current_plan, BILLED_BY_WORKER, None
    spans = []
    start = period.start
    for change in during:
        if (change.plan, change.billed_by, change.subscription) != (plan, billed_by, subscription):
            if change.effective_at > start:
                spans.append(PlanSpan(plan, start, change.effective_at, billed_by, subscription))
            plan, billed_by, subscription = change.plan, change.billed_by, change.subscription
            start = max(start, change.effective_at)
    spans.append(PlanSpan(plan, start, period.end, billed_by, subscription))
    return spans


async def _adjustments(  # noqa: PLR0917 - one call site, all needed
    uow: UnitOfWork,
    book: PriceBook,
    account: str,
    period: BillingPeriod,
    currency: str,
    dimensions: dict[str, str],
) -> list[InvoiceLine]:
    return [
        adjustment_line(
            book,
            meter=late.meter,
            refers_to=late.period,
            included=late.included,
            invoiced_quantity=late.invoiced_quantity,
            new_quantity=late.quantity,
            invoiced_amount=late.invoiced_amount,
            currency=currency,
            entries=late.entries,
            first_entry_id=late.first_entry_id,
            last_entry_id=late.last_entry_id,
            dimension_value=late.dimension_value,
            free_quantity=late.free_quantity,
        )
        for late in await uow.invoices.late_usage(account, period, dimensions)
    ]


async def move_invoice(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    *,
    invoice_id: str,
    status: str,
    cause: str,
    now: datetime,
) -> tuple[str, str]:
    """``apply_invoice_status`` in a transaction of its own."""
    async with uow_factory() as uow:
        moved = await apply_invoice_status(
            uow, book, invoice_id=invoice_id, status=status, cause=cause, now=now
        )
        await uow.commit()
    return moved


async def apply_invoice_status(
    uow: UnitOfWork,
    book: PriceBook,
    *,
    invoice_id: str,
    status: str,
    cause: str,
    now: datetime,
) -> tuple[str, str]:
    """Move an invoice to ``status`` with a ledger entry; returns (from, to). Moving to
    the status it has is a no-op; impossible moves are refused (a void invoice stays void
    and visible)."""
    invoice = await uow.invoices.get(invoice_id, lock=True)
    if invoice is None:
        raise InvoiceNotFound(f"no invoice {invoice_id!r}")
    if invoice.status == status:
        return status, status
    if status not in TRANSITIONS[invoice.status]:
        raise InvalidTransition(
            f"invoice {invoice_id} is {invoice.status}; it can't become {status}"
        )
    await uow.invoices.set_status(invoice_id, status)
    await uow.accounts.append_entry(
        invoice.account,
        "invoice_status",
        {"invoice_id": invoice_id, "from": invoice.status, "to": status, "cause": cause},
        book.version,
        now,
    )
    if invoice.status == "draft" and status == "open":
        # finalized after review: numbered and announced now, as a close without review is
        number = await uow.invoices.assign_number(invoice_id, now)
        draft = await uow.invoices.as_draft(invoice)
        await uow.outbox.add([invoice_ready(invoice_id, draft, at=now, number=number)])
    return invoice.status, status
