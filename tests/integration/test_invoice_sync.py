"""Closed invoices pushed to Stripe (a local fake driven by the official SDK): once,
with a retry that reuses the idempotency keys, and permanent errors left visible."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.stripe_api import StripeInvoiceSync
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.invoice_sync import sync_invoices, to_minor_units
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from tests.fake_stripe import FakeStripe
from tests.pricebooks import DEFAULT_BOOK

CUSTOMER = "cus_sync1"
OCT = datetime(2026, 10, 10, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(customers={CUSTOMER}) as server:
        yield server


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def closed_invoice(engine: AsyncEngine, sql: psycopg.Connection, customer: str) -> None:
    """acct_s on PLUS-free FREE with 3 websites (1.50) in October, linked, then closed."""
    records = [
        UsageRecord("web", f"w{i}", "generator.website_generated", "acct_s", OCT, Decimal(1))
        for i in range(3)
    ]
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await record_usage_batch(uow, DEFAULT_BOOK, records, clock=lambda: OCT)
    sql.execute(
        "INSERT INTO stripe_customers (customer_id, account_id) VALUES (%s, 'acct_s')", (customer,)
    )
    await close_due_periods(
        uow, DEFAULT_BOOK, as_of=datetime(2026, 11, 2, tzinfo=UTC), grace=timedelta(hours=1)
    )


async def test_push_once_then_nothing_left(
    engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """The invoice goes to Stripe as one finalized invoice with its non-zero line, the
    Stripe id is recorded, and the next round pushes nothing."""
    await closed_invoice(engine, sql, CUSTOMER)
    pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    first = await sync_invoices(uow, pusher)
    assert (first.pushed, first.failed) == (1, 0)
    (stripe_invoice,) = fake.invoices
    assert stripe_invoice["metadata"]["billing_invoice_id"] == "inv-202610-acct_s"
    assert stripe_invoice["status"] == "open"
    assert [i["amount"] for i in fake.invoice_items] == [150]
    stored = sql.execute("SELECT stripe_invoice_id, stripe_sync_error FROM invoices").fetchone()
    assert stored == (stripe_invoice["id"], None)
    assert (await sync_invoices(uow, pusher)).pushed == 0


async def test_retry_after_a_lost_answer_reuses_the_keys(
    engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """Stripe created the invoice but the answer was lost: the round records a transient
    failure, the next one finishes with the same idempotency keys, one Stripe invoice."""
    await closed_invoice(engine, sql, CUSTOMER)
    fake.fail("POST /v1/invoices", times=1, when="after", status=500)
    pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    assert (await sync_invoices(uow, pusher)).retry_later == 1
    assert sql.execute(
        "SELECT stripe_invoice_id, stripe_sync_attempts FROM invoices"
    ).fetchone() == (None, 1)
    assert (await sync_invoices(uow, pusher)).pushed == 1
    assert len(fake.invoices) == 1
    keys = [r.idempotency_key for r in fake.requests if r.method == "POST"]
    assert keys.count("billing-worker:inv-202610-acct_s:invoice") >= 1
    assert len(fake.invoice_items) == 1


async def test_permanent_error_stays_visible(
    engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """A customer Stripe doesn't know: the error is recorded on the open invoice and the
    invoice is not retried."""
    await closed_invoice(engine, sql, "cus_deleted")
    pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    assert (await sync_invoices(uow, pusher)).failed == 1
    status, error = sql.execute("SELECT status, stripe_sync_error FROM invoices").fetchone()
    assert status == "open"
    assert "cus_deleted" in error or "resource_missing" in error or "No such" in error
    assert (await sync_invoices(uow, pusher)).failed == 0
    assert fake.invoices == []


def test_minor_units_are_exact() -> None:
    """9.90 usd is 990 cents, 990 jpy is 990; an unrounded amount is refused."""
    assert to_minor_units(Decimal("9.90"), "usd") == 990
    assert to_minor_units(Decimal(990), "jpy") == 990
    with pytest.raises(ValueError, match="not rounded"):
        to_minor_units(Decimal("0.001"), "usd")
