"""A producer for chaos runs: persistent, confirmed, and riding out broker outages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange

from billing_worker.chaos.process import ScenarioFailed

WINDOW = 256
ROUTING_KEY = "usage.chaos.event"
RECONNECT_PAUSE_SECONDS = 0.5
GIVE_UP_SECONDS = 180.0
CONFIRM_SECONDS = 30.0
BROKER_ERRORS = (OSError, aio_pika.exceptions.AMQPError, TimeoutError)


class ConfirmedPublisher:
    """Publishes a window of deliveries at a time and waits for the broker's confirms.

    Deliveries whose confirm did not come (the connection died, the broker was stopped) are
    published again over a new connection, as a careful producer would: some of them may
    have reached the queue already, and the worker's deduplication absorbs the repeat.
    """

    def __init__(self, amqp_url: str, exchange: str) -> None:
        self._url = amqp_url
        self._exchange_name = exchange
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self.confirmed = 0
        self.republished = 0

    async def publish(self, bodies: Sequence[bytes], rate: float | None = None) -> None:
        """Publish every body, ``rate`` per second at most; give up after a long outage."""
        started, sent = time.monotonic(), 0
        pending = list(bodies)
        stuck_since: float | None = None
        while pending:
            window, pending = pending[:WINDOW], pending[WINDOW:]
            failed, sent_out = await self._publish_window(window)
            sent += len(window) - len(failed)
            self.confirmed += len(window) - len(failed)
            if failed:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > GIVE_UP_SECONDS:
                    raise ScenarioFailed("the broker confirmed nothing for too long")
                if sent_out:
                    self.republished += len(failed)
                pending = failed + pending
                await self._disconnect()
                await asyncio.sleep(RECONNECT_PAUSE_SECONDS)
                continue
            stuck_since = None
            if rate is not None and (ahead := started + sent / rate - time.monotonic()) > 0:
                await asyncio.sleep(ahead)

    async def close(self) -> None:
        """Close the connection, if any."""
        await self._disconnect()

    async def _publish_window(self, window: list[bytes]) -> tuple[list[bytes], bool]:
        """Publish ``window`` concurrently: the bodies the broker did not confirm, and
        whether they were sent at all (not when there was no connection to send them on)."""
        try:
            exchange = await self._connected_exchange()
        except BROKER_ERRORS:
            return window, False
        results = await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=ROUTING_KEY,
                    timeout=CONFIRM_SECONDS,
                )
                for body in window
            ),
            return_exceptions=True,  # a lost connection fails (or cancels) each publish
        )
        failed = [b for b, r in zip(window, results, strict=True) if isinstance(r, BaseException)]
        return failed, True

    async def _connected_exchange(self) -> AbstractExchange:
        if self._connection is None or self._connection.is_closed or self._exchange is None:
            await self._disconnect()
            self._connection = await aio_pika.connect(self._url, timeout=5)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.get_exchange(self._exchange_name, ensure=False)
        return self._exchange

    async def _disconnect(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await connection.close()
