"""``GET /v1/accounts/{account}/payments``: the payment ledger a page at a time, for read
keys and the account's own portal token, and through the Python client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from billing_worker.api.auth import portal_token
from billing_worker.client import BillingApi
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_fixtures as sf
from tests.api.conftest import TOKEN_SECRET, Api
from tests.clock import now
from tests.pricebooks import DEFAULT_BOOK

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())


async def apply(api: Api, payload: dict[str, Any]) -> None:
    outcome = await apply_stripe_event(api.uow, DEFAULT_BOOK, parse_stripe_event(payload), now=NOW)
    assert outcome == StripeOutcome.APPLIED


async def three_payments(api: Api) -> None:
    """acct_p pays two invoices (9.90 and 19.90) and gets 4.00 of the first refunded."""
    for n, amount in enumerate((990, 1990)):
        invoice = sf.fixture(
            "old",
            "invoice",
            id=f"in_{n}",
            status="paid",
            amount_due=amount,
            amount_paid=amount,
            currency="usd",
            payment_intent=f"pi_{n}",
            metadata={"account_id": "acct_p"},
        )
        await apply(api, sf.fixture_event("old", "invoice.paid", invoice, created=T0 + n))
    charge = sf.fixture("old", "charge", payment_intent="pi_0", amount=990, amount_refunded=400,
                        customer=None, metadata={})  # fmt: skip
    await apply(api, sf.fixture_event("old", "charge.refunded", charge, created=T0 + 5))


class TestPaymentsRoute:
    async def test_pages_cover_every_entry_once_newest_first(self, api: Api) -> None:
        """Three entries, two a page: refund, second payment, then the first; the last page
        has no next_cursor, and each entry carries its Stripe object and details."""
        await three_payments(api)
        first = (await api.get("/v1/accounts/acct_p/payments", params={"limit": 2})).json()
        assert [(p["kind"], p["amount"]) for p in first["payments"]] == [
            ("refund", "-4.00"),
            ("payment", "19.90"),
        ]
        assert first["payments"][0]["details"]["payment_intent"] == "pi_0"
        assert first["payments"][1]["stripe_object_id"] == "in_1"
        params = {"limit": 2, "cursor": first["next_cursor"]}
        second = (await api.get("/v1/accounts/acct_p/payments", params=params)).json()
        assert [(p["kind"], p["amount"]) for p in second["payments"]] == [("payment", "9.90")]
        assert second["next_cursor"] is None

    async def test_unknown_account_and_forged_cursor_are_problems(self, api: Api) -> None:
        """No such account: 404; a cursor this API did not hand out: 422; both as problem
        documents."""
        await three_payments(api)
        missing = await api.get("/v1/accounts/nobody/payments")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        for forged in ("bm90LWEtY3Vyc29y", "ImFiYyI", "LTE"):  # garbage, "abc", -1
            bad = await api.get("/v1/accounts/acct_p/payments", params={"cursor": forged})
            assert bad.status_code == 422, forged
            assert bad.headers["content-type"] == "application/problem+json"

    async def test_the_accounts_portal_token_reads_its_payments(self, api: Api) -> None:
        """A portal token of acct_p reads acct_p's payments."""
        await three_payments(api)
        token = portal_token(TOKEN_SECRET, "acct_p", now() + timedelta(hours=1))
        response = await api.client.get(
            "/v1/accounts/acct_p/payments", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200
        assert len(response.json()["payments"]) == 3

    async def test_the_client_iterates_every_payment(self, api: Api) -> None:
        """BillingApi.payments yields all three entries across pages, newest first."""
        await three_payments(api)
        app = api.client._transport.app  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app)
        async with BillingApi("http://api", key=api.keys["read"], transport=transport) as client:
            kinds = [(p["kind"], p["amount"]) async for p in client.payments("acct_p", page=1)]
        assert kinds == [("refund", "-4.00"), ("payment", "19.90"), ("payment", "9.90")]
