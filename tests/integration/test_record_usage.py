"""Recording usage batches on real PostgreSQL: exactly-once effect, also under concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.errors import TransientError, UnprocessableEvent
from billing_worker.domain.usage import UsageOutcome, UsageRecord
from billing_worker.service.record_usage import record_usage_batch
from tests.ledger_checks import aggregates_match_ledger
from tests.pricebooks import DEFAULT_BOOK

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def usage(
    i: int, account: str = "acct_1", quantity: int | Decimal = 10, **changes: object
) -> UsageRecord:
    fields: dict[str, object] = {
        "source": "chat-service",
        "event_id": f"evt-{i}",
        "event_type": "chat.tokens",
        "account": account,
        "occurred_at": T0 + timedelta(seconds=i),
        "quantity": Decimal(quantity),
        "dimensions": {"model": "gpt-4"},
    }
    fields.update(changes)
    return UsageRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=4)
    yield eng
    await eng.dispose()


async def record(engine: AsyncEngine, records: list[UsageRecord]) -> list[UsageOutcome]:
    return await record_usage_batch(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, records, clock=lambda: T0 + HOUR
    )


class TestRecordUsageBatch:
    async def test_new_events_reach_ledger_aggregates_and_accounts(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """New events are recorded; accounts appear on the default plan; totals add up."""
        outcomes = await record(engine, [usage(1), usage(2, quantity=5), usage(3, "acct_2")])
        assert outcomes == [UsageOutcome.RECORDED] * 3
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (3,)
        assert sql.execute("SELECT account_id, plan FROM accounts ORDER BY 1").fetchall() == [
            ("acct_1", "FREE"),
            ("acct_2", "FREE"),
        ]
        assert sql.execute(
            "SELECT quantity, event_count FROM usage_aggregates WHERE account_id = 'acct_1'"
        ).fetchone() == (Decimal(15), 2)
        assert aggregates_match_ledger(sql)

    async def test_redelivered_batch_has_no_effect(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Recording the same batch again gives duplicates and changes nothing."""
        batch = [usage(i) for i in range(20)]
        await record(engine, batch)
        before = sql.execute("SELECT quantity FROM usage_aggregates").fetchall()
        assert await record(engine, batch) == [UsageOutcome.DUPLICATE] * 20
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (20,)
        assert sql.execute("SELECT quantity FROM usage_aggregates").fetchall() == before

    async def test_same_key_other_content_is_conflict_without_effect(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A reused key with other content is a conflict and leaves the ledger alone."""
        await record(engine, [usage(1, quantity=10)])
        assert await record(engine, [usage(1, quantity=999)]) == [UsageOutcome.CONFLICT]
        assert sql.execute("SELECT sum(quantity) FROM usage_ledger").fetchone() == (Decimal(10),)

    async def test_repeats_within_one_batch(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A key twice in one batch records once; a third, different copy conflicts."""
        outcomes = await record(engine, [usage(1), usage(1), usage(1, quantity=3)])
        assert outcomes == [
            UsageOutcome.RECORDED,
            UsageOutcome.DUPLICATE,
            UsageOutcome.CONFLICT,
        ]
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (1,)

    async def test_events_land_in_the_month_their_time_names(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A late October event goes to October's aggregate, not the current month's."""
        october = datetime(2026, 10, 31, 23, 59, tzinfo=UTC)
        await record(engine, [usage(1), usage(2, occurred_at=october)])
        periods = sql.execute(
            "SELECT period_start FROM usage_aggregates ORDER BY period_start"
        ).fetchall()
        assert periods == [
            (datetime(2026, 10, 1, tzinfo=UTC),),
            (datetime(2026, 11, 1, tzinfo=UTC),),
        ]

    async def test_decimal_quantities_stay_exact(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """0.1 + 0.2 is 0.3 in the aggregate: no float anywhere on the way."""
        await record(
            engine,
            [
                usage(1, quantity=Decimal("0.1")),
                usage(2, quantity=Decimal("0.2")),
            ],
        )
        assert sql.execute("SELECT quantity FROM usage_aggregates").fetchone() == (Decimal("0.3"),)

    async def test_text_the_database_cannot_store_is_unprocessable(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A NUL character (valid JSON, impossible in PostgreSQL text) is a permanent error."""
        with pytest.raises(UnprocessableEvent):
            await record(engine, [usage(1, dimensions={"model": "gpt\u00004"})])
        assert sql.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)

    async def test_unreachable_database_is_transient(self) -> None:
        """A database that cannot be reached is a transient error, to be retried."""
        eng = create_engine_for(
            "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1", pool_size=1
        )
        try:
            with pytest.raises(TransientError):
                await record(eng, [usage(1)])
        finally:
            await eng.dispose()


class TestConcurrentReplicas:
    async def test_overlapping_batches_from_replicas_count_each_event_once(
        self, database_url: str, sql: psycopg.Connection
    ) -> None:
        """Replicas racing on overlapping keys and aggregates: no deadlock, no double count."""
        events = [usage(i, account=f"acct_{i % 7}", quantity=i % 13 + 1) for i in range(600)]
        engines = [create_engine_for(database_url, pool_size=2) for _ in range(4)]

        async def replica(seed: int, eng: AsyncEngine) -> None:
            rng = random.Random(seed)
            for _ in range(6):
                batch = rng.sample(events, 150)
                await record(eng, batch)

        try:
            await asyncio.gather(*(replica(seed, eng) for seed, eng in enumerate(engines)))
            # whatever the replicas missed, a final pass records; nothing twice
            await record(engines[0], events)
        finally:
            for eng in engines:
                await eng.dispose()
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (600,)
        assert sql.execute(
            "SELECT count(*) FROM (SELECT DISTINCT event_source, event_id FROM usage_ledger) k"
        ).fetchone() == (600,)
        total = sum(e.quantity for e in events)
        assert sql.execute("SELECT sum(quantity) FROM usage_aggregates").fetchone() == (total,)
        assert aggregates_match_ledger(sql)
