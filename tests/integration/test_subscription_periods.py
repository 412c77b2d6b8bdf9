"""Subscription-aligned billing periods on real PostgreSQL: once Stripe names an account's
subscription cycle, its periods follow it from the next boundary of its present periods,
through usage, quota checks and invoices; no recorded usage ever changes period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.account_store import PostgresUsageReader
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.quota_check import check_quota
from billing_worker.service.record_usage import record_usage_batch
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_payloads as sp
from tests.ledger_checks import aggregates_match_ledger
from tests.pricebooks import DEFAULT_BOOK

ACCOUNT = "acct_42"
NOV_15_10 = datetime(2026, 11, 15, 10, tzinfo=UTC)
DEC_15_10 = datetime(2026, 12, 15, 10, tzinfo=UTC)
STUB = BillingPeriod(datetime(2026, 12, 1, tzinfo=UTC), DEC_15_10)
_ids = iter(range(1, 10**9))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


async def stripe(engine: AsyncEngine, payload: dict[str, Any], now: datetime) -> StripeOutcome:
    return await apply_stripe_event(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, parse_stripe_event(payload), now=now
    )


async def subscribe(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    kind: str = "created",
    anchor: datetime | None = None,
) -> None:
    customer = sp.event("customer.created", sp.customer("cus_1", account_id=ACCOUNT), created=0)
    await stripe(engine, customer, now)
    obj = sp.subscription(
        "sub_1",
        customer="cus_1",
        price_id="price_plus_monthly",
        status="active",
        current_period_start=ts(start),
        current_period_end=ts(end),
    )
    if anchor is not None:
        obj["billing_cycle_anchor"] = ts(anchor)
    event = sp.event(f"customer.subscription.{kind}", obj, created=ts(now))
    assert await stripe(engine, event, now) == StripeOutcome.APPLIED


async def record(engine: AsyncEngine, *moments: datetime, quantity: int = 1000) -> None:
    records = [
        UsageRecord(
            source="chat",
            event_id=f"e{next(_ids)}",
            event_type="chat.tokens",
            account=ACCOUNT,
            occurred_at=moment,
            quantity=Decimal(quantity),
        )
        for moment in moments
    ]
    await record_usage_batch(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, records, clock=lambda: moments[-1]
    )


def cycles(sql: psycopg.Connection) -> list[tuple[datetime, datetime, int]]:
    return sql.execute(
        "SELECT effective_from, anchor, months FROM account_period_cycles "
        "WHERE account_id = %s ORDER BY effective_from",
        (ACCOUNT,),
    ).fetchall()


def ledger_periods(sql: psycopg.Connection) -> list[tuple[datetime, datetime, datetime]]:
    return sql.execute(
        "SELECT occurred_at, period_start, period_end FROM usage_ledger "
        "WHERE account_id = %s ORDER BY occurred_at",
        (ACCOUNT,),
    ).fetchall()


async def test_periods_follow_the_subscription_from_the_next_boundary(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Told on Nov 21 of a Nov 15 10:00 monthly subscription: November stays a calendar
    month (usage already there keeps its period), Dec 1 → Dec 15 10:00 is a stub, then
    Dec 15 10:00 → Jan 15 10:00; the change is an account-ledger entry."""
    await record(engine, datetime(2026, 11, 10, tzinfo=UTC))
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    assert cycles(sql) == [(datetime(2026, 12, 1, tzinfo=UTC), NOV_15_10, 1)]
    entry = sql.execute(
        "SELECT details FROM account_ledger WHERE kind = 'period_cycle_changed'"
    ).fetchone()
    assert entry is not None
    assert entry[0]["effective_from"] == "2026-12-01T00:00:00+00:00"

    await record(
        engine,
        datetime(2026, 11, 25, tzinfo=UTC),
        datetime(2026, 12, 5, tzinfo=UTC),
        datetime(2026, 12, 20, tzinfo=UTC),
    )
    assert [(start, end) for _, start, end in ledger_periods(sql)] == [
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        (STUB.start, STUB.end),
        (DEC_15_10, datetime(2027, 1, 15, 10, tzinfo=UTC)),
    ]
    assert aggregates_match_ledger(sql)


async def test_quota_check_answers_for_the_current_subscription_period(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """A quota check in the stub counts only the stub's usage and names the stub; one
    after it names the subscription's period even before any usage lands there."""
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    await record(engine, datetime(2026, 11, 30, tzinfo=UTC), quantity=500)
    await record(engine, datetime(2026, 12, 2, tzinfo=UTC), quantity=700)
    reader = PostgresUsageReader(engine)
    in_stub = await check_quota(
        reader,
        DEFAULT_BOOK,
        account=ACCOUNT,
        meter="tokens",
        quantity=Decimal(1),
        now=datetime(2026, 12, 3, tzinfo=UTC),
    )
    assert in_stub.period == STUB
    assert in_stub.answer.used == Decimal(700)
    after = await check_quota(
        reader,
        DEFAULT_BOOK,
        account=ACCOUNT,
        meter="tokens",
        quantity=Decimal(1),
        now=datetime(2026, 12, 16, tzinfo=UTC),
    )
    assert after.period == BillingPeriod(DEC_15_10, datetime(2027, 1, 15, 10, tzinfo=UTC))
    assert after.answer.used == Decimal(0)


async def test_close_invoices_the_month_the_stub_and_the_cycle(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Closing on Jan 20 writes three invoices: November, the stub (the fee prorated over
    the Nov 15 → Dec 15 cycle, rounded once) and Dec 15 → Jan 15 (the whole fee); closing
    again writes nothing."""
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    await record(engine, datetime(2026, 12, 5, tzinfo=UTC))
    closed = await close_due_periods(
        lambda: PostgresUnitOfWork(engine),
        DEFAULT_BOOK,
        as_of=datetime(2027, 1, 20, tzinfo=UTC),
        grace=timedelta(hours=1),
        account=ACCOUNT,
    )
    assert [c.period for c in closed] == [
        BillingPeriod(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        STUB,
        BillingPeriod(DEC_15_10, datetime(2027, 1, 15, 10, tzinfo=UTC)),
    ]
    fees = sql.execute(
        "SELECT i.period_start, l.amount FROM invoice_lines AS l JOIN invoices AS i "
        "USING (invoice_id) WHERE l.kind = 'plan_fee' ORDER BY i.period_start"
    ).fetchall()
    price = DEFAULT_BOOK.plan("PLUS").price
    second = timedelta(seconds=1)
    stub_share = Fraction((STUB.end - STUB.start) // second, (DEC_15_10 - NOV_15_10) // second)
    stub_fee = (price * Decimal(stub_share.numerator) / Decimal(stub_share.denominator)).quantize(
        Decimal("0.01"), ROUND_HALF_UP
    )
    by_period: dict[datetime, list[Decimal]] = {}
    for start, amount in fees:
        by_period.setdefault(start, []).append(amount)
    assert by_period[STUB.start] == [stub_fee]
    assert by_period[DEC_15_10] == [price]
    again = await close_due_periods(
        lambda: PostgresUnitOfWork(engine),
        DEFAULT_BOOK,
        as_of=datetime(2027, 1, 20, tzinfo=UTC),
        grace=timedelta(hours=1),
    )
    assert again == []


async def test_recorded_usage_ahead_pushes_the_change_later(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Usage already recorded in December (a replica's clock ahead, say) keeps its period:
    the change waits for the end of December."""
    await record(engine, datetime(2026, 12, 3, tzinfo=UTC))
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    assert cycles(sql) == [(datetime(2027, 1, 1, tzinfo=UTC), NOV_15_10, 1)]


async def test_a_change_close_to_a_boundary_waits_for_the_next_one(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Told at Nov 30 23:30, less than the margin before Dec 1: December stays whole (no
    worker may still be using a calendar it read a minute ago), the change is at Jan 1."""
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 30, 23, 30, tzinfo=UTC))
    assert cycles(sql) == [(datetime(2027, 1, 1, tzinfo=UTC), NOV_15_10, 1)]


async def test_renewals_and_repeats_change_nothing_and_a_new_anchor_does(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """The renewal's next period is the same cycle: no new change. A cycle re-anchored on
    Jan 3 takes effect at the end of the subscription period then in progress."""
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    await subscribe(
        engine,
        DEC_15_10,
        datetime(2027, 1, 15, 10, tzinfo=UTC),
        now=datetime(2026, 12, 15, 11, tzinfo=UTC),
        kind="updated",
    )
    assert len(cycles(sql)) == 1
    jan_3 = datetime(2027, 1, 3, tzinfo=UTC)
    await subscribe(
        engine,
        jan_3,
        datetime(2027, 2, 3, tzinfo=UTC),
        now=datetime(2027, 1, 3, 0, 5, tzinfo=UTC),
        kind="updated",
        anchor=jan_3,
    )
    assert cycles(sql)[1:] == [(datetime(2027, 1, 15, 10, tzinfo=UTC), jan_3, 1)]


async def test_weekly_subscription_keeps_calendar_months(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """A weekly cycle is not a whole number of months: the account stays on its periods."""
    await subscribe(
        engine,
        NOV_15_10,
        NOV_15_10 + timedelta(days=7),
        now=datetime(2026, 11, 16, tzinfo=UTC),
    )
    assert cycles(sql) == []


async def cancel(engine: AsyncEngine, now: datetime, *, subscription: str = "sub_1") -> None:
    obj = sp.subscription(
        subscription,
        customer="cus_1",
        price_id="price_plus_monthly",
        status="canceled",
        current_period_start=ts(DEC_15_10),
        current_period_end=ts(datetime(2027, 1, 15, 10, tzinfo=UTC)),
    )
    event = sp.event("customer.subscription.deleted", obj, created=ts(now))
    assert await stripe(engine, event, now) == StripeOutcome.APPLIED


async def test_an_ended_subscription_returns_the_account_to_calendar_months(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Canceled on Dec 20 in the Dec 15 → Jan 15 cycle: that period stays whole, then a stub
    Jan 15 10:00 → Feb 1 and calendar months again; the quota check and the closer follow,
    and the move is a period_cycle_changed ledger entry."""
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    jan_15_10 = datetime(2027, 1, 15, 10, tzinfo=UTC)
    await cancel(engine, datetime(2026, 12, 20, tzinfo=UTC))
    assert cycles(sql)[-1] == (jan_15_10, datetime(1970, 1, 1, tzinfo=UTC), 1)
    await record(engine, datetime(2027, 1, 20, tzinfo=UTC), datetime(2027, 2, 3, tzinfo=UTC))
    assert [(start, end) for _, start, end in ledger_periods(sql)] == [
        (jan_15_10, datetime(2027, 2, 1, tzinfo=UTC)),
        (datetime(2027, 2, 1, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC)),
    ]
    closed = await close_due_periods(
        lambda: PostgresUnitOfWork(engine),
        DEFAULT_BOOK,
        as_of=datetime(2027, 3, 2, tzinfo=UTC),
        grace=timedelta(hours=1),
        account=ACCOUNT,
    )
    assert [c.period for c in closed][-3:] == [
        BillingPeriod(DEC_15_10, jan_15_10),
        BillingPeriod(jan_15_10, datetime(2027, 2, 1, tzinfo=UTC)),
        BillingPeriod(datetime(2027, 2, 1, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC)),
    ]
    kinds = sql.execute(
        "SELECT details ->> 'months', details ->> 'effective_from' FROM account_ledger "
        "WHERE account_id = %s AND kind = 'period_cycle_changed' ORDER BY entry_id",
        (ACCOUNT,),
    ).fetchall()
    assert kinds[-1] == ("1", jan_15_10.isoformat())


async def test_an_ended_subscription_keeps_the_cycle_of_a_live_one(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """When a second live subscription replaced the one that ends, the account keeps
    following the cycle the live one set."""
    await subscribe(engine, NOV_15_10, DEC_15_10, now=datetime(2026, 11, 21, 12, tzinfo=UTC))
    replacement = sp.subscription(
        "sub_2",
        customer="cus_1",
        price_id="price_pro_monthly",
        status="active",
        current_period_start=ts(NOV_15_10),
        current_period_end=ts(DEC_15_10),
    )
    created = sp.event("customer.subscription.created", replacement, created=ts(NOV_15_10) + 9)
    assert await stripe(engine, created, datetime(2026, 11, 22, tzinfo=UTC)) == (
        StripeOutcome.APPLIED
    )
    before = cycles(sql)
    await cancel(engine, datetime(2026, 11, 23, tzinfo=UTC))
    assert cycles(sql) == before
