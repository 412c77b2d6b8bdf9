"""The Python client speaks the API: the calls a product backend makes, end to end."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from billing_worker.client import ApiError, BillingApi
from tests.api.conftest import Api
from tests.api.test_reads import at_clock
from tests.e2e.conftest import event


def client_of(api: Api, scope: str) -> BillingApi:
    app = api.client._transport.app  # type: ignore[attr-defined]
    return BillingApi("http://api", key=api.keys[scope], transport=httpx.ASGITransport(app=app))


async def test_a_backend_round_trip(api: Api) -> None:
    """Send usage, grant credits, change the plan, check the quota, list invoices, mint a
    portal token and read with it; errors carry their problem document."""
    at_clock(api, datetime(2026, 11, 10, tzinfo=UTC))
    async with client_of(api, "write") as backend:
        results = await backend.send_events(
            [event("c1", subject="acct_b", time="2026-11-09T12:00:00Z")]
        )
        assert [r["status"] for r in results] == ["accepted"]
        granted = await backend.grant_credits("acct_b", "10", key="k")
        assert granted["granted"] is True
        changed = await backend.set_plan("acct_b", "PLUS")
        assert changed["plan"] == "PLUS"
        reply = await backend.quota_check("acct_b", "tokens", 10**9)
        assert reply.allowed is False
        assert [i async for i in backend.invoices("acct_b")] == []
        estimate = await backend.estimate({"websites_generated": 2}, plan="FREE")
        assert estimate["total"] == "1.00"
        token = (await backend.portal_token("acct_b"))["token"]
        with pytest.raises(ApiError) as caught:
            await backend.event("chat-service", "never")
        assert caught.value.status == 404
        assert caught.value.problem["status"] == 404
    app = api.client._transport.app  # type: ignore[attr-defined]
    async with BillingApi(
        "http://api", key=token, transport=httpx.ASGITransport(app=app)
    ) as portal:
        assert (await portal.account("acct_b"))["plan"] == "PLUS"
        with pytest.raises(ApiError) as caught:
            await portal.account("acct_other")
        assert caught.value.status == 404
