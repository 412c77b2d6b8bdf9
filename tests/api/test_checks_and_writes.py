"""The quota check answers as over AMQP (429 and Retry-After when not allowed), estimates
are rated by the close's code, and the writes are the CLI's use cases: the same ledger
entries and billing events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing_worker.adapters.postgres.account_store import PostgresUsageReader
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.quota_check import answer_request
from billing_worker.service.record_usage import record_usage_batch
from schemas.quota_check import QuotaCheckRequest
from tests.api.conftest import Api
from tests.api.test_reads import at_clock
from tests.pricebooks import DEFAULT_BOOK

NOV_10 = datetime(2026, 11, 10, tzinfo=UTC)


async def use_tokens(api: Api, account: str, quantity: int) -> None:
    record = UsageRecord("svc", f"q-{account}", "chat.tokens", account, NOV_10, Decimal(quantity))
    await record_usage_batch(api.uow, DEFAULT_BOOK, [record], clock=lambda: NOV_10)


async def test_quota_check_is_the_amqp_answer(api: Api) -> None:
    """FREE allows 100,000 tokens: with 81,234 used, 2,000 more is 200; 18,767 more is
    429 with the same body as the AMQP reply and Retry-After the seconds to Dec 1."""
    await use_tokens(api, "acct_q", 81_234)
    at_clock(api, NOV_10 + timedelta(hours=1))
    allowed = await api.post(
        "/v1/quota/check", "read", json={"account": "acct_q", "meter": "tokens", "quantity": 2000}
    )
    assert allowed.status_code == 200
    assert allowed.json()["remaining"] == "18766"
    refused = await api.post(
        "/v1/quota/check",
        "read",
        json={"account": "acct_q", "meter": "tokens", "quantity": "18767"},
    )
    assert refused.status_code == 429
    now = api.ctx.settings.clock()
    over_amqp = await answer_request(
        PostgresUsageReader(api.ctx.engine),
        DEFAULT_BOOK,
        QuotaCheckRequest(account="acct_q", meter="tokens", quantity=Decimal(18767)),
        now,
    )
    assert refused.json() == over_amqp.model_dump(mode="json")
    seconds = (datetime(2026, 12, 1, tzinfo=UTC) - now).total_seconds()
    assert abs(int(refused.headers["Retry-After"]) - seconds) <= 2
    unknown = await api.post("/v1/quota/check", "read", json={"account": "a", "meter": "x"})
    assert unknown.status_code == 422
    assert "no meter 'x'" in unknown.json()["detail"]


async def test_estimates_by_hand(api: Api) -> None:
    """PLUS (9.90) with 3 websites at 0.50 and 1,000 gpt-4 tokens at 0.002: 9.90 + 1.50 +
    2.00 = 13.40; an unknown plan or meter, or both account and plan, are 422."""
    at_clock(api, NOV_10)
    response = await api.post(
        "/v1/estimate",
        "read",
        json={"plan": "PLUS", "usage": {"websites_generated": "3",
                                          "inference_tokens": {"gpt-4": "1000"}}},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total"], body["currency"]) == ("13.40", "usd")
    assert body["period"]["start"] == "2026-11-01T00:00:00+00:00"
    for bad in (
        {"plan": "GOLD", "usage": {}},
        {"plan": "PLUS", "usage": {"bananas": "1"}},
        {"plan": "PLUS", "account": "a", "usage": {}},
        {"plan": "PLUS", "usage": {"tokens": "-1"}},
    ):
        assert (await api.post("/v1/estimate", "read", json=bad)).status_code == 422, bad


async def test_plan_change_and_grant_are_the_clis(api: Api) -> None:
    """PUT plan writes a plan_changed entry and subscription.changed, as set-plan does;
    POST credits with a key grants once; an unknown plan is 422."""
    response = await api.client.put(
        "/v1/accounts/acct_w/plan", headers=api.auth("write"), json={"plan": "PRO"}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["previous_plan"], response.json()["plan"]) == (None, "PRO")
    async with api.ctx.engine.connect() as conn:
        kinds = (
            (
                await conn.exec_driver_sql(
                    "SELECT kind FROM account_ledger WHERE account_id = 'acct_w'"
                )
            )
            .scalars()
            .all()
        )
        events = (
            (await conn.exec_driver_sql("SELECT event_type FROM outbox WHERE subject = 'acct_w'"))
            .scalars()
            .all()
        )
    assert "plan_changed" in kinds
    assert "subscription.changed" in events
    grant = {"amount": "250", "key": "welcome", "note": "launch"}
    first = await api.post("/v1/accounts/acct_w/credits", json=grant)
    again = await api.post("/v1/accounts/acct_w/credits", json=grant)
    assert (first.status_code, first.json()["granted"]) == (201, True)
    assert again.json()["granted"] is False
    bad = await api.client.put(
        "/v1/accounts/acct_w/plan", headers=api.auth("write"), json={"plan": "GOLD"}
    )
    assert bad.status_code == 422


async def test_invoice_moves_need_admin_and_follow_the_rules(api: Api) -> None:
    """void moves an open invoice (a ledger entry); voiding it again is a no-op;
    finalizing a void one is a 409; an unknown invoice 404."""
    await use_tokens(api, "acct_m", 10)
    await close_due_periods(
        api.uow, DEFAULT_BOOK, as_of=datetime(2026, 12, 2, tzinfo=UTC), grace=timedelta(hours=1)
    )
    voided = await api.post("/v1/invoices/inv-202611-acct_m/void", "admin")
    assert voided.json() == {"id": "inv-202611-acct_m", "from": "open", "to": "void"}
    assert (await api.post("/v1/invoices/inv-202611-acct_m/void", "admin")).status_code == 200
    assert (await api.post("/v1/invoices/inv-202611-acct_m/finalize", "admin")).status_code == 409
    assert (await api.post("/v1/invoices/nope/void", "admin")).status_code == 404


async def test_portal_tokens_read_one_account_until_they_expire(api: Api) -> None:
    """A minted token reads acct_t (its account, its invoice list) and nothing else; it
    stops working when it expires or the secret changes."""
    await use_tokens(api, "acct_t", 10)
    minted = await api.post("/v1/accounts/acct_t/portal-tokens", json={"ttl_seconds": 600})
    assert minted.status_code == 201
    token = {"Authorization": f"Bearer {minted.json()['token']}"}
    assert (await api.client.get("/v1/accounts/acct_t", headers=token)).status_code == 200
    assert (await api.client.get("/v1/accounts/acct_t/invoices", headers=token)).status_code == 200
    assert (await api.client.get("/v1/accounts/acct_x", headers=token)).status_code == 404
    assert (await api.client.get("/v1/plans", headers=token)).status_code == 403
    later = api.ctx.settings.clock() + timedelta(seconds=601)
    at_clock(api, later)
    expired = await api.client.get("/v1/accounts/acct_t", headers=token)
    assert (expired.status_code, "expired" in expired.json()["detail"]) == (401, True)
    at_clock(api, later - timedelta(seconds=300))
    api.ctx.settings = api.ctx.settings.model_copy(update={"api_token_secret": None})
    assert (await api.client.get("/v1/accounts/acct_t", headers=token)).status_code == 401
    off = await api.post("/v1/accounts/acct_t/portal-tokens")
    assert off.status_code == 503
