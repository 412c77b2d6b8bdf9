"""``GET /v1/portal/me`` tells a portal token its account and expiry, and says why a token
is refused (expired or not valid), so the customer page can say it in words."""

from __future__ import annotations

from datetime import timedelta

from billing_worker.api.auth import portal_token
from billing_worker.service.accounts import change_plan
from tests.api.conftest import TOKEN_SECRET, Api
from tests.clock import now
from tests.pricebooks import DEFAULT_BOOK


async def me(api: Api, credential: str) -> tuple[int, dict[str, object]]:
    response = await api.client.get(
        "/v1/portal/me", headers={"Authorization": f"Bearer {credential}"}
    )
    return response.status_code, response.json()


async def test_a_token_learns_its_account(api: Api) -> None:
    """A good token: its account, its expiry and the API's time."""
    await change_plan(api.uow, DEFAULT_BOOK, account="acct_me", plan="PLUS", change_id="c",
                      now=now())  # fmt: skip
    expires = (now() + timedelta(minutes=30)).replace(microsecond=0)
    status, body = await me(api, portal_token(TOKEN_SECRET, "acct_me", expires))
    assert status == 200
    assert body["account"] == "acct_me"
    assert body["expires_at"] == expires.isoformat()
    assert isinstance(body["now"], str)


async def test_refused_tokens_say_why(api: Api) -> None:
    """Expired: 401 token_expired; another secret's or garbage: 401 token_invalid; a token
    for no account: 404; an API key (no account of its own): 403."""
    await change_plan(api.uow, DEFAULT_BOOK, account="acct_me", plan="PLUS", change_id="c",
                      now=now())  # fmt: skip
    later, earlier = now() + timedelta(hours=1), now() - timedelta(seconds=1)
    cases = [
        (portal_token(TOKEN_SECRET, "acct_me", earlier), 401, "token_expired"),
        (portal_token("another-secret", "acct_me", later), 401, "token_invalid"),
        (portal_token("another-secret", "acct_me", earlier), 401, "token_invalid"),
        ("bwp_garbage.sig", 401, "token_invalid"),
        (portal_token(TOKEN_SECRET, "acct_nobody", later), 404, None),
        (api.keys["read"], 403, None),
    ]
    for credential, expected, reason in cases:
        status, body = await me(api, credential)
        assert (status, body.get("reason")) == (expected, reason), credential
