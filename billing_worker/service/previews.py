"""Invoices that are not written: the open period's invoice as it would close now, and what
a given usage would cost. Both are built by the close's own code, so they agree with it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from billing_worker.domain.errors import PermanentError
from billing_worker.domain.invoice_model import InvoiceDraft, MeterUsage, PlanSpan
from billing_worker.domain.invoicing import build_invoice
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import DimensionValue, PriceBook
from billing_worker.service.invoices import draft_invoice
from billing_worker.service.ports import UnitOfWorkFactory

EstimatedUsage = Mapping[str, Decimal | Mapping[str, Decimal]]
"""Per meter, the period's quantity, or (for a meter priced per dimension) the quantity
per string value of its dimension."""


class UnknownEstimateInput(PermanentError):
    """An estimate names a plan or a meter the price book does not have."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_name")


async def upcoming_invoice(
    uow_factory: UnitOfWorkFactory, book: PriceBook, *, account: str, now: datetime
) -> InvoiceDraft | None:
    """The invoice the account's period containing ``now`` would close into if no more
    usage arrived (None: no such account). Nothing is written: the transaction that reads
    it is rolled back."""
    async with uow_factory() as uow:
        stored = await uow.accounts.get(account)
        if stored is None:
            return None
        period = (await uow.accounts.period_calendar(account)).period_of(now)
        draft, _ = await draft_invoice(
            uow, book, account=account, period=period, current_plan=stored.plan
        )
    return draft


def estimate(
    book: PriceBook,
    *,
    plan: str,
    period: BillingPeriod | None = None,
    usage: EstimatedUsage,
    now: datetime,
    account: str = "(estimate)",
) -> InvoiceDraft:
    """What ``usage`` (the whole period's) would cost on ``plan`` over ``period`` (default:
    the calendar month of ``now``): the lines and total a close would write."""
    if plan not in book.plans:
        raise UnknownEstimateInput(
            f"no plan {plan!r} in price book {book.version} (plans: {', '.join(book.plans)})"
        )
    unknown = sorted(set(usage) - set(book.meters))
    if unknown:
        known = ", ".join(sorted(book.meters))
        raise UnknownEstimateInput(f"no meter {unknown[0]!r} in price book (known: {known})")
    period = period or calendar_month_of(now)
    return build_invoice(
        book,
        account=account,
        period=period,
        spans=[PlanSpan(plan, period.start, period.end)],
        usage=[_meter_usage(meter, figure) for meter, figure in sorted(usage.items())],
    )


def _meter_usage(meter: str, figure: Decimal | Mapping[str, Decimal]) -> MeterUsage:
    if isinstance(figure, Decimal):
        return MeterUsage(meter, figure, 1 if figure else 0)
    by_value = {DimensionValue(value): quantity for value, quantity in figure.items()}
    total = sum(by_value.values(), Decimal(0))
    return MeterUsage(meter, total, len(by_value), by_dimension=by_value)
