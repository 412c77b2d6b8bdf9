"""Publish usage events to ``billing.usage``: validated first, persistent, confirmed by the broker.

``UsagePublisher.publish`` builds the CloudEvents envelope from its arguments, validates it
with the worker's own model (:class:`schemas.UsageEvent`) before anything is sent, publishes
its canonical JSON persistent and mandatory on a publisher-confirms channel, and returns only
once the broker has confirmed. Anything short of a confirm raises :class:`UsageNotPublished`
carrying the event: publish that same event again (``publish_event(exc.event)``) and the
worker counts it once, because its idempotency key (``source``, ``id``) and content are
unchanged. Pass your own ``event_id`` (the id of the thing being billed: a completion, a
request) so that even a retry after a crash of your service sends the same key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Final, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from billing_worker.adapters.amqp.topology import Topology
from billing_worker.client.usage_event import (
    DEFAULT_AMQP_URL,
    Quantity,
    UsagePublishError,
    build_usage_event,
    usage_event_body,
    usage_routing_key,
)
from schemas.usage import DimensionValue, UsageEvent

CONFIRM_TIMEOUT_SECONDS: Final = 30.0


class UsageNotPublished(UsagePublishError):
    """The broker has not confirmed the event. Publish ``event`` again: same key, counted once."""

    def __init__(self, message: str, event: UsageEvent) -> None:
        super().__init__(message)
        self.event = event


class UsageRefused(UsageNotPublished):
    """The broker refused the event (a nack: e.g. the usage queue is full)."""


class UsageUnroutable(UsageNotPublished):
    """No queue is bound for the event's routing key, so the broker returned it."""


class UsagePublisher:
    """Publishes one service's usage events; use :meth:`connect` or :meth:`open`."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        *,
        source: str,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
        connection: AbstractConnection | None = None,
    ) -> None:
        self.source = source
        self._channel = channel
        self._exchange = exchange
        self._confirm_timeout = confirm_timeout
        self._connection = connection

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_AMQP_URL,
        *,
        source: str,
        namespace: str = "",
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
    ) -> UsagePublisher:
        """Connect (reconnecting robustly) and open a publisher; ``close`` closes both."""
        connection = await aio_pika.connect_robust(url)
        try:
            publisher = await cls.open(
                connection, source=source, namespace=namespace, confirm_timeout=confirm_timeout
            )
        except BaseException:
            await connection.close()
            raise
        publisher._connection = connection
        return publisher

    @classmethod
    async def open(
        cls,
        connection: AbstractConnection,
        *,
        source: str,
        namespace: str = "",
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
    ) -> UsagePublisher:
        """A publisher on a connection the service already holds, with a channel of its own."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # The same declaration as the worker's, so it is a no-op once the worker has run.
        exchange = await channel.declare_exchange(
            Topology(namespace).usage_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return cls(channel, exchange, source=source, confirm_timeout=confirm_timeout)

    async def publish(
        self,
        event_type: str,
        account: str,
        quantity: Quantity = 1,
        *,
        dimensions: Mapping[str, DimensionValue] | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> UsageEvent:
        """Build, validate and publish a usage event; return it once the broker confirmed.

        See :func:`build_usage_event` for the arguments. Raises :class:`InvalidUsageEvent`
        before publishing anything, or :class:`UsageNotPublished` (``UsageRefused``,
        ``UsageUnroutable``) when the broker did not take it.
        """
        event = build_usage_event(
            source=self.source,
            event_type=event_type,
            account=account,
            quantity=quantity,
            dimensions=dimensions,
            event_id=event_id,
            time=time,
        )
        await self.publish_event(event)
        return event

    async def publish_event(self, event: UsageEvent) -> None:
        """Publish an event built before (a retry of ``exc.event``); return once confirmed."""
        message = aio_pika.Message(
            usage_event_body(event),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=event.type,
            app_id=event.source,
        )
        routing_key = usage_routing_key(event.source, event.type)
        try:
            await self._exchange.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self._confirm_timeout
            )
        except aio_pika.exceptions.PublishError as exc:
            raise UsageUnroutable(
                f"{self._exchange.name} has no queue bound for {routing_key!r}: the worker has "
                "not declared its queue here yet, or the namespace differs",
                event,
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise UsageRefused(f"the broker refused event {event.id!r} (nack)", event) from exc
        except TimeoutError as exc:
            raise UsageNotPublished(
                f"no confirm for event {event.id!r} within {self._confirm_timeout}s", event
            ) from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq fails pending confirms with CancelledError when the connection dies.
            raise UsageNotPublished(
                f"connection lost before event {event.id!r} was confirmed", event
            ) from exc
        except (
            aio_pika.exceptions.AMQPError,
            ConnectionError,
            aio_pika.exceptions.ChannelInvalidStateError,
        ) as exc:
            raise UsageNotPublished(f"event {event.id!r} not published: {exc!r}", event) from exc

    @property
    def connected(self) -> bool:
        """Whether the channel is open now (a robust connection reopens it after a
        broker outage)."""
        return not self._channel.is_closed

    async def close(self) -> None:
        """Close the channel, and the connection if :meth:`connect` opened it."""
        await self._channel.close()
        if self._connection is not None:
            await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
