"""The HTTP API in this test's process, on its own database and broker namespace, called
through httpx; keys of every scope, and a portal-token secret."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from billing_worker.adapters.postgres.api_keys import PostgresApiKeys
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.api.app import create_app
from billing_worker.api.auth import KeyCheck
from billing_worker.api.context import ApiContext
from billing_worker.api.server import close_context, open_context
from billing_worker.config import Settings
from tests.clock import now
from tests.conftest import AMQP_URL
from tests.e2e.conftest import bus, start_worker  # noqa: F401 - fixtures for the API tests
from tests.pricebooks import DEFAULT_BOOK

TOKEN_SECRET = "test-portal-secret"  # noqa: S105 - a test's own secret
SCOPES = ("read", "ingest", "write", "admin")


@dataclass
class Api:
    """The API under test: its client, its context, a key per scope."""

    client: httpx.AsyncClient
    ctx: ApiContext
    keys: dict[str, str]

    def auth(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    async def get(self, path: str, scope: str = "read", **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(scope), **kw)

    async def post(self, path: str, scope: str = "write", **kw: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.auth(scope), **kw)

    def uow(self) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self.ctx.engine)


def api_settings(database_url: str, namespace: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "database_url": database_url,
        "namespace": namespace,
        "api_token_secret": TOKEN_SECRET,
        "startup_timeout_seconds": 15,
    }
    values.update(overrides)
    return Settings(**values)


async def keys_for(ctx: ApiContext) -> dict[str, str]:
    store = PostgresApiKeys(ctx.engine)
    return {scope: await store.create(f"test-{scope}", scope, now()) for scope in SCOPES}


@pytest.fixture
async def api(database_url: str, namespace: str) -> AsyncIterator[Api]:
    ctx = await open_context(api_settings(database_url, namespace), DEFAULT_BOOK)
    app = create_app(ctx)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, ctx, await keys_for(ctx))
    await close_context(ctx)


@pytest.fixture
async def offline_api(database_url: str, namespace: str) -> AsyncIterator[Api]:
    """The API with no broker connection (as when RabbitMQ is down at start)."""
    settings = api_settings(database_url, namespace)
    engine = create_engine_for(database_url, pool_size=2)
    ctx = ApiContext(settings, DEFAULT_BOOK, engine, KeyCheck(PostgresApiKeys(engine)))
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, ctx, await keys_for(ctx))
    await engine.dispose()
