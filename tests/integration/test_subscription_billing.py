"""Who bills what, on real PostgreSQL and the local fake Stripe: a plan fee that a Stripe
subscription charges is shown on our invoice but never pushed, the usage goes onto the
subscription's next invoice, and a subscription's plan applies from its own start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.reports import period_report
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.pricebook_file import parse_pricebook
from billing_worker.adapters.stripe_api import StripeInvoiceSync
from billing_worker.domain.periods import calendar_month_of
from billing_worker.domain.pricebook import PriceBook, UsageBilling
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import change_plan
from billing_worker.service.invoice_sync import sync_invoices
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_payloads as sp
from tests.fake_stripe import FakeStripe
from tests.pricebooks import DEFAULT_BOOK

ACCOUNT = "acct_sub"
CUSTOMER = "cus_sub"
SUB = "sub_plus"
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
AFTER_CLOSE = datetime(2027, 1, 2, tzinfo=UTC)
_ids = iter(range(1, 10**9))


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(customers={CUSTOMER}) as server:
        server.subscriptions[SUB] = CUSTOMER
        yield server


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


def uow_of(engine: AsyncEngine) -> Any:
    return lambda: PostgresUnitOfWork(engine)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


async def stripe_event(
    engine: AsyncEngine, payload: dict[str, Any], now: datetime, book: PriceBook = DEFAULT_BOOK
) -> None:
    outcome = await apply_stripe_event(uow_of(engine), book, parse_stripe_event(payload), now=now)
    assert outcome == StripeOutcome.APPLIED


async def link_customer(engine: AsyncEngine) -> None:
    customer = sp.customer(CUSTOMER, account_id=ACCOUNT)
    await stripe_event(engine, sp.event("customer.created", customer, created=0), DEC)


def subscription(
    *,
    price: str = "price_plus_monthly",
    status: str = "active",
    start: datetime = DEC,
    end: datetime = JAN,
    started: datetime | None = None,
) -> dict[str, Any]:
    obj = sp.subscription(
        SUB,
        customer=CUSTOMER,
        price_id=price,
        status=status,
        current_period_start=ts(start),
        current_period_end=ts(end),
    )
    obj["start_date"] = ts(started or start)
    return obj


async def subscribe(
    engine: AsyncEngine,
    *,
    processed: datetime,
    created: datetime | None = None,
    started: datetime | None = None,
    book: PriceBook = DEFAULT_BOOK,
) -> None:
    """``customer.subscription.created`` on PLUS, made by Stripe at ``created`` (default:
    the subscription's start) and applied at ``processed``."""
    start = started or DEC
    obj = subscription(started=start)
    event = sp.event("customer.subscription.created", obj, created=ts(created or start))
    await stripe_event(engine, event, processed, book)


async def cancel(engine: AsyncEngine, *, ended: datetime, processed: datetime) -> None:
    obj = subscription(status="canceled")
    obj["ended_at"] = obj["canceled_at"] = ts(ended)
    event = sp.event("customer.subscription.deleted", obj, created=ts(ended))
    await stripe_event(engine, event, processed)


async def websites(engine: AsyncEngine, *moments: datetime) -> None:
    records = [
        UsageRecord("web", f"w{next(_ids)}", "generator.website_generated", ACCOUNT, at, Decimal(1))
        for at in moments
    ]
    await record_usage_batch(
        uow_of(engine), DEFAULT_BOOK, records, clock=lambda: max(moments) + timedelta(minutes=1)
    )


async def close_december(engine: AsyncEngine) -> None:
    await close_due_periods(
        uow_of(engine), DEFAULT_BOOK, as_of=AFTER_CLOSE, grace=timedelta(hours=1)
    )


def plan_lines(sql: psycopg.Connection) -> list[tuple[str, Decimal, str, str | None]]:
    return sql.execute(
        "SELECT description, amount, billed_by, stripe_subscription_id FROM invoice_lines "
        "WHERE kind = 'plan_fee' ORDER BY line_no"
    ).fetchall()


def pusher(fake: FakeStripe) -> StripeInvoiceSync:
    return StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)


class TestPlanFeeOfASubscription:
    """A Stripe subscription on a licensed price: Stripe charges the fee, we the usage."""

    async def test_fee_is_shown_and_not_pushed_usage_goes_onto_the_subscription(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """The PLUS fee is a line of the December invoice marked billed by the
        subscription; the sync pushes only the 3 websites (150 cents), as one pending item
        on that subscription with the usage period, and makes no Stripe invoice."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        await websites(engine, *(DEC + timedelta(days=d) for d in (2, 3, 4)))
        await close_december(engine)
        ((description, amount, billed_by, sub),) = plan_lines(sql)
        assert (amount, billed_by, sub) == (Decimal("9.90"), "stripe_subscription", SUB)
        assert f"billed by Stripe subscription {SUB}" in description
        done = await sync_invoices(uow_of(engine), pusher(fake))
        assert (done.pushed, done.failed) == (1, 0)
        assert fake.invoices == []
        (item,) = fake.invoice_items
        assert (item["amount"], item["subscription"], item["invoice"]) == (150, SUB, None)
        assert item["period"] == {"start": ts(DEC), "end": ts(JAN)}
        assert item["metadata"]["billing_invoice_id"] == "inv-202612-acct_sub"
        assert sql.execute(
            "SELECT stripe_sync_target, stripe_subscription_id, stripe_invoice_id FROM invoices"
        ).fetchone() == ("subscription", SUB, None)
        assert (await sync_invoices(uow_of(engine), pusher(fake))).pushed == 0

    async def test_stripe_invoicing_the_items_charges_each_once(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """At the subscription's renewal Stripe's one invoice holds its own fee and our
        usage item; a sync round after that pushes nothing more."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        await websites(engine, DEC + timedelta(days=2))
        await close_december(engine)
        await sync_invoices(uow_of(engine), pusher(fake))
        renewal = fake.invoice_subscription(SUB, fee=990)
        assert [i["invoice"] for i in fake.invoice_items] == [renewal]
        assert (await sync_invoices(uow_of(engine), pusher(fake))).pushed == 0
        assert len(fake.invoice_items) == 1

    async def test_the_invoice_event_and_the_report_split_who_bills(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """invoice.ready and the report say 9.90 is billed by the subscription and 1.00
        by the worker, out of a total of 10.90."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        await websites(engine, DEC + timedelta(days=2), DEC + timedelta(days=3))
        await close_december(engine)
        (data,) = sql.execute(
            "SELECT payload -> 'data' FROM outbox WHERE event_type = 'invoice.ready'"
        ).fetchone()
        assert (data["total"], data["billed_by_subscription"], data["billed_by_worker"]) == (
            "10.90",
            "9.90",
            "1.00",
        )
        assert [line["billed_by"] for line in data["lines"]][:1] == ["stripe_subscription"]
        async with engine.connect() as conn:
            report = await period_report(conn, calendar_month_of(DEC))
        assert report["billed_by"] == [
            {"billed_by": "stripe_subscription", "currency": "usd", "amount": "9.90"},
            {"billed_by": "worker", "currency": "usd", "amount": "1.00"},
        ]

    async def test_separate_invoice_policy_pushes_usage_without_the_fee(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """With ``[stripe] usage_billing = "separate_invoice"`` the usage is a Stripe
        invoice of its own, still without the fee the subscription charges."""
        book = parse_pricebook(
            DEFAULT_BOOK.source.replace('version = "2026-11-launch"', 'version = "separate"')
            + '\n[stripe]\nusage_billing = "separate_invoice"\n'
        )
        assert book.usage_billing is UsageBilling.SEPARATE_INVOICE
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        await websites(engine, DEC + timedelta(days=2))
        await close_december(engine)
        done = await sync_invoices(uow_of(engine), pusher(fake), usage_billing=book.usage_billing)
        assert done.pushed == 1
        (stripe_invoice,) = fake.invoices
        assert [(i["amount"], i["invoice"]) for i in fake.invoice_items] == [
            (50, stripe_invoice["id"])
        ]

    async def test_pending_items_survive_a_lost_answer_and_forgotten_keys(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """Stripe made the pending item but the answer was lost, and its idempotency keys
        expired before the retry: the retry finds the item by its metadata, adds none."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        await websites(engine, DEC + timedelta(days=2))
        await close_december(engine)
        fake.fail("POST /v1/invoiceitems", times=1, when="after", status=500)
        assert (await sync_invoices(uow_of(engine), pusher(fake))).retry_later == 1
        fake.forget_idempotency_keys()
        assert (await sync_invoices(uow_of(engine), pusher(fake))).pushed == 1
        assert len(fake.invoice_items) == 1


class TestWhenTheSubscriptionsPlanApplies:
    """From the subscription's own start, within the open period; never twice billed."""

    async def test_plan_applies_from_the_start_not_from_when_the_event_arrived(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A subscription that began Dec 1 00:00, whose event is applied at 05:00 on
        Dec 1, puts the whole of December on PLUS: one unprorated fee line."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(hours=5))
        await close_december(engine)
        assert [(amount, by) for _d, amount, by, _s in plan_lines(sql)] == [
            (Decimal("9.90"), "stripe_subscription")
        ]

    async def test_a_subscription_starting_mid_period(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Begun Dec 11 (applied Dec 11 02:00): FREE Dec 1 → 11 billed by the worker,
        PLUS Dec 11 → Jan 1 (21/31 of 9.90 = 6.71) billed by the subscription."""
        start = datetime(2026, 12, 11, tzinfo=UTC)
        await link_customer(engine)
        await subscribe(engine, processed=start + timedelta(hours=2), started=start)
        await close_december(engine)
        assert [(amount, by) for _d, amount, by, _s in plan_lines(sql)] == [
            (Decimal("0.00"), "worker"),
            (Decimal("6.71"), "stripe_subscription"),
        ]

    async def test_a_start_before_the_open_period_is_clamped_to_it(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A subscription begun Nov 20 that the worker first hears of on Dec 3: the plan
        applies from Dec 1, the start of the open period; November is not re-billed."""
        await link_customer(engine)
        await subscribe(
            engine,
            processed=datetime(2026, 12, 3, tzinfo=UTC),
            created=datetime(2026, 12, 2, tzinfo=UTC),
            started=datetime(2026, 11, 20, tzinfo=UTC),
        )
        (effective,) = sql.execute(
            "SELECT effective_at FROM account_ledger WHERE kind = 'plan_changed' "
            "AND details ->> 'plan' = 'PLUS'"
        ).fetchone()
        assert effective == DEC

    async def test_an_upgrade_applies_from_when_stripe_made_it(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """PLUS from Dec 1, upgraded to PRO by Stripe on Dec 16 00:00 (the event applied
        at 03:00): PLUS 15/31 (4.79) then PRO 16/31 (10.27), both billed by the
        subscription."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        upgraded = datetime(2026, 12, 16, tzinfo=UTC)
        event = sp.event(
            "customer.subscription.updated",
            subscription(price="price_pro_monthly"),
            created=ts(upgraded),
        )
        await stripe_event(engine, event, upgraded + timedelta(hours=3))
        await close_december(engine)
        assert [(amount, by) for _d, amount, by, _s in plan_lines(sql)] == [
            (Decimal("4.79"), "stripe_subscription"),
            (Decimal("10.27"), "stripe_subscription"),
        ]

    async def test_a_cancellation_bills_the_last_usage_exactly_once(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """Canceled Dec 21 (applied an hour later): PLUS to Dec 21 billed by the ended
        subscription, FREE after it by the worker; with the subscription gone, all of
        December's usage (before and after the end) is one Stripe invoice of its own,
        pushed once; nothing is left pending on the dead subscription."""
        await link_customer(engine)
        await subscribe(engine, processed=DEC + timedelta(minutes=5))
        ended = datetime(2026, 12, 21, tzinfo=UTC)
        await websites(engine, DEC + timedelta(days=3))
        await cancel(engine, ended=ended, processed=ended + timedelta(hours=1))
        await websites(engine, ended + timedelta(days=2), ended + timedelta(days=3))
        await close_december(engine)
        assert [(amount, by) for _d, amount, by, _s in plan_lines(sql)] == [
            (Decimal("6.39"), "stripe_subscription"),
            (Decimal("0.00"), "worker"),
        ]
        assert (await sync_invoices(uow_of(engine), pusher(fake))).pushed == 1
        assert (await sync_invoices(uow_of(engine), pusher(fake))).pushed == 0
        (stripe_invoice,) = fake.invoices
        assert [(i["amount"], i["invoice"]) for i in fake.invoice_items] == [
            (150, stripe_invoice["id"])
        ]

    async def test_an_operator_plan_is_billed_by_the_worker_until_stripe_takes_over(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """PLUS set by an operator on Dec 1, then a Stripe subscription on PLUS from
        Dec 11: the worker bills PLUS Dec 1 → 11 (3.19), the subscription the rest
        (6.71); the fee is never on both."""
        await link_customer(engine)
        await change_plan(
            uow_of(engine),
            DEFAULT_BOOK,
            account=ACCOUNT,
            plan="PLUS",
            change_id="op-1",
            now=DEC,
        )
        start = datetime(2026, 12, 11, tzinfo=UTC)
        await subscribe(engine, processed=start + timedelta(minutes=1), started=start)
        await close_december(engine)
        assert [(amount, by) for _d, amount, by, _s in plan_lines(sql)] == [
            (Decimal("3.19"), "worker"),
            (Decimal("6.71"), "stripe_subscription"),
        ]
        await sync_invoices(uow_of(engine), pusher(fake))
        assert [i["amount"] for i in fake.invoice_items] == [319]
        assert fake.invoice_items[0]["subscription"] == SUB

    async def test_a_plan_set_by_the_worker_alone_is_pushed_whole(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """No subscription: the PLUS fee and the usage make one Stripe invoice."""
        await link_customer(engine)
        await change_plan(
            uow_of(engine), DEFAULT_BOOK, account=ACCOUNT, plan="PLUS", change_id="op", now=DEC
        )
        await websites(engine, DEC + timedelta(days=2))
        await close_december(engine)
        await sync_invoices(uow_of(engine), pusher(fake))
        (stripe_invoice,) = fake.invoices
        assert sorted(i["amount"] for i in fake.invoice_items) == [50, 990]
        assert all(i["invoice"] == stripe_invoice["id"] for i in fake.invoice_items)
