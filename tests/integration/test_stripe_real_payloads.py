"""Stripe's own example objects (API 2024-06-20 and 2026-07-29.dahlia) as relayed events on
real PostgreSQL: guest-checkout refunds, customers that name no account yet, invoices'
payment intents, and subscriptions with several items."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_fixtures as sf
from tests import stripe_payloads as sp
from tests.pricebooks import DEFAULT_BOOK

Version = Literal["old", "new"]
VERSIONS = pytest.mark.parametrize("version", ["old", "new"])
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
DAY = 86_400


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def apply(engine: AsyncEngine, payload: dict[str, Any]) -> StripeOutcome:
    return await apply_stripe_event(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, parse_stripe_event(payload), now=NOW
    )


def guest_checkout(version: Version, account: str = "acct_g") -> dict[str, Any]:
    """A paid credit-pack Checkout of a guest: no customer, the account as
    client_reference_id, the pack in metadata, and the fixture's payment intent."""
    return sf.fixture(
        version,
        "checkout.session",
        mode="payment",
        status="complete",
        payment_status="paid",
        customer=None,
        client_reference_id=account,
        metadata={"price_id": "price_credits_1000", "quantity": "1"},
        amount_subtotal=1000,
        amount_total=1000,
        currency="usd",
    )


def refunded_charge(version: Version, intent: str | None, refunded: int) -> dict[str, Any]:
    """Stripe's example charge of 10.00 usd (no customer, empty metadata), ``refunded``
    cents of it refunded, paid through ``intent``."""
    return sf.fixture(
        version,
        "charge",
        payment_intent=intent,
        amount=1000,
        amount_captured=1000,
        amount_refunded=refunded,
        refunded=refunded == 1000,
        customer=None,
        metadata={},
    )


def refunds(sql: psycopg.Connection) -> list[tuple[str, Decimal, str | None]]:
    return sql.execute(
        "SELECT account_id, amount, details ->> 'payment_intent' FROM payment_ledger "
        "WHERE kind = 'refund' ORDER BY entry_id"
    ).fetchall()


class TestGuestCheckoutRefunds:
    @VERSIONS
    async def test_refund_finds_the_account_through_the_checkouts_payment_intent(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A charge.refunded naming no customer and no account is booked, as a reversing
        entry, to the account whose checkout paid through its payment intent."""
        session = guest_checkout(version)
        intent = session["payment_intent"]
        completed = sf.fixture_event(version, "checkout.session.completed", session, created=T0)
        assert await apply(engine, completed) == StripeOutcome.APPLIED
        recorded = sql.execute(
            "SELECT details ->> 'payment_intent' FROM payment_ledger WHERE kind = 'payment'"
        ).fetchall()
        assert recorded == [(intent,)]
        refund = sf.fixture_event(
            version, "charge.refunded", refunded_charge(version, intent, 1000), created=T0 + 60
        )
        assert await apply(engine, refund) == StripeOutcome.APPLIED
        assert refunds(sql) == [("acct_g", Decimal("-10.00"), intent)]
        outcome = sql.execute("SELECT outcome, account_id FROM stripe_events WHERE event_id = %s",
                              (refund["id"],)).fetchone()  # fmt: skip
        assert outcome == ("applied", "acct_g")

    @VERSIONS
    async def test_payment_intent_event_after_the_checkout_finds_its_account(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """payment_intent.succeeded of a guest checkout's intent (no customer, no metadata)
        arriving after the session is entered on the session's account."""
        session = guest_checkout(version)
        await apply(engine, sf.fixture_event(version, "checkout.session.completed", session,
                                             created=T0))  # fmt: skip
        intent = sp.payment_intent(
            session["payment_intent"], customer=None, amount=1000, status="succeeded"
        )
        succeeded = sf.fixture_event(version, "payment_intent.succeeded", intent, created=T0 + 1)
        assert await apply(engine, succeeded) == StripeOutcome.APPLIED
        entry = sql.execute(
            "SELECT account_id, details ->> 'payment_intent' FROM account_ledger "
            "WHERE kind = 'payment_intent_succeeded'"
        ).fetchall()
        assert entry == [("acct_g", session["payment_intent"])]

    @VERSIONS
    async def test_refund_of_an_unknown_payment_intent_is_still_dead_lettered(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A refund whose payment intent paid nothing the worker knows (and that names no
        customer or account) stays unknown_account, writing nothing."""
        session = guest_checkout(version)
        await apply(engine, sf.fixture_event(version, "checkout.session.completed", session,
                                             created=T0))  # fmt: skip
        refund = refunded_charge(version, "pi_nobody_knows", 1000)
        with pytest.raises(PermanentError, match="names no account") as caught:
            await apply(engine, sf.fixture_event(version, "charge.refunded", refund, created=T0))
        assert caught.value.reason == "unknown_account"
        assert refunds(sql) == []

    @VERSIONS
    async def test_refund_naming_another_account_than_its_payment_is_refused(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A refund of acct_g's checkout that names acct_b in its metadata is an
        account_mismatch naming both: no refund and no credits move."""
        session = guest_checkout(version)
        await apply(engine, sf.fixture_event(version, "checkout.session.completed", session,
                                             created=T0))  # fmt: skip
        charge = refunded_charge(version, session["payment_intent"], 1000)
        charge["metadata"] = {"account_id": "acct_b"}
        with pytest.raises(PermanentError, match="acct_g") as caught:
            await apply(engine, sf.fixture_event(version, "charge.refunded", charge, created=T0))
        assert caught.value.reason == "account_mismatch"
        assert "acct_b" in caught.value.detail
        assert refunds(sql) == []
        remaining = sql.execute("SELECT remaining FROM credit_grants").fetchall()
        assert remaining == [(Decimal(1000),)]


def paid_invoice(version: Version, intent: str) -> dict[str, Any]:
    """Stripe's example invoice, paid (9.90 usd) through ``intent``, in the version's own
    shape: ``payment_intent`` on the invoice (old), ``payments`` (new)."""
    fields: dict[str, Any] = {
        "status": "paid",
        "amount_due": 990,
        "amount_paid": 990,
        "currency": "usd",
        "metadata": {"account_id": "acct_i"},
    }
    if version == "old":
        fields["payment_intent"] = intent
    else:
        payments = [
            {"id": "inpay_0", "object": "invoice_payment", "amount_paid": 0,
             "is_default": False, "status": "canceled",
             "payment": {"type": "payment_intent", "payment_intent": "pi_abandoned"}},
            {"id": "inpay_1", "object": "invoice_payment", "amount_paid": 990,
             "is_default": True, "status": "paid",
             "payment": {"type": "payment_intent", "payment_intent": intent}},
        ]  # fmt: skip
        fields["payments"] = {"object": "list", "data": payments, "has_more": False}
    return sf.fixture(version, "invoice", **fields)


class TestInvoicePaymentIntents:
    @VERSIONS
    async def test_invoice_paid_records_its_payment_intent_and_its_refund_finds_it(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """invoice.paid keeps the payment intent that paid it (the paid one of the new
        shape's payments); a refund naming only that intent is booked to its account."""
        invoice = paid_invoice(version, "pi_invoice_1")
        paid = sf.fixture_event(version, "invoice.paid", invoice, created=T0)
        assert await apply(engine, paid) == StripeOutcome.APPLIED
        payment = sql.execute(
            "SELECT account_id, details ->> 'payment_intent' FROM payment_ledger"
        ).fetchall()
        assert payment == [("acct_i", "pi_invoice_1")]
        charge = refunded_charge(version, "pi_invoice_1", 500)
        refund = sf.fixture_event(version, "charge.refunded", charge, created=T0 + 1)
        assert await apply(engine, refund) == StripeOutcome.APPLIED
        assert refunds(sql) == [("acct_i", Decimal("-5.00"), "pi_invoice_1")]
        # an invoice is not a credit pack: no credits move
        assert sql.execute("SELECT count(*) FROM credit_ledger").fetchone() == (0,)


class TestCustomersThatNameNoAccount:
    @VERSIONS
    async def test_checkout_created_customer_is_ignored_then_linked_by_the_session(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """customer.created with empty metadata (Checkout made it) is acked as ignored with
        its reason logged, creating nothing; the session that follows links the customer,
        and a later customer.updated without metadata applies to that account."""
        customer = sf.fixture(version, "customer", metadata={})
        created = sf.fixture_event(version, "customer.created", customer, created=T0)
        with capture_logs() as logs:
            assert await apply(engine, created) == StripeOutcome.IGNORED
        assert [e["customer"] for e in logs if e["event"] == "stripe_customer_names_no_account"
                ] == [customer["id"]]  # fmt: skip
        assert "later events name it" in next(e["reason"] for e in logs if "reason" in e)
        assert sql.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
        assert sql.execute("SELECT outcome, account_id FROM stripe_events").fetchall() == [
            ("ignored", None)
        ]
        session = sf.fixture(
            version,
            "checkout.session",
            mode="subscription",
            status="complete",
            payment_status="paid",
            customer=customer["id"],
            client_reference_id="acct_c",
            payment_intent=None,
        )
        completed = sf.fixture_event(version, "checkout.session.completed", session, created=T0 + 1)
        assert await apply(engine, completed) == StripeOutcome.APPLIED
        updated = sf.fixture_event(version, "customer.updated", customer, created=T0 + 2)
        assert await apply(engine, updated) == StripeOutcome.APPLIED
        linked = sql.execute("SELECT customer_id, account_id FROM stripe_customers").fetchall()
        assert linked == [(customer["id"], "acct_c")]
        assert sql.execute(
            "SELECT outcome, account_id FROM stripe_events WHERE event_id = %s", (updated["id"],)
        ).fetchone() == ("applied", "acct_c")

    @VERSIONS
    async def test_customer_updated_of_an_unlinked_customer_naming_no_account_is_ignored(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """customer.updated that names no account, of a customer nothing linked, is ignored
        (not dead-lettered); one that then names the account links it."""
        customer = sf.fixture(version, "customer", metadata={})
        updated = sf.fixture_event(version, "customer.updated", customer, created=T0)
        assert await apply(engine, updated) == StripeOutcome.IGNORED
        named = {**customer, "metadata": {"account_id": "acct_n"}}
        later = sf.fixture_event(version, "customer.updated", named, created=T0 + 1)
        assert await apply(engine, later) == StripeOutcome.APPLIED
        assert sql.execute("SELECT account_id FROM stripe_customers").fetchall() == [("acct_n",)]


def subscription_with_items(
    version: Version, prices: list[str], *, periods: list[tuple[int, int]]
) -> dict[str, Any]:
    """Stripe's example subscription (active, of acct_s) with one item per price, each with
    its own period on the new shape; the old shape has the first period at top level."""
    sub = sf.fixture(
        version,
        "subscription",
        status="active",
        customer="cus_s",
        metadata={"account_id": "acct_s"},
        start_date=periods[0][0],
        billing_cycle_anchor=periods[0][0],
        ended_at=None,
        canceled_at=None,
        cancel_at=None,
    )
    template = sub["items"]["data"][0]
    items = []
    for n, (price, (start, end)) in enumerate(zip(prices, periods, strict=True)):
        item = {**template, "id": f"si_{n}", "price": {**template["price"], "id": price},
                "plan": {**template["plan"], "id": price}}  # fmt: skip
        if version == "new":
            item |= {"current_period_start": start, "current_period_end": end}
        items.append(item)
    sub["items"]["data"] = items
    if version == "old":
        sub |= {"current_period_start": periods[0][0], "current_period_end": periods[0][1]}
    return sub


class TestSubscriptionsWithSeveralItems:
    @VERSIONS
    async def test_plan_item_is_the_one_the_price_book_maps(
        self, version: Version, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """An unmapped metered add-on first and the PLUS price second: the account is on
        PLUS, the subscription keeps PLUS's price and (new shape) the PLUS item's period."""
        addon = (T0 - 5 * DAY, T0 + 2 * DAY)
        plus = (T0, T0 + 30 * DAY)
        periods = [addon, plus] if version == "new" else [plus, plus]
        sub = subscription_with_items(
            version, ["price_metered_addon", "price_plus_monthly"], periods=periods
        )
        event = sf.fixture_event(version, "customer.subscription.created", sub, created=T0)
        assert await apply(engine, event) == StripeOutcome.APPLIED
        assert sql.execute("SELECT plan, status FROM accounts").fetchall() == [("PLUS", "active")]
        stored = sql.execute(
            "SELECT price_id, current_period_start, current_period_end FROM subscriptions"
        ).fetchone()
        assert stored == (
            "price_plus_monthly",
            datetime.fromtimestamp(plus[0], UTC),
            datetime.fromtimestamp(plus[1], UTC),
        )

    @VERSIONS
    @pytest.mark.parametrize("order", ["plus_first", "pro_first"])
    async def test_two_plan_items_take_the_higher_fee_plan_whatever_the_order(
        self, version: Version, order: str, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """PLUS (9.90) and PRO (19.90) on one subscription, in either order: PRO."""
        prices = ["price_plus_monthly", "price_pro_monthly"]
        if order == "pro_first":
            prices.reverse()
        period = (T0, T0 + 30 * DAY)
        sub = subscription_with_items(version, prices, periods=[period, period])
        event = sf.fixture_event(version, "customer.subscription.created", sub, created=T0)
        assert await apply(engine, event) == StripeOutcome.APPLIED
        assert sql.execute("SELECT plan FROM accounts").fetchall() == [("PRO",)]
        assert sql.execute("SELECT price_id FROM subscriptions").fetchall() == [
            ("price_pro_monthly",)
        ]

    @VERSIONS
    async def test_no_item_mapped_is_still_unknown_price(
        self, version: Version, engine: AsyncEngine
    ) -> None:
        """Only unmapped prices: the live subscription is refused as unknown_price."""
        period = (T0, T0 + 30 * DAY)
        sub = subscription_with_items(version, ["price_gold", "price_addon"], periods=[period] * 2)
        event = sf.fixture_event(version, "customer.subscription.created", sub, created=T0)
        with pytest.raises(PermanentError, match="price_gold") as caught:
            await apply(engine, event)
        assert caught.value.reason == "unknown_price"
