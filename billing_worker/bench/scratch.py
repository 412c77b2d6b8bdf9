"""Scratch resources for one measurement: a namespace and a database, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aio_pika
import psycopg
from aio_pika.abc import AbstractChannel
from sqlalchemy import make_url

from billing_worker.adapters.amqp.topology import Topology, declare_usage_topology
from billing_worker.adapters.postgres.database import prepare_database
from billing_worker.entrypoints.progress import progress

PUBLISH_WINDOW = 256
USAGE_ROUTING_KEY = "usage.bench.chat.tokens"


@dataclass(frozen=True, slots=True)
class Scratch:
    """Where one measurement runs."""

    amqp_url: str
    database_url: str
    topology: Topology

    @property
    def libpq_url(self) -> str:
        """The database URL for plain psycopg."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _admin_url(database_url: str) -> str:
    url = make_url(database_url).set(database="postgres", drivername="postgresql")
    return url.render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def scratch(amqp_url: str, database_url: str, label: str) -> AsyncIterator[Scratch]:
    """A fresh, migrated database and a declared namespace; both removed on exit."""
    suffix = uuid.uuid4().hex[:8]
    db_name = f"bench_{label}_{suffix}"
    db_url = make_url(database_url).set(database=db_name).render_as_string(hide_password=False)
    topology = Topology(f"bench-{label}-{suffix}")
    await asyncio.to_thread(prepare_database, db_url)
    # No connection is held across the body: a long body (a ledger preload) would let its
    # heartbeats lapse. Declaring and cleaning up each open their own.
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await declare_usage_topology(await connection.channel(), topology)
    try:
        yield Scratch(amqp_url, db_url, topology)
    finally:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await _delete_topology(await connection.channel(), topology)
        with psycopg.connect(_admin_url(database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


async def _delete_topology(channel: AbstractChannel, topology: Topology) -> None:
    for queue in (topology.usage_queue, Topology.dead_letter_queue(topology.usage_queue)):
        await channel.queue_delete(queue)
    for exchange in (topology.usage_exchange, topology.events_exchange):
        await channel.exchange_delete(exchange)


def usage_message(body: bytes) -> aio_pika.Message:
    """A usage event as producers must publish it: JSON, persistent."""
    return aio_pika.Message(
        body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
    )


async def publish(amqp_url: str, exchange_name: str, bodies: Sequence[bytes]) -> float:
    """Publish persistently with confirms, a window at a time; return the seconds it took."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with progress("publishing", total=len(bodies), unit="event") as bar:
            for start in range(0, len(bodies), PUBLISH_WINDOW):
                window = bodies[start : start + PUBLISH_WINDOW]
                await asyncio.gather(
                    *(
                        exchange.publish(usage_message(body), routing_key=USAGE_ROUTING_KEY)
                        for body in window
                    )
                )
                bar.update(len(window))
        return loop.time() - started


async def queue_depth(channel: AbstractChannel, queue: str) -> int:
    """Ready messages in ``queue``."""
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)
