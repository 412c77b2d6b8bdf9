"""Applying relayed Stripe events on real PostgreSQL: lifecycle, ordering, duplicates,
purchases, refunds, invoices, and the events that must be dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_payloads as sp
from tests.ledger_checks import credit_balances_match_ledger
from tests.pricebooks import DEFAULT_BOOK

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
PERIOD = {"current_period_start": T0, "current_period_end": T0 + 30 * 86_400}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def apply(engine: AsyncEngine, payload: dict[str, Any]) -> StripeOutcome:
    return await apply_stripe_event(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, parse_stripe_event(payload), now=NOW
    )


def sub_event(kind: str, status: str, created: int, **changes: Any) -> dict[str, Any]:
    obj = sp.subscription(
        "sub_1",
        customer="cus_1",
        price_id=changes.pop("price_id", "price_plus_monthly"),
        status=status,
        **PERIOD,
        **changes,
    )
    return sp.event(f"customer.subscription.{kind}", obj, created=created)


def account_state(sql: psycopg.Connection, account: str = "acct_42") -> tuple[str, str]:
    row = sql.execute(
        "SELECT plan, status FROM accounts WHERE account_id = %s", (account,)
    ).fetchone()
    return row[0], row[1]


def changes(sql: psycopg.Connection) -> list[tuple[str, str]]:
    return [
        (p["data"]["plan"], p["data"]["status"])
        for (p,) in sql.execute(
            "SELECT payload FROM outbox WHERE event_type = 'subscription.changed' "
            "ORDER BY outbox_id"
        ).fetchall()
    ]


async def link(engine: AsyncEngine) -> None:
    customer = sp.event("customer.created", sp.customer("cus_1", account_id="acct_42"), created=T0)
    assert await apply(engine, customer) == StripeOutcome.APPLIED


class TestSubscriptionLifecycle:
    async def test_trial_active_past_due_active_canceled(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """The whole lifecycle moves plan and status step by step, each change announced
        once, and the end returns the account to the default plan."""
        await link(engine)
        steps = [
            ("created", "trialing"),
            ("updated", "active"),
            ("updated", "past_due"),
            ("updated", "active"),
        ]
        for i, (kind, status) in enumerate(steps, start=1):
            assert await apply(engine, sub_event(kind, status, T0 + i)) == StripeOutcome.APPLIED
            assert account_state(sql) == ("PLUS", status)
        assert (
            await apply(engine, sub_event("deleted", "canceled", T0 + 9)) == StripeOutcome.APPLIED
        )
        assert account_state(sql) == ("FREE", "canceled")
        assert changes(sql) == [
            ("PLUS", "trialing"),
            ("PLUS", "active"),
            ("PLUS", "past_due"),
            ("PLUS", "active"),
            ("FREE", "canceled"),
        ]
        period = sql.execute(
            "SELECT payload->'data'->>'current_period_start' FROM outbox "
            "WHERE event_type = 'subscription.changed' LIMIT 1"
        ).fetchone()
        assert period == (datetime.fromtimestamp(T0, UTC).isoformat().replace("+00:00", "Z"),)
        assert credit_balances_match_ledger(sql)

    async def test_late_update_never_resurrects_a_canceled_subscription(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Out of order: deleted (t+5) arrives before updated (t+4) and before an update
        stamped the same second as the deletion: both late ones are stale."""
        await link(engine)
        await apply(engine, sub_event("created", "active", T0 + 1))
        assert (
            await apply(engine, sub_event("deleted", "canceled", T0 + 5)) == StripeOutcome.APPLIED
        )
        assert await apply(engine, sub_event("updated", "active", T0 + 4)) == StripeOutcome.STALE
        assert await apply(engine, sub_event("updated", "active", T0 + 5)) == StripeOutcome.STALE
        assert account_state(sql) == ("FREE", "canceled")
        outcomes = sql.execute(
            "SELECT outcome, count(*) FROM stripe_events GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert outcomes == [("applied", 3), ("stale", 2)]

    async def test_duplicate_delivery_applies_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """The same event id twice: the second is a duplicate with no effect."""
        await link(engine)
        created = sub_event("created", "active", T0 + 1, price_id="price_pro_monthly")
        assert await apply(engine, created) == StripeOutcome.APPLIED
        assert await apply(engine, created) == StripeOutcome.DUPLICATE
        assert account_state(sql) == ("PRO", "active")
        assert changes(sql) == [("PRO", "active")]

    async def test_subscription_names_its_account_without_a_customer_event(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """metadata.account_id on the subscription is enough (newer API: period on items)."""
        event = sub_event("created", "active", T0, account_id="acct_7", period_on_items_only=True)
        assert await apply(engine, event) == StripeOutcome.APPLIED
        assert account_state(sql, "acct_7") == ("PLUS", "active")
        stored = sql.execute(
            "SELECT current_period_start, current_period_end FROM subscriptions"
        ).fetchone()
        assert stored == (
            datetime.fromtimestamp(T0, UTC),
            datetime.fromtimestamp(T0 + 30 * 86_400, UTC),
        )

    async def test_first_events_of_an_object_racing_keep_the_newest(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """The newer event of a new object is being applied (uncommitted) when an older one
        arrives on another replica: the older waits for it, then is stale."""
        await link(engine)
        newer = parse_stripe_event(sub_event("updated", "active", T0 + 2))
        async with PostgresUnitOfWork(engine) as uow:
            assert await uow.stripe.claim_event(newer)
            assert await uow.stripe.advance_object(newer, terminal=False)
            older = asyncio.create_task(apply(engine, sub_event("created", "incomplete", T0 + 1)))
            await asyncio.sleep(0.3)
            assert not older.done()
            await uow.commit()
        assert await older == StripeOutcome.STALE
        clock = sql.execute("SELECT last_created FROM stripe_objects WHERE object_id = 'sub_1'")
        assert clock.fetchone() == (datetime.fromtimestamp(T0 + 2, UTC),)

    async def test_ending_one_subscription_keeps_another_live_one(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """PLUS replaced by a new PRO subscription: the old one's deletion leaves PRO on."""
        await link(engine)
        await apply(engine, sub_event("created", "active", T0 + 1))
        pro = sp.subscription(
            "sub_2", customer="cus_1", price_id="price_pro_monthly", status="active", **PERIOD
        )
        await apply(engine, sp.event("customer.subscription.created", pro, created=T0 + 2))
        await apply(engine, sub_event("deleted", "canceled", T0 + 3))
        assert account_state(sql) == ("PRO", "active")

    async def test_paused_subscription_pays_nothing_until_it_resumes(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """paused (a trial ended without a payment method) puts the account on the default
        plan; resuming (active) brings the plan back."""
        await link(engine)
        await apply(engine, sub_event("created", "trialing", T0 + 1))
        await apply(engine, sub_event("updated", "paused", T0 + 2))
        assert account_state(sql) == ("FREE", "paused")
        await apply(engine, sub_event("updated", "active", T0 + 3))
        assert account_state(sql) == ("PLUS", "active")


class TestPurchasesAndMoney:
    async def test_delayed_payment_purchase_is_granted_when_paid(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A bank-debit checkout completes unpaid (nothing granted), then
        async_payment_succeeded grants the pack once."""
        session = sp.checkout_session(
            "cs_9",
            mode="payment",
            client_reference_id="acct_42",
            price_id="price_credits_1000",
            payment_status="unpaid",
        )
        await apply(engine, sp.event("checkout.session.completed", session, created=T0))
        assert sql.execute("SELECT count(*) FROM credit_grants").fetchone() == (0,)
        paid = {**session, "payment_status": "paid"}
        succeeded = sp.event("checkout.session.async_payment_succeeded", paid, created=T0 + 60)
        assert await apply(engine, succeeded) == StripeOutcome.APPLIED
        assert sql.execute("SELECT source, amount FROM credit_grants").fetchall() == [
            ("purchase", Decimal(1000))
        ]

    async def test_invoice_resolves_its_account_through_the_subscription_metadata(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """An invoice of a customer not linked yet finds the account in the subscription
        metadata Stripe copies onto it (older and newer API shapes)."""
        for i, shape in enumerate(("old", "basil")):
            obj = sp.invoice(
                f"in_s{i}",
                customer=f"cus_new{i}",
                status="paid",
                amount_due=990,
                amount_paid=990,
            )
            details = {"metadata": {"account_id": f"acct_sub{i}"}}
            if shape == "old":
                obj["subscription_details"] = details
            else:
                obj["parent"] = {"subscription_details": details}
            assert await apply(engine, sp.event("invoice.paid", obj, created=T0)) == (
                StripeOutcome.APPLIED
            )
        accounts = sql.execute("SELECT account_id FROM payment_ledger ORDER BY entry_id").fetchall()
        assert accounts == [("acct_sub0",), ("acct_sub1",)]

    async def test_credit_pack_purchase_grants_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A paid credit-pack checkout grants the pack (x quantity) as purchased credits,
        never expiring, once whatever the redeliveries; the payment is in the ledger."""
        session = sp.checkout_session(
            "cs_1",
            mode="payment",
            client_reference_id="acct_42",
            customer="cus_1",
            price_id="price_credits_1000",
            quantity=2,
            amount_total=2000,
        )
        first = sp.event("checkout.session.completed", session, created=T0)
        assert await apply(engine, first) == StripeOutcome.APPLIED
        # Stripe can send the same session in a second event (a new id): the grant and the
        # payment are keyed by the session, so nothing is granted or booked twice
        again = sp.event("checkout.session.completed", session, created=T0)
        assert await apply(engine, again) == StripeOutcome.APPLIED
        grants = sql.execute(
            "SELECT source, amount, priority, expires_at FROM credit_grants "
            "WHERE account_id = 'acct_42'"
        ).fetchall()
        assert grants == [("purchase", Decimal(2000), 20, None)]
        payments = sql.execute("SELECT kind, amount, currency FROM payment_ledger").fetchall()
        assert payments == [("payment", Decimal("20.00"), "usd")]
        linked = sql.execute("SELECT account_id FROM stripe_customers WHERE customer_id = 'cus_1'")
        assert linked.fetchone() == ("acct_42",)

    async def test_partial_refunds_reverse_each_amount_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """charge.refunded carries the running total: two partial refunds give two reversing
        entries adding up to it; an older event arriving late changes nothing."""
        await link(engine)
        first = sp.event(
            "charge.refunded",
            sp.charge("ch_1", customer="cus_1", amount=1000, amount_refunded=300),
            created=T0 + 1,
        )
        second = sp.event(
            "charge.refunded",
            sp.charge("ch_1", customer="cus_1", amount=1000, amount_refunded=1000),
            created=T0 + 2,
        )
        assert await apply(engine, first) == StripeOutcome.APPLIED
        assert await apply(engine, second) == StripeOutcome.APPLIED
        refunds = sql.execute(
            "SELECT amount FROM payment_ledger WHERE kind = 'refund' ORDER BY entry_id"
        ).fetchall()
        assert refunds == [(Decimal("-3.00"),), (Decimal("-7.00"),)]

    async def test_invoice_paid_and_failed(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """invoice.paid books the payment and announces it; payment_failed announces the
        failure with Stripe's message; amounts are in major units."""
        await link(engine)
        failed = sp.invoice(
            "in_1",
            customer="cus_1",
            status="open",
            amount_due=990,
            amount_paid=0,
            billing_invoice_id="inv_2026_11_acct_42",
            attempt_count=1,
        )
        await apply(engine, sp.event("invoice.payment_failed", failed, created=T0 + 1))
        paid = sp.invoice(
            "in_1",
            customer="cus_1",
            status="paid",
            amount_due=990,
            amount_paid=990,
            billing_invoice_id="inv_2026_11_acct_42",
            attempt_count=2,
        )
        await apply(engine, sp.event("invoice.paid", paid, created=T0 + 2))
        events = sql.execute(
            "SELECT event_type, payload->'data' FROM outbox WHERE event_type LIKE 'invoice.%' "
            "ORDER BY outbox_id"
        ).fetchall()
        assert [(t, d["amount"], d["invoice_id"]) for t, d in events] == [
            ("invoice.payment_failed", "9.90", "inv_2026_11_acct_42"),
            ("invoice.paid", "9.90", "inv_2026_11_acct_42"),
        ]
        assert sql.execute("SELECT kind, amount FROM payment_ledger").fetchall() == [
            ("payment", Decimal("9.90"))
        ]


class TestRefusedAndIgnored:
    async def test_unresolvable_account_is_refused_not_guessed(self, engine: AsyncEngine) -> None:
        """An invoice of an unlinked customer that names no account is a permanent error
        naming why (it is dead-lettered, nothing applied)."""
        invoice = sp.invoice("in_9", customer="cus_x", status="paid", amount_due=1, amount_paid=1)
        with pytest.raises(PermanentError, match="cus_x is not linked") as caught:
            await apply(engine, sp.event("invoice.paid", invoice, created=T0))
        assert caught.value.reason == "unknown_account"

    async def test_unknown_price_is_refused(self, engine: AsyncEngine) -> None:
        """A subscription to a price the book doesn't map is dead-lettered as unknown_price."""
        await link(engine)
        with pytest.raises(PermanentError, match="price_gold") as caught:
            await apply(engine, sub_event("created", "active", T0 + 1, price_id="price_gold"))
        assert caught.value.reason == "unknown_price"

    async def test_other_types_are_ignored_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """An event type the worker doesn't handle is acked as ignored (and its redelivery
        as a duplicate)."""
        event = sp.event("product.created", {"id": "prod_1", "object": "product"}, created=T0)
        assert await apply(engine, event) == StripeOutcome.IGNORED
        assert await apply(engine, event) == StripeOutcome.DUPLICATE
        assert sql.execute("SELECT outcome FROM stripe_events").fetchall() == [("ignored",)]
