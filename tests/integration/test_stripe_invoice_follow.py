"""Stripe's invoices followed back onto ours: the renewal that took our pending items, the
tax Stripe Tax computed, its total and payment, for both API shapes; and the sync asking
for Stripe Tax when the price book says so."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.stripe_api import StripeInvoiceSync
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.invoice_sync import sync_invoices
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_payloads as sp
from tests.fake_stripe import FakeStripe
from tests.pricebooks import DEFAULT_BOOK
from tests.stripe_fixtures import fixture, fixture_event

ACCOUNT = "acct_tax"
CUSTOMER = "cus_tax"
SUB = "sub_tax"
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
OURS = "inv-202612-acct_tax"
Version = Literal["old", "new"]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(customers={CUSTOMER}) as server:
        server.subscriptions[SUB] = CUSTOMER
        yield server


def uow_of(engine: AsyncEngine) -> Any:
    return lambda: PostgresUnitOfWork(engine)


async def apply(engine: AsyncEngine, payload: dict[str, Any], now: datetime) -> StripeOutcome:
    return await apply_stripe_event(
        uow_of(engine), DEFAULT_BOOK, parse_stripe_event(payload), now=now
    )


async def december_on_a_subscription(engine: AsyncEngine, fake: FakeStripe) -> None:
    """acct_tax on PLUS by sub_tax from Dec 1, 2 websites, December closed and pushed
    onto the subscription."""
    customer = sp.customer(CUSTOMER, account_id=ACCOUNT)
    await apply(engine, sp.event("customer.created", customer, created=0), DEC)
    obj = sp.subscription(
        SUB,
        customer=CUSTOMER,
        price_id="price_plus_monthly",
        status="active",
        current_period_start=int(DEC.timestamp()),
        current_period_end=int(JAN.timestamp()),
    )
    created = sp.event("customer.subscription.created", obj, created=int(DEC.timestamp()))
    assert await apply(engine, created, DEC + timedelta(minutes=1)) == StripeOutcome.APPLIED
    records = [
        UsageRecord("web", f"w{i}", "generator.website_generated", ACCOUNT, DEC, Decimal(1))
        for i in range(2)
    ]
    await record_usage_batch(uow_of(engine), DEFAULT_BOOK, records, clock=lambda: DEC)
    await close_due_periods(
        uow_of(engine), DEFAULT_BOOK, as_of=JAN + timedelta(days=1), grace=timedelta(hours=1)
    )
    pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
    assert (await sync_invoices(uow_of(engine), pusher)).pushed == 1


def renewal(version: Version, *, status: str, tax: int | None) -> dict[str, Any]:
    """Stripe's renewal invoice of sub_tax: its fee line and our pending item's line."""
    invoice = fixture(version, "invoice")
    line = invoice["lines"]["data"][0]
    fee_line = {**line, "amount": 990, "metadata": {}}
    our_line = {**line, "amount": 100, "metadata": {"billing_invoice_id": OURS, "line_no": "2"}}
    invoice.update(
        id="in_renewal1",
        customer=CUSTOMER,
        currency="usd",
        status=status,
        metadata={},
        total=1090 + (tax or 0),
        amount_due=1090 + (tax or 0),
        amount_paid=1090 + (tax or 0) if status == "paid" else 0,
        lines={**invoice["lines"], "data": [fee_line, our_line]},
    )
    if version == "old":
        invoice["tax"] = tax
    else:
        invoice["total_taxes"] = [] if tax is None else [{"amount": tax, "taxable_amount": 1090}]
    return invoice


@pytest.mark.parametrize("version", ["old", "new"])
async def test_the_renewal_that_took_our_items_is_recorded_with_its_tax_then_paid(
    version: Version, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """invoice.finalized of the renewal whose lines carry our id: our invoice records
    that Stripe invoice, its total 11.80 and Stripe's tax 0.90; invoice.paid then moves
    ours to paid."""
    await december_on_a_subscription(engine, fake)
    finalized = fixture_event(
        version,
        "invoice.finalized",
        renewal(version, status="open", tax=90),
        created=int(JAN.timestamp()) + 7200,
    )
    now = JAN + timedelta(days=1, hours=2)
    assert await apply(engine, finalized, now) == StripeOutcome.APPLIED
    assert sql.execute(
        "SELECT stripe_invoice_id, tax, stripe_total, status FROM invoices WHERE invoice_id = %s",
        (OURS,),
    ).fetchone() == ("in_renewal1", Decimal("0.90"), Decimal("11.80"), "open")
    paid = fixture_event(
        version,
        "invoice.paid",
        renewal(version, status="paid", tax=90),
        created=int(JAN.timestamp()) + 9000,
    )
    assert await apply(engine, paid, now + timedelta(hours=1)) == StripeOutcome.APPLIED
    assert sql.execute("SELECT status FROM invoices WHERE invoice_id = %s", (OURS,)).fetchone() == (
        "paid",
    )


async def test_a_stripe_invoice_of_another_account_never_moves_ours(
    engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """A paid Stripe invoice of another customer whose line names our invoice (a copied
    item, a mistake) changes nothing of ours."""
    await december_on_a_subscription(engine, fake)
    other = sp.customer("cus_other", account_id="acct_other")
    await apply(engine, sp.event("customer.created", other, created=0), DEC)
    invoice = renewal("new", status="paid", tax=None)
    invoice["customer"] = "cus_other"
    event = fixture_event("new", "invoice.paid", invoice, created=int(JAN.timestamp()) + 60)
    assert await apply(engine, event, JAN + timedelta(days=1)) == StripeOutcome.APPLIED
    assert sql.execute(
        "SELECT status, stripe_invoice_id FROM invoices WHERE invoice_id = %s", (OURS,)
    ).fetchone() == ("open", None)


async def test_automatic_tax_is_asked_for_on_the_invoices_the_sync_creates(
    engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """With automatic tax on, the Stripe invoice is created with automatic_tax[enabled];
    without it, the parameter is not sent."""
    records = [UsageRecord("web", "w1", "generator.website_generated", ACCOUNT, DEC, Decimal(1))]
    await record_usage_batch(uow_of(engine), DEFAULT_BOOK, records, clock=lambda: DEC)
    sql.execute(
        "INSERT INTO stripe_customers (customer_id, account_id) VALUES (%s, %s)",
        (CUSTOMER, ACCOUNT),
    )
    await close_due_periods(
        uow_of(engine), DEFAULT_BOOK, as_of=JAN + timedelta(days=1), grace=timedelta(hours=1)
    )
    pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
    assert (await sync_invoices(uow_of(engine), pusher, automatic_tax=True)).pushed == 1
    (create,) = fake.requests_to("POST /v1/invoices")
    assert create.params["automatic_tax"] == {"enabled": "true"}


async def test_a_second_stripe_invoice_naming_ours_does_not_move_it(
    engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
) -> None:
    """Once the renewal in_renewal1 bills our invoice, another paid Stripe invoice whose
    line carries our id (a stray copy) neither re-links nor pays ours."""
    await december_on_a_subscription(engine, fake)
    first = renewal("new", status="open", tax=None)
    event = fixture_event("new", "invoice.finalized", first, created=int(JAN.timestamp()) + 60)
    assert await apply(engine, event, JAN + timedelta(days=1)) == StripeOutcome.APPLIED
    stray = renewal("new", status="paid", tax=None)
    stray["id"] = "in_stray"
    event = fixture_event("new", "invoice.paid", stray, created=int(JAN.timestamp()) + 120)
    assert await apply(engine, event, JAN + timedelta(days=1)) == StripeOutcome.APPLIED
    assert sql.execute(
        "SELECT status, stripe_invoice_id FROM invoices WHERE invoice_id = %s", (OURS,)
    ).fetchone() == ("open", "in_renewal1")
