"""The customer page in a real browser: the API served by uvicorn in a thread over a
database holding one account's months, and one Chromium per test module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import BrowserContext, Page, sync_playwright

from billing_worker.adapters.clock import SystemClock
from billing_worker.adapters.postgres.api_keys import PostgresApiKeys
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.api.app import create_app
from billing_worker.api.auth import KeyCheck, portal_token
from billing_worker.api.context import ApiContext
from billing_worker.config import Settings
from billing_worker.domain.pricebook import CreditSource
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import change_plan, grant_credits
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from tests.api.conftest import TOKEN_SECRET, api_settings
from tests.conftest import admin, database_url_for, drop_database
from tests.e2e.conftest import free_port
from tests.pricebooks import DEFAULT_BOOK

ACCOUNT = "acct_portal"
MOMENT = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
"""What time it is for the API these tests run: mid-November, two months invoiced."""
ARTIFACTS_VARIABLE = "BILLING_TEST_ARTIFACTS"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# (day, meter's event type, quantity): three months of an account on PLUS
USAGE = [
    (datetime(2026, 9, 15, 10, tzinfo=UTC), "chat.tokens", "310000"),
    (datetime(2026, 10, 10, 9, tzinfo=UTC), "chat.tokens", "640000"),
    (datetime(2026, 10, 12, 9, tzinfo=UTC), "generator.image_generated", "12"),
    (datetime(2026, 11, 2, 8, tzinfo=UTC), "chat.tokens", "95000"),
    (datetime(2026, 11, 3, 11, tzinfo=UTC), "chat.tokens", "120000"),
    (datetime(2026, 11, 5, 16, tzinfo=UTC), "chat.tokens", "80000"),
    (datetime(2026, 11, 9, 13, tzinfo=UTC), "generator.image_generated", "7"),
    (datetime(2026, 11, 12, 10, tzinfo=UTC), "chat.tokens", "210500"),
    (datetime(2026, 11, 16, 14, tzinfo=UTC), "generator.image_generated", "4"),
    (datetime(2026, 11, 19, 9, tzinfo=UTC), "chat.tokens", "46250"),
]
PROMO_EXPIRY = datetime(2027, 1, 31, tzinfo=UTC)


@dataclass
class Portal:
    """The running API, and tokens of every kind a customer may arrive with."""

    url: str
    token: str
    expired_token: str
    foreign_token: str
    unknown_account_token: str
    artifacts: Path

    def page_url(self, token: str | None) -> str:
        return f"{self.url}/portal" + (f"#token={token}" if token else "")

    def api(self, path: str, token: str | None = None) -> Any:
        """The API's own answer to ``path`` for ``token`` (the portal's by default)."""
        response = httpx.get(
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()


async def seed(engine: Any) -> None:
    """ACCOUNT on PLUS since September: usage on several days of each month, a
    promotional grant that expires, September and October invoiced."""
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731 - a factory, as the service takes
    start = USAGE[0][0] - timedelta(hours=1)
    await change_plan(uow, DEFAULT_BOOK, account=ACCOUNT, plan="PLUS", cause="test",
                      change_id="portal-plus", now=start)  # fmt: skip
    for n, (at, event_type, quantity) in enumerate(USAGE):
        record = UsageRecord("chat", f"u{n}", event_type, ACCOUNT, at, Decimal(quantity), {})
        await record_usage_batch(uow, DEFAULT_BOOK, [record], clock=lambda at=at: at)
        if at.month == 11 and at.day == 2:
            await close_due_periods(uow, DEFAULT_BOOK, as_of=at, grace=timedelta(hours=1))
    await grant_credits(uow, DEFAULT_BOOK, account=ACCOUNT, amount=Decimal("250.5"),
                        source=CreditSource.PROMOTIONAL, key="welcome", note="Welcome bonus",
                        now=datetime(2026, 11, 4, tzinfo=UTC), expires_at=PROMO_EXPIRY)  # fmt: skip


class ThreadedApi:
    """The API app served by uvicorn on a loop of its own thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.server: uvicorn.Server | None = None
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="portal-api", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.failure = exc
            self.ready.set()

    async def _serve(self) -> None:
        engine = create_engine_for(self.settings.database_url.get_secret_value(), pool_size=4)
        try:
            await seed(engine)
            ctx = ApiContext(self.settings, DEFAULT_BOOK, engine, KeyCheck(PostgresApiKeys(engine)))
            config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=self.port,
                                    log_config=None, access_log=False, lifespan="off")  # fmt: skip
            self.server = uvicorn.Server(config)
            self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            serving = asyncio.create_task(self.server.serve())
            while not self.server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            self.ready.set()
            await serving
        finally:
            await engine.dispose()

    def __enter__(self) -> str:
        self.thread.start()
        if not self.ready.wait(60) or self.failure is not None or self.server is None:
            raise RuntimeError("the API did not start") from self.failure
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def portal(template_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    name = f"bwt_portal_{uuid.uuid4().hex[:10]}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    offset = (MOMENT - SystemClock()()).total_seconds()
    settings = api_settings(database_url_for(name), "", clock_offset_seconds=offset)
    chosen = os.environ.get(ARTIFACTS_VARIABLE)
    artifacts = Path(chosen) if chosen else tmp_path_factory.mktemp("portal-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadedApi(settings) as url:
            yield Portal(
                url=url,
                token=portal_token(TOKEN_SECRET, ACCOUNT, MOMENT + timedelta(hours=1)),
                expired_token=portal_token(TOKEN_SECRET, ACCOUNT, MOMENT - timedelta(minutes=5)),
                foreign_token=portal_token("another-secret", ACCOUNT, MOMENT + timedelta(hours=1)),
                unknown_account_token=portal_token(
                    TOKEN_SECRET, "acct_nobody", MOMENT + timedelta(hours=1)
                ),
                artifacts=artifacts,
            )
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's Chromium, headless, on a fresh profile (never a downloaded browser)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    """A new tab, closed after the test; a script error or a policy violation fails it."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield tab
    tab.close()
    assert not errors, errors
