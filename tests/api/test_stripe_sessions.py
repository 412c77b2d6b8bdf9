"""Stripe Checkout and customer-portal sessions through the API, against the local fake
Stripe: the session names the account so that the signed events Stripe later sends for
it, fed to a running worker, put the account on its plan or grant its credits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from billing_worker.api.app import create_app
from billing_worker.api.server import close_context, open_context
from billing_worker.client.http_api import BillingApi
from tests import stripe_payloads as sp
from tests.api.conftest import Api, api_settings, keys_for
from tests.clock import unix_now
from tests.e2e.conftest import Bus, StartWorker, wait_until
from tests.e2e.test_stripe_consumer import deliver
from tests.fake_stripe import FakeStripe
from tests.pricebooks import DEFAULT_BOOK

ACCOUNT = "acct_checkout"
URLS = {"success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"}


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(customers={"cus_known"}) as server:
        server.prices |= set(DEFAULT_BOOK.stripe_prices)
        yield server


@pytest.fixture
async def stripe_api(database_url: str, namespace: str, fake: FakeStripe) -> AsyncIterator[Api]:
    """The API with a Stripe key, talking to the fake."""
    settings = api_settings(
        database_url, namespace, stripe_api_key=fake.api_key, stripe_api_base=fake.base_url
    )
    ctx = await open_context(settings, DEFAULT_BOOK)
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, ctx, await keys_for(ctx))
    await close_context(ctx)


def link_known_customer(sql: psycopg.Connection) -> None:
    """The account exists, linked to Stripe customer cus_known."""
    sql.execute("INSERT INTO accounts (account_id, plan) VALUES (%s, 'FREE')", (ACCOUNT,))
    sql.execute(
        "INSERT INTO stripe_customers (customer_id, account_id) VALUES ('cus_known', %s)",
        (ACCOUNT,),
    )


def completed(session: dict[str, Any], *, customer: str, **extra: Any) -> dict[str, Any]:
    """``checkout.session.completed`` as Stripe sends it for ``session``: the names the
    request gave it, the customer Checkout made."""
    obj = sp.checkout_session(
        session["id"],
        mode=session["mode"],
        customer=customer,
        client_reference_id=session["client_reference_id"],
        **extra,
    )
    obj["metadata"] = dict(session["metadata"])
    return sp.event("checkout.session.completed", obj, created=unix_now())


class TestCheckout:
    """Sessions that sell a plan or a credit pack."""

    async def test_a_plan_checkout_puts_the_account_on_the_plan(
        self,
        stripe_api: Api,
        fake: FakeStripe,
        start_worker: StartWorker,
        bus: Bus,
        sql: psycopg.Connection,
    ) -> None:
        """POST checkout-sessions for PLUS makes a subscription session naming the account
        in client_reference_id, metadata and subscription_data; the customer Checkout
        makes (no metadata), the completed session and the subscription events Stripe
        then sends put the account on PLUS, with nothing dead-lettered."""
        await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
        answer = await stripe_api.client.post(
            f"/v1/accounts/{ACCOUNT}/checkout-sessions",
            json={"plan": "PLUS", **URLS},
            headers={**stripe_api.auth("write"), "Idempotency-Key": "order-1"},
        )
        assert answer.status_code == 201, answer.text
        (session,) = fake.checkout_sessions
        assert answer.json() == {"id": session["id"], "url": session["url"], "mode": "subscription"}
        assert (session["client_reference_id"], session["metadata"]) == (
            ACCOUNT,
            {"account_id": ACCOUNT},
        )
        assert session["subscription_data"] == {"metadata": {"account_id": ACCOUNT}}
        (request,) = fake.requests_to("POST /v1/checkout/sessions")
        assert request.idempotency_key == f"billing-worker:checkout:{ACCOUNT}:order-1"

        subscription = sp.subscription(
            "sub_checkout",
            customer="cus_new",
            price_id=session["line_items"]["price"],
            status="active",
            current_period_start=unix_now() - 60,
            current_period_end=unix_now() + 30 * 86_400,
        )
        subscription["metadata"] = dict(session["subscription_data"]["metadata"])
        now = unix_now()
        await deliver(bus, sp.event("customer.created", sp.customer("cus_new"), created=now))
        await deliver(bus, sp.event("customer.subscription.created", subscription, created=now))
        await deliver(bus, completed(session, customer="cus_new", subscription="sub_checkout"))

        def state() -> tuple[Any, ...] | None:
            return sql.execute(
                "SELECT a.plan, c.customer_id FROM accounts AS a "
                "JOIN stripe_customers AS c USING (account_id) WHERE a.account_id = %s",
                (ACCOUNT,),
            ).fetchone()

        await wait_until(lambda: state() == ("PLUS", "cus_new"), what="the plan")
        outcomes = sql.execute(
            "SELECT event_type, outcome FROM stripe_events ORDER BY event_type"
        ).fetchall()
        assert outcomes == [
            ("checkout.session.completed", "applied"),
            ("customer.created", "ignored"),
            ("customer.subscription.created", "applied"),
        ]

    async def test_a_credit_pack_checkout_grants_its_credits(
        self,
        stripe_api: Api,
        fake: FakeStripe,
        start_worker: StartWorker,
        bus: Bus,
        sql: psycopg.Connection,
    ) -> None:
        """Two packs of credits_1000 for a new account: a payment session that asks
        Checkout to make a customer and carries price_id and quantity on the session and
        on its payment intent; once paid, the account has 2,000 purchased credits."""
        await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/checkout-sessions",
            json={"price_id": "price_credits_1000", "quantity": 2, **URLS},
        )
        assert answer.status_code == 201, answer.text
        (session,) = fake.checkout_sessions
        names = {"account_id": ACCOUNT, "price_id": "price_credits_1000", "quantity": "2"}
        assert (session["mode"], session["metadata"]) == ("payment", names)
        assert session["payment_intent_data"] == {"metadata": names}
        assert session["customer_creation"] == "always"
        assert session["line_items"] == {"price": "price_credits_1000", "quantity": 2}
        await deliver(
            bus,
            completed(
                session,
                customer="cus_buyer",
                price_id="price_credits_1000",
                quantity=2,
                amount_total=2000,
                payment_intent="pi_buyer",
            ),
        )

        def purchased() -> Any:
            row = sql.execute(
                "SELECT sum(amount) FROM credit_grants WHERE account_id = %s AND source = "
                "'purchase'",
                (ACCOUNT,),
            ).fetchone()
            return row[0] if row else None

        await wait_until(lambda: purchased() == 2000, what="the credits")

    async def test_a_linked_account_checks_out_as_its_customer(
        self, stripe_api: Api, fake: FakeStripe, sql: psycopg.Connection
    ) -> None:
        """An account already linked to a Stripe customer gets a session for that
        customer (no second customer is made)."""
        link_known_customer(sql)
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/checkout-sessions",
            json={"price_id": "price_credits_1000", **URLS},
        )
        assert answer.status_code == 201, answer.text
        (session,) = fake.checkout_sessions
        assert (session["customer"], session["customer_creation"]) == ("cus_known", None)

    @pytest.mark.parametrize(
        ("body", "reason", "words"),
        [
            ({"price_id": "price_nope"}, "unknown_price", "price_nope"),
            ({"plan": "FREE"}, "plan_without_price", "FREE has no Stripe price"),
            ({"plan": "GOLD"}, "unknown_plan", "GOLD"),
        ],
    )
    async def test_what_cannot_be_sold_is_a_422_that_says_why(
        self, stripe_api: Api, fake: FakeStripe, body: dict[str, str], reason: str, words: str
    ) -> None:
        """An unmapped price, a plan without a Stripe price, an unknown plan: 422 naming
        it, and nothing asked of Stripe."""
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/checkout-sessions", json={**body, **URLS}
        )
        assert answer.status_code == 422
        assert answer.json()["reason"] == reason
        assert words in answer.json()["detail"]
        assert fake.requests == []

    async def test_a_second_subscription_is_refused(
        self, stripe_api: Api, fake: FakeStripe, sql: psycopg.Connection
    ) -> None:
        """An account with a live subscription is sent to the customer portal (409)
        instead of getting a second subscription."""
        sql.execute("INSERT INTO accounts (account_id, plan) VALUES (%s, 'PLUS')", (ACCOUNT,))
        sql.execute(
            "INSERT INTO subscriptions (subscription_id, account_id, plan, status) "
            "VALUES ('sub_live', %s, 'PLUS', 'active')",
            (ACCOUNT,),
        )
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/checkout-sessions", json={"plan": "PRO", **URLS}
        )
        assert answer.status_code == 409
        assert "sub_live" in answer.json()["detail"]

    async def test_a_price_stripe_does_not_know_is_a_422_with_stripes_words(
        self, stripe_api: Api, fake: FakeStripe
    ) -> None:
        """The price book maps a price Stripe has no such price for: 422 quoting Stripe."""
        fake.prices.clear()
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/checkout-sessions", json={"plan": "PLUS", **URLS}
        )
        assert answer.status_code == 422
        assert "No such price" in answer.json()["detail"]


class TestPortal:
    """Sessions of Stripe's customer portal."""

    async def test_a_linked_account_gets_a_portal_url(
        self, stripe_api: Api, fake: FakeStripe, sql: psycopg.Connection
    ) -> None:
        """The session is for the account's Stripe customer, with the return URL."""
        link_known_customer(sql)
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/portal-sessions",
            json={"return_url": "https://app.example/billing"},
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["url"].startswith("https://billing.stripe.com/p/session/bps_")
        (request,) = fake.requests_to("POST /v1/billing_portal/sessions")
        assert request.params == {
            "customer": "cus_known",
            "return_url": "https://app.example/billing",
        }

    async def test_an_account_without_a_customer_is_a_409(
        self, stripe_api: Api, fake: FakeStripe
    ) -> None:
        """No Stripe customer yet: 409 saying how it gets one."""
        answer = await stripe_api.post(
            f"/v1/accounts/{ACCOUNT}/portal-sessions",
            json={"return_url": "https://app.example/billing"},
        )
        assert answer.status_code == 409
        assert answer.json()["reason"] == "no_stripe_customer"


@pytest.mark.parametrize("path", ["checkout-sessions", "portal-sessions"])
async def test_without_a_stripe_key_the_sessions_are_off(api: Api, path: str) -> None:
    """503 saying which setting turns them on."""
    body = (
        {"plan": "PLUS", **URLS} if path == "checkout-sessions" else {"return_url": "https://a.b"}
    )
    answer = await api.post(f"/v1/accounts/{ACCOUNT}/{path}", json=body)
    assert answer.status_code == 503
    assert "BILLING_STRIPE_API_KEY" in answer.json()["detail"]


async def test_the_python_client_makes_both_sessions(
    stripe_api: Api, fake: FakeStripe, sql: psycopg.Connection
) -> None:
    """BillingApi.checkout_session sends the idempotency key and the pack quantity;
    portal_session answers the portal URL."""
    link_known_customer(sql)
    client = BillingApi(
        "http://api",
        key=stripe_api.keys["write"],
        transport=httpx.ASGITransport(app=create_app(stripe_api.ctx)),
    )
    made = await client.checkout_session(
        ACCOUNT, price_id="price_credits_1000", quantity=3, idempotency_key="k1", **URLS
    )
    assert made["mode"] == "payment"
    (request,) = fake.requests_to("POST /v1/checkout/sessions")
    assert request.idempotency_key == f"billing-worker:checkout:{ACCOUNT}:k1"
    assert request.params["line_items"] == {"0": {"price": "price_credits_1000", "quantity": "3"}}
    portal = await client.portal_session(ACCOUNT, return_url="https://app.example/b")
    assert portal["url"].startswith("https://billing.stripe.com/")
