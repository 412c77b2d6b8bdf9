"""Publishing billing events: the outbox relay, and the one message shape they share.

The relay takes the oldest unpublished outbox rows (locked, so replicas share the work
without publishing the same row at once), publishes them to ``billing.events`` with
publisher confirms, and marks them published in the same transaction. A crash between the
confirm and the mark publishes those rows again after restart: the same ids, the same
bodies, which subscribers drop by id. It wakes as soon as a transaction wrote outbox rows
(``wake()``), and polls every few seconds for rows written by other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.outbox_store import (
    PendingEvent,
    backlog,
    lock_pending,
    mark_published,
)

log = structlog.get_logger(__name__)

APP_ID = "billing-worker"
PUBLISH_TIMEOUT_SECONDS = 30.0


def billing_event_message(event_id: str, event_type: str, body: bytes) -> aio_pika.Message:
    """A persistent JSON message carrying one CloudEvents envelope."""
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
        type=event_type,
        app_id=APP_ID,
    )


class OutboxRelay:
    """Publishes outbox rows with confirms, then marks them; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: AbstractChannel,
        exchange_name: str,
        metrics: Metrics,
        *,
        batch_size: int = 200,
        poll_interval: float = 2.0,
        retry_pause: float = 1.0,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._exchange_name = exchange_name
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_pause = retry_pause
        self._exchange: AbstractExchange | None = None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """New rows were committed: publish them now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start relaying in the background."""
        self._exchange = await self._channel.get_exchange(self._exchange_name, ensure=False)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, grace: float = PUBLISH_TIMEOUT_SECONDS) -> None:
        """Stop once the round in progress is done: its rows published and marked, so a
        graceful stop publishes nothing twice. A round that outlasts ``grace`` seconds (a
        broker blocking publishers) is cancelled; its rows stay unmarked and go out again
        after the next start, with the same ids and bodies."""
        if self._task is None:
            return
        self._stop_requested.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            log.warning("outbox_relay_round_abandoned", grace_seconds=grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stop_requested.is_set():
            self._wake.clear()  # a wake-up during the round below starts the next at once
            try:
                published = await self.relay_once()
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # aiormq fails pending confirms with CancelledError when a connection
                # dies: a broker failure like any other, not a request to stop.
                log.warning("outbox_relay_failed", error="publish cancelled by the client")
                await self._pause(self._retry_pause, self._stop_requested)
                continue
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any one failure
                log.warning("outbox_relay_failed", error=repr(exc))
                await self._pause(self._retry_pause, self._stop_requested)
                continue
            if self._stop_requested.is_set():
                return
            if published >= self._batch_size:
                continue  # more are waiting
            await self._pause(self._poll_interval, self._wake)

    @staticmethod
    async def _pause(seconds: float, until: asyncio.Event) -> None:
        """Sleep ``seconds``, or less once ``until`` is set: after a round, new rows wake
        the relay; after a failure, only ``stop`` does (new rows must not hasten retries
        against a broker that is down)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await until.wait()

    async def relay_once(self) -> int:
        """Publish one round of pending rows; return how many were published and marked."""
        async with self._engine.connect() as conn, conn.begin():
            pending = await lock_pending(conn, self._batch_size)
            if pending:
                await self._publish(pending)
                await mark_published(conn, [p.outbox_id for p in pending])
            count, age = await backlog(conn)
        self._metrics.outbox_pending.set(count)
        self._metrics.outbox_oldest_age.set(age)
        for event in pending:
            self._metrics.outbox_published.labels(type=event.event_type).inc()
        return len(pending)

    async def _publish(self, pending: list[PendingEvent]) -> None:
        exchange = self._exchange
        if exchange is None:
            raise RuntimeError("relay not started")
        await asyncio.gather(
            *(
                exchange.publish(
                    billing_event_message(p.event_id, p.event_type, p.body),
                    routing_key=p.event_type,
                    mandatory=False,  # an event nobody subscribes to yet is still published
                    # a broker blocking publishers (memory or disk alarm) must not hold the
                    # transaction and its connection for as long as the alarm lasts
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                )
                for p in pending
            )
        )
