"""A graceful stop of the outbox relay finishes the round in flight: everything it
published is marked, so nothing goes out twice after a SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import psycopg
from aio_pika.abc import AbstractQueue

from billing_worker.adapters.amqp.billing_events import OutboxRelay
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.database import create_engine_for
from tests.e2e.conftest import Bus, received, wait_until

ROWS = 120


class GatedExchange:
    """The real exchange, but every publish waits for ``gate`` (a slow broker)."""

    def __init__(self, exchange: Any) -> None:
        self._exchange = exchange
        self.gate = asyncio.Event()
        self.calls = 0

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await self.gate.wait()
        return await self._exchange.publish(*args, **kwargs)


def pending_rows(sql: psycopg.Connection) -> int:
    return int(sql.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0])


async def test_stop_finishes_the_round_in_flight(
    bus: Bus, database_url: str, sql: psycopg.Connection, events_queue: AbstractQueue
) -> None:
    """Stop is asked while a round's publishes wait on the broker: it returns only once
    they are confirmed and marked; each event arrives once and no row is left unmarked."""
    sql.execute(
        "INSERT INTO outbox (event_id, event_type, subject, payload) "
        "SELECT 'stop-' || n, 'quota.warning', 'acct_s', jsonb_build_object('n', n) "
        "FROM generate_series(1, %s) AS n",
        (ROWS,),
    )
    engine = create_engine_for(database_url, pool_size=2)
    connection = await aio_pika.connect(bus.connection.url)
    channel = await connection.channel(publisher_confirms=True)
    relay = OutboxRelay(engine, channel, bus.name("billing.events"), Metrics(), batch_size=ROWS)
    try:
        await relay.start()
        gated = GatedExchange(relay._exchange)
        relay._exchange = gated  # type: ignore[assignment]
        relay.wake()
        await wait_until(lambda: gated.calls == ROWS, what="a round publishing")
        stopping = asyncio.create_task(relay.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done(), "stop returned while the round was still publishing"
        gated.gate.set()
        await asyncio.wait_for(stopping, 10)
    finally:
        await connection.close()
        await engine.dispose()
    assert pending_rows(sql) == 0
    messages = await received(events_queue, ROWS)
    ids = [m.message_id for m in messages]
    assert len(ids) == ROWS == len(set(ids))


async def test_a_round_past_the_grace_is_abandoned(
    bus: Bus, database_url: str, sql: psycopg.Connection
) -> None:
    """A round the broker never confirms is cancelled after the grace: stop returns, and
    the rows stay pending for the next start (published again then, never lost)."""
    sql.execute(
        "INSERT INTO outbox (event_id, event_type, subject, payload) "
        "VALUES ('stuck-1', 'quota.warning', 'acct_s', '{}')"
    )
    engine = create_engine_for(database_url, pool_size=2)
    connection = await aio_pika.connect(bus.connection.url)
    channel = await connection.channel(publisher_confirms=True)
    relay = OutboxRelay(engine, channel, bus.name("billing.events"), Metrics())
    try:
        await relay.start()
        gated = GatedExchange(relay._exchange)
        relay._exchange = gated  # type: ignore[assignment]
        relay.wake()
        await wait_until(lambda: gated.calls == 1, what="a round publishing")
        await asyncio.wait_for(relay.stop(grace=0.5), 5)
    finally:
        await connection.close()
        await engine.dispose()
    assert pending_rows(sql) == 1
