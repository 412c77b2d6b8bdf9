"""One chaos run's stage: a scratch database and namespace, worker processes, the bus.

A ``Stage`` creates a migrated database and a broker namespace with a queue bound to every
billing event (declared before anything runs, so no outgoing event is missed), spawns
``billing-worker run`` child processes on them, publishes the workload, waits for the run
to drain and collects what came out; everything is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aio_pika
import psycopg
from aio_pika.abc import AbstractChannel, AbstractConnection
from sqlalchemy import make_url

from billing_worker.adapters.amqp.topology import Topology, declare_usage_topology
from billing_worker.adapters.postgres.database import prepare_database
from billing_worker.chaos.counting import Counting, Incarnation
from billing_worker.chaos.invariants import BusMessage
from billing_worker.chaos.process import ChaosWorker, ScenarioFailed
from billing_worker.chaos.publisher import BROKER_ERRORS, ConfirmedPublisher
from billing_worker.entrypoints.progress import progress

POLL_SECONDS = 0.05
SCRAPE_SECONDS = 0.25
QUIET_SECONDS = 10.0


def libpq(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL in the form psycopg takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Stage:
    """Where one scenario runs; see the module docstring."""

    def __init__(
        self, label: str, *, amqp_url: str, server_url: str, logs: Path, total: int, patience: float
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.label = label
        self.amqp_url = amqp_url
        self._server_url = server_url
        self.database_url = (
            make_url(server_url)
            .set(database=f"chaos_{label}_{suffix}")
            .render_as_string(hide_password=False)
        )
        self.topology = Topology(f"chaos-{label}-{suffix}")
        self.collector = self.topology.name("chaos.billing-events")
        self.dead_letters = Topology.dead_letter_queue(self.topology.usage_queue)
        self.logs = logs
        self.patience = patience
        self.workers: list[ChaosWorker] = []
        self._publisher = ConfirmedPublisher(amqp_url, self.topology.usage_exchange)
        self._inspector: AbstractConnection | None = None
        self.total = total
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._progress = contextlib.ExitStack()
        self._bar: Any = None
        self._scraper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(prepare_database, self.database_url)
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            await declare_usage_topology(channel, self.topology)
            collector = await channel.declare_queue(
                self.collector, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await collector.bind(self.topology.events_exchange, routing_key="#")
        self._bar = self._progress.enter_context(
            progress(f"chaos {self.label}", total=self.total, unit="event")
        )
        self._scraper = asyncio.create_task(self._scrape_forever(), name="chaos-scraper")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.close()
        await self._stop_scraping()
        for worker in self.workers:
            worker.close()
        await self._publisher.close()
        if self._inspector is not None:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await self._inspector.close()
        if self._conn is not None:
            await self._conn.close()
        with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError):
            await self._delete_topology()
        with contextlib.suppress(psycopg.Error):
            await asyncio.to_thread(self._drop_database)

    def spawn(self, name: str, settings: dict[str, str] | None = None) -> ChaosWorker:
        """Start ``billing-worker run`` on this stage as a child process."""
        worker = ChaosWorker(
            name,
            amqp_url=self.amqp_url,
            database_url=self.database_url,
            namespace=self.topology.namespace,
            usage_queue=self.topology.usage_queue,
            log_path=self.logs / f"{self.label}-{name}.log",
            settings=settings or {},
            patience=self.patience,
        )
        self.workers.append(worker)
        return worker

    async def _scrape_forever(self) -> None:
        """Scrape every live worker a few times a second: each scrape must be consistent,
        and a killed worker's last scrape is all that is left of its counters."""
        while True:
            for worker in list(self.workers):
                if worker.alive:
                    await worker.scrape()
            await asyncio.sleep(SCRAPE_SECONDS)

    async def _stop_scraping(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
            self._scraper = None

    @property
    def incarnations(self) -> list[Incarnation]:
        """Every worker process this stage started, in order."""
        return [w.incarnation for w in self.workers]

    async def publish(self, bodies: Sequence[bytes], rate: float | None = None) -> None:
        """Publish to the usage exchange with confirms (see ``ConfirmedPublisher``)."""
        await self._publisher.publish(bodies, rate)

    @property
    def confirmed(self) -> int:
        """Deliveries the broker confirmed so far."""
        return self._publisher.confirmed

    @property
    def republished(self) -> int:
        """Deliveries published again because their confirm was lost in an outage."""
        return self._publisher.republished

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One integer from the stage's database (reconnecting across database restarts)."""
        for _ in range(3):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        libpq(self.database_url), autocommit=True, connect_timeout=5
                    )
                row = await (await self._conn.execute(sql, params or None)).fetchone()
                return int(row[0]) if row and row[0] is not None else 0
            except psycopg.OperationalError:
                if self._conn is not None:
                    await self._conn.close()
                self._conn = None
                await asyncio.sleep(0.2)
        return -1  # unreachable for now: the caller's wait goes on

    async def recorded(self) -> int:
        """Events recorded so far (claimed idempotency keys); moves the progress bar."""
        count = await self.scalar("SELECT count(*) FROM idempotency_keys")
        if self._bar is not None and count > self._bar.n:
            self._bar.update(count - self._bar.n)
        return count

    async def depth(self, queue: str) -> int:
        """Ready messages in ``queue`` (-1 while the broker can't be asked)."""
        try:
            if self._inspector is None or self._inspector.is_closed:
                self._inspector = await aio_pika.connect(self.amqp_url, timeout=5)
            channel = await self._inspector.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            finally:
                await channel.close()
        except BROKER_ERRORS:
            inspector, self._inspector = self._inspector, None
            if inspector is not None:
                with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                    await inspector.close()
            return -1
        return int(declared.declaration_result.message_count or 0)

    async def until(self, condition: Callable[[], Awaitable[bool]], what: str) -> float:
        """Poll ``condition`` until it holds; the seconds it took (at most ``patience``)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.patience):
                # the state polled is another process's (the worker's, the servers')
                while not await condition():  # noqa: ASYNC110
                    await asyncio.sleep(POLL_SECONDS)
        except TimeoutError as exc:
            raise ScenarioFailed(
                f"{self.label}: waited {self.patience:g}s in vain for {what}"
            ) from exc
        return time.monotonic() - started

    async def until_recorded(self, count: float) -> None:
        """Until at least ``count`` events are recorded."""

        async def reached() -> bool:
            return await self.recorded() >= count

        await self.until(reached, f"{count:.0f} events recorded")

    async def until_confirmed(self, count: int) -> None:
        """Until the broker confirmed at least ``count`` deliveries of ``publish``."""

        async def reached() -> bool:
            return self.confirmed >= count

        await self.until(reached, f"{count} deliveries published")

    async def drain(
        self,
        *,
        events: int,
        invalid: int,
        deliveries: int,
        live: Sequence[ChaosWorker],
        counting: Counting,
    ) -> float:
        """Until every event is recorded, every invalid one dead-lettered, the queue empty,
        the outbox published (and, counting exactly, every delivery counted); then until the
        live workers' counters stand still. Returns the seconds it took.

        A run that stands still for ``QUIET_SECONDS`` with an empty queue short of that is
        over too: what is missing was lost, and the checks will say so.
        """
        quiet = _Quiet()

        async def drained() -> bool:
            recorded = await self.recorded()
            dead = await self.depth(self.dead_letters)
            queued = await self.depth(self.topology.usage_queue)
            pending = await self.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            counts = [await w.scrape() for w in live]
            received = sum(c.received for c in counts if c is not None)
            if queued == 0 and quiet.for_long((recorded, dead, pending, received)):
                return True
            if recorded < events or dead < invalid or queued != 0 or pending:
                return False
            return counting is not Counting.EXACT or received >= deliveries

        seconds = await self.until(drained, "the run to drain")
        await self._stop_scraping()  # from here on, scrapes are taken in order, at rest
        for worker in live:
            await worker.settle()
        return seconds

    async def collect(self) -> tuple[list[BusMessage], list[BusMessage]]:
        """Take every billing event the collector queue holds, and every dead letter."""
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            return await _take_all(channel, self.collector), await _take_all(
                channel, self.dead_letters
            )

    async def _delete_topology(self) -> None:
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        async with connection:
            t = self.topology
            for queue in (t.usage_queue, self.dead_letters, t.quota_check_queue, self.collector):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(queue)
            for exchange in (t.usage_exchange, t.events_exchange):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(exchange)

    def _drop_database(self) -> None:
        name = make_url(self.database_url).database
        admin = libpq(self._server_url)
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Quiet:
    """Whether a state has stayed the same for ``QUIET_SECONDS``."""

    def __init__(self) -> None:
        self._state: object = None
        self._since = time.monotonic()

    def for_long(self, state: object) -> bool:
        if state != self._state:
            self._state, self._since = state, time.monotonic()
        return time.monotonic() - self._since >= QUIET_SECONDS


async def _take_all(channel: AbstractChannel, queue_name: str) -> list[BusMessage]:
    queue = await channel.declare_queue(queue_name, passive=True)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        taken.append(
            BusMessage(
                message_id=message.message_id,
                event_type=message.type,
                body=message.body,
                headers=dict(message.headers or {}),
            )
        )
    return taken
