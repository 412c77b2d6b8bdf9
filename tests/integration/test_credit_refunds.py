"""Refunds of credit packs on real PostgreSQL, from Stripe's example objects of both API
versions: the refunded share of the pack is taken back (at most what is unspent), once,
and what could not be is recorded; ``[credits] on_refund = "keep"`` takes nothing back."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.pricebook import PriceBook, RefundPolicy
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.service.record_usage import record_usage_batch
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_fixtures as sf
from tests.ledger_checks import credit_balances_match_ledger
from tests.pricebooks import DEFAULT_BOOK
from tests.records import usage

Version = Literal["old", "new"]
VERSIONS = pytest.mark.parametrize("version", ["old", "new"])
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
ACCOUNT = "acct_r"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def apply(
    engine: AsyncEngine, payload: dict[str, Any], book: PriceBook = DEFAULT_BOOK
) -> StripeOutcome:
    return await apply_stripe_event(
        lambda: PostgresUnitOfWork(engine), book, parse_stripe_event(payload), now=NOW
    )


async def buy_pack(engine: AsyncEngine, version: Version) -> str:
    """A paid Checkout of one 1,000-credit pack (10.00 usd); its payment intent."""
    session = sf.fixture(
        version,
        "checkout.session",
        mode="payment",
        status="complete",
        payment_status="paid",
        customer="cus_r",
        client_reference_id=ACCOUNT,
        metadata={"price_id": "price_credits_1000", "quantity": "1"},
        amount_total=1000,
        currency="usd",
    )
    event = sf.fixture_event(version, "checkout.session.completed", session, created=T0)
    assert await apply(engine, event) == StripeOutcome.APPLIED
    return str(session["payment_intent"])


def refund_event(version: Version, intent: str, refunded: int, created: int) -> dict[str, Any]:
    """charge.refunded of the pack's charge (Stripe's example charge, no customer, no
    metadata) with ``refunded`` cents of its 1000 refunded so far."""
    charge = sf.fixture(
        version,
        "charge",
        payment_intent=intent,
        amount=1000,
        amount_captured=1000,
        amount_refunded=refunded,
        refunded=refunded == 1000,
        customer=None,
        metadata={},
        currency="usd",
    )
    return sf.fixture_event(version, "charge.refunded", charge, created=created)


def pack_remaining(sql: psycopg.Connection) -> Decimal:
    row = sql.execute("SELECT remaining FROM credit_grants WHERE source = 'purchase'").fetchone()
    assert row is not None
    return Decimal(row[0])


def reversals(sql: psycopg.Connection) -> list[Decimal]:
    rows = sql.execute(
        "SELECT credits FROM credit_ledger WHERE kind = 'reversal' ORDER BY entry_id"
    ).fetchall()
    return [Decimal(r[0]) for r in rows]


def refund_details(sql: psycopg.Connection) -> list[dict[str, Any]]:
    rows = sql.execute(
        "SELECT details FROM payment_ledger WHERE kind = 'refund' ORDER BY entry_id"
    ).fetchall()
    return [r[0] for r in rows]


async def spend(engine: AsyncEngine, calls: int) -> None:
    """``calls`` API calls (a credit each): the FREE plan's 100 credits go first."""
    records = [usage("api.call", calls, ACCOUNT, at=NOW)]
    await record_usage_batch(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, records, clock=lambda: NOW
    )


class TestClawBack:
    @VERSIONS
    async def test_full_refund_of_an_unspent_pack_takes_it_all_back(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A full refund takes the whole unspent pack back as one reversal entry, noted in
        the refund's details and as a credits_clawed_back account entry."""
        intent = await buy_pack(engine, version)
        assert await apply(engine, refund_event(version, intent, 1000, T0 + 60)) == (
            StripeOutcome.APPLIED
        )
        assert reversals(sql) == [Decimal(-1000)]
        assert pack_remaining(sql) == 0
        [details] = refund_details(sql)
        assert (details["credits_clawed_back"], details["credits_already_spent"]) == ("1000", "0")
        entry = sql.execute(
            "SELECT details FROM account_ledger WHERE kind = 'credits_clawed_back'"
        ).fetchone()
        assert entry is not None
        assert (entry[0]["credits_clawed_back"], entry[0]["refunded"]) == ("1000", "10.00")
        assert credit_balances_match_ledger(sql)

    @VERSIONS
    async def test_partial_refunds_take_back_their_share_once(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """3.00 then the rest refunded: 300 then 700 credits back; the same delivery again,
        or a new event with the same running total, takes nothing more."""
        intent = await buy_pack(engine, version)
        first = refund_event(version, intent, 300, T0 + 60)
        assert await apply(engine, first) == StripeOutcome.APPLIED
        assert await apply(engine, first) == StripeOutcome.DUPLICATE
        assert reversals(sql) == [Decimal(-300)]
        assert pack_remaining(sql) == 700
        full = refund_event(version, intent, 1000, T0 + 120)
        assert await apply(engine, full) == StripeOutcome.APPLIED
        again = refund_event(version, intent, 1000, T0 + 180)
        assert await apply(engine, again) == StripeOutcome.APPLIED
        assert reversals(sql) == [Decimal(-300), Decimal(-700)]
        assert pack_remaining(sql) == 0
        refunds = sql.execute(
            "SELECT amount FROM payment_ledger WHERE kind = 'refund' ORDER BY entry_id"
        ).fetchall()
        assert refunds == [(Decimal("-3.00"),), (Decimal("-7.00"),)]
        assert credit_balances_match_ledger(sql)

    @VERSIONS
    async def test_spent_credits_are_not_taken_back_but_recorded(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """700 of the pack spent: refunding half takes back the 300 left (200 of its share
        already spent), the rest takes nothing (500 spent); both are in the ledgers."""
        intent = await buy_pack(engine, version)
        await spend(engine, 800)
        assert pack_remaining(sql) == 300
        await apply(engine, refund_event(version, intent, 500, T0 + 60))
        await apply(engine, refund_event(version, intent, 1000, T0 + 120))
        assert reversals(sql) == [Decimal(-300)]
        assert pack_remaining(sql) == 0
        assert [
            (d["credits_refunded"], d["credits_clawed_back"], d["credits_already_spent"])
            for d in refund_details(sql)
        ] == [("500", "300", "200"), ("500", "0", "500")]
        entries = sql.execute(
            "SELECT details ->> 'credits_already_spent' FROM account_ledger "
            "WHERE kind = 'credits_clawed_back' ORDER BY entry_id"
        ).fetchall()
        assert entries == [("200",), ("500",)]
        assert credit_balances_match_ledger(sql)

    @VERSIONS
    async def test_keep_policy_leaves_the_credits_spendable(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """With on_refund = keep the refund is money only: the pack stays whole, and the
        refund says the credits were kept."""
        keep = dataclasses.replace(DEFAULT_BOOK, credit_refund_policy=RefundPolicy.KEEP)
        intent = await buy_pack(engine, version)
        assert await apply(engine, refund_event(version, intent, 1000, T0 + 60), keep) == (
            StripeOutcome.APPLIED
        )
        assert reversals(sql) == []
        assert pack_remaining(sql) == 1000
        [details] = refund_details(sql)
        assert (details["on_refund"], details["credits_kept"]) == ("keep", "1000")
