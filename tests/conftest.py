"""Fixtures on the real services: a database per test (cloned from a migrated template)
and a broker namespace per test, both removed afterwards.

Services are required, not optional: when PostgreSQL or RabbitMQ is down these fixtures
fail loudly rather than skip, so a green run always means the integration tests ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import psycopg
import pytest
import structlog
from sqlalchemy import make_url

from billing_worker.adapters.postgres.database import prepare_database
from tests.clock import TARGET_VARIABLE, now, travel_to
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK, register

SERVER_URL = os.environ.get(
    "BILLING_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("BILLING_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pytest_configure(config: pytest.Config) -> None:
    """``BILLING_TEST_NOW=TIME``: run the whole suite, and every worker it starts, as if it
    were TIME (it goes on ticking from there)."""
    target = os.environ.get(TARGET_VARIABLE)
    if target:
        travel_to(target)


def pytest_report_header(config: pytest.Config) -> str:
    """Say which day the suite runs on, so a failure can be replayed on it."""
    moved = " (BILLING_TEST_NOW)" if os.environ.get(TARGET_VARIABLE) else ""
    return f"clock: {now().isoformat(timespec='seconds')}{moved}"


def database_url_for(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the test server."""
    return make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same URL for plain psycopg."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def admin() -> psycopg.Connection:
    """An autocommit connection to the server's maintenance database."""
    return psycopg.connect(libpq_url(database_url_for("postgres")), autocommit=True)


def drop_database(name: str) -> None:
    """Drop ``name`` even if connections linger."""
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated once per session, cloned by each test that needs one."""
    name = f"bwt_template_{uuid.uuid4().hex[:10]}"
    prepare_database(database_url_for(name))
    with psycopg.connect(libpq_url(database_url_for(name)), autocommit=True) as conn:
        register(conn, DEFAULT_BOOK, FEATURES_BOOK)
    yield name
    drop_database(name)


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"bwt_{uuid.uuid4().hex[:12]}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield database_url_for(name)
    drop_database(name)


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """The URL of a database that does not exist yet (dropped afterwards if created)."""
    name = f"bwt_empty_{uuid.uuid4().hex[:10]}"
    yield database_url_for(name)
    drop_database(name)


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection to this test's database, for assertions."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A broker namespace of this test's own; its queues and exchanges are deleted after."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for queue in (
            "billing-worker.usage",
            "billing-worker.usage.dlq",
            "billing.quota.check",
            "billing-worker.stripe",
            "billing-worker.stripe.dlq",
        ):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(f"{ns}.{queue}")
        for exchange in ("billing.usage", "billing.events", "billing.stripe"):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(f"{ns}.{exchange}")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``cli.main`` configures logging for the process; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
