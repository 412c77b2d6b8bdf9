"""Every route refuses a missing key (401), a key of too small a scope (403), and a portal
token for another account (404 where portal tokens read, 403 elsewhere); keys are stored
hashed and revoked keys stop working."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from billing_worker.adapters.postgres.api_keys import PostgresApiKeys, secret_hash, split_key
from billing_worker.adapters.postgres.rejections import PostgresRejections
from billing_worker.api.auth import KeyCheck, portal_token
from billing_worker.entrypoints import cli
from billing_worker.service.ports import OutgoingEvent
from tests.api.conftest import TOKEN_SECRET, Api
from tests.clock import now

# (method, path) -> the scope it needs, and whether a portal token may read it
ROUTES = {
    ("GET", "/v1/plans"): ("read", False),
    ("GET", "/v1/accounts/{account}"): ("read", True),
    ("GET", "/v1/accounts/{account}/usage"): ("read", True),
    ("GET", "/v1/accounts/{account}/credits"): ("read", True),
    ("GET", "/v1/accounts/{account}/ledger"): ("read", True),
    ("GET", "/v1/accounts/{account}/invoices"): ("read", True),
    ("GET", "/v1/accounts/{account}/payments"): ("read", True),
    ("GET", "/v1/accounts/{account}/invoices/upcoming"): ("read", True),
    ("GET", "/v1/portal/me"): ("read", True),
    ("GET", "/v1/invoices/{invoice_id}"): ("read", True),
    ("GET", "/v1/invoices/{invoice_id}/pdf"): ("read", True),
    ("GET", "/v1/reports/{month}"): ("read", False),
    ("GET", "/v1/events/{source}/{event_id}"): ("read", False),
    ("POST", "/v1/quota/check"): ("read", False),
    ("POST", "/v1/estimate"): ("read", False),
    ("POST", "/v1/events"): ("ingest", False),
    ("PUT", "/v1/accounts/{account}/plan"): ("write", False),
    ("POST", "/v1/accounts/{account}/credits"): ("write", False),
    ("POST", "/v1/accounts/{account}/portal-tokens"): ("write", False),
    ("POST", "/v1/accounts/{account}/checkout-sessions"): ("write", False),
    ("POST", "/v1/accounts/{account}/portal-sessions"): ("write", False),
    ("POST", "/v1/invoices/{invoice_id}/finalize"): ("admin", False),
    ("POST", "/v1/invoices/{invoice_id}/void"): ("admin", False),
    ("POST", "/v1/invoices/{invoice_id}/mark-uncollectible"): ("admin", False),
}
WEAKER = {
    "read": ["ingest"],
    "ingest": ["read"],
    "write": ["read", "ingest"],
    "admin": ["read", "ingest", "write"],
}
PARAMS = {
    "account": "acct_a",
    "invoice_id": "inv-202611-acct_a",
    "action": "void",
    "month": "2026-11",
    "source": "svc",
    "event_id": "e1",
}


def concrete(path: str) -> str:
    for name, value in PARAMS.items():
        path = path.replace("{" + name + "}", value)
    return path


async def call(api: Api, method: str, path: str, headers: dict[str, str]) -> int:
    response = await api.client.request(method, concrete(path), headers=headers, json={})
    return response.status_code


def test_every_route_is_classified(api: Api) -> None:
    """The table above names every operation of the OpenAPI document, so none escapes
    these checks."""
    app = api.client._transport.app  # type: ignore[attr-defined]
    served = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert served == set(ROUTES)


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
async def test_no_key_is_401(api: Api, method: str, path: str) -> None:
    """Without a key, or with one nobody made: 401, as a problem document."""
    assert await call(api, method, path, {}) == 401
    response = await api.client.request(
        method, concrete(path), headers={"Authorization": "Bearer bwk_nope_nope"}, json={}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
async def test_too_small_a_scope_is_403(api: Api, method: str, path: str) -> None:
    """Every scope below what the route needs gets 403 naming both."""
    need, _ = ROUTES[(method, path)]
    for weaker in WEAKER[need]:
        response = await api.client.request(
            method, concrete(path), headers=api.auth(weaker), json={}
        )
        assert response.status_code == 403, (weaker, response.text)
        assert need in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
async def test_a_portal_token_of_another_account(api: Api, method: str, path: str) -> None:
    """A portal token for acct_other: 404 on what portal tokens read (acct_a's things are
    not there for it), 403 on everything else."""
    token = portal_token(TOKEN_SECRET, "acct_other", now() + timedelta(hours=1))
    _, portal = ROUTES[(method, path)]
    status = await call(api, method, path, {"Authorization": f"Bearer {token}"})
    assert status == (404 if portal else 403)


async def test_keys_are_stored_hashed_and_revocation_holds(api: Api) -> None:
    """The database holds no key, only a hash of its secret; a revoked key is refused
    once the replica's short cache has passed."""
    store = PostgresApiKeys(api.ctx.engine)
    key = await store.create("temp", "read", now())
    parts = split_key(key)
    assert parts is not None
    stored = await store.find(parts[0])
    assert stored is not None
    assert stored.secret_hash == secret_hash(parts[1])
    assert parts[1].encode() not in stored.secret_hash
    ticks = [0.0]
    check = KeyCheck(store, clock=lambda: ticks[0])
    assert await check.caller(key) is not None
    assert await check.caller(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await store.revoke("temp", now())
    assert await check.caller(key) is not None  # cached for a few seconds
    ticks[0] = 11.0
    assert await check.caller(key) is None


@pytest.mark.usefixtures("restore_logging")
def test_api_key_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    """api-key create prints the key once (--json with name and scope), a second key of
    that name is refused, list shows it without its secret, revoke ends it (exit 1 when
    there is nothing to revoke)."""
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    assert cli.main(["api-key", "create", "crm", "--scope", "write", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert (made["name"], made["scope"]) == ("crm", "write")
    assert made["key"].startswith("bwk_")
    assert cli.main(["api-key", "create", "crm", "--scope", "read"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert cli.main(["api-key", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert '"crm"' in listed
    assert made["key"].split("_")[2] not in listed
    assert cli.main(["api-key", "revoke", "crm"]) == 0
    assert cli.main(["api-key", "revoke", "crm"]) == 1


async def test_old_rejections_are_pruned(api: Api) -> None:
    """Rejections older than the retention are forgotten; newer ones stay."""
    rejections = PostgresRejections(api.ctx.engine)
    for event_id, age in (("old", 40), ("new", 1)):
        await rejections.record(
            [
                OutgoingEvent(
                    event_id, "usage.rejected", "a",
                    {"time": (now() - timedelta(days=age)).isoformat(),
                     "data": {"source": "s", "original_id": event_id, "reason": "r",
                              "detail": "d", "queue": "q"}},
                )
            ]
        )  # fmt: skip
    assert await rejections.prune(now() - timedelta(days=30)) == 1
    assert (await api.get("/v1/events/s/new")).json()["status"] == "rejected"
    assert (await api.get("/v1/events/s/old")).status_code == 404
