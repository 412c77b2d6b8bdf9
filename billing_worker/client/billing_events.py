"""Subscribe to ``billing.events``: a durable queue of the service's own, typed events.

Events arrive at least once (the worker's outbox may publish one again after a crash) and
each carries a deterministic ``id``: drop repeats by ``id``. A delivery is acked only after
the handler returned; a handler that raises stops :meth:`BillingEventSubscriber.consume`
with its exception and the delivery goes back to the queue, so nothing is lost while the
service is fixed and restarted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Final, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from billing_worker.adapters.amqp.topology import Topology
from billing_worker.client.usage_event import DEFAULT_AMQP_URL
from schemas.events import EVENT_TYPES, BillingEvent

BillingEventHandler = Callable[[BillingEvent[Any]], Awaitable[None]]
"""What a service does with one event; the delivery is acked when it returns."""

DEFAULT_PREFETCH: Final = 100


class UnknownBillingEventType(ValueError):
    """The event's ``type`` is not one this version of :mod:`schemas` models."""


def parse_billing_event(body: bytes) -> BillingEvent[Any]:
    """The typed envelope (``QuotaExceededEvent``, ...) of one billing event's body.

    Raises ``pydantic.ValidationError`` for a malformed event and
    :class:`UnknownBillingEventType` for a type :data:`schemas.EVENT_TYPES` does not know.
    """
    head = json.loads(body)
    event_type = head.get("type") if isinstance(head, dict) else None
    envelope = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if envelope is None:
        raise UnknownBillingEventType(f"unknown billing event type {event_type!r}")
    return envelope.model_validate_json(body)


class BillingEventSubscriber:
    """A service's queue bound to the billing events it wants; use :meth:`connect`/:meth:`open`."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        connection: AbstractConnection | None = None,
    ) -> None:
        self.queue = queue
        self._channel = channel
        self._connection = connection

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_AMQP_URL,
        *,
        queue: str,
        namespace: str = "",
        event_types: Iterable[str] = EVENT_TYPES,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> BillingEventSubscriber:
        """Connect (reconnecting robustly) and declare the queue; ``close`` closes both."""
        connection = await aio_pika.connect_robust(url)
        try:
            subscriber = await cls.open(
                connection,
                queue=queue,
                namespace=namespace,
                event_types=event_types,
                prefetch=prefetch,
            )
        except BaseException:
            await connection.close()
            raise
        subscriber._connection = connection
        return subscriber

    @classmethod
    async def open(
        cls,
        connection: AbstractConnection,
        *,
        queue: str,
        namespace: str = "",
        event_types: Iterable[str] = EVENT_TYPES,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> BillingEventSubscriber:
        """Declare the durable quorum queue ``<namespace>.<queue>``, bound to each event type.

        ``event_types`` defaults to every type :data:`schemas.EVENT_TYPES` models; routing
        keys are the types, so ``"quota.*"`` works too.
        """
        topology = Topology(namespace)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        exchange = await channel.declare_exchange(
            topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        declared = await channel.declare_queue(
            topology.name(queue), durable=True, arguments={"x-queue-type": "quorum"}
        )
        for event_type in event_types:
            await declared.bind(exchange, routing_key=event_type)
        return cls(channel, declared)

    async def consume(self, handler: BillingEventHandler) -> None:
        """Hand each event to ``handler`` in turn, acking after it returns; until cancelled."""
        async with self.queue.iterator() as deliveries:
            async for message in deliveries:
                try:
                    await handler(parse_billing_event(message.body))
                except BaseException:
                    # Back to the queue; a dead channel returns it by itself.
                    with contextlib.suppress(
                        aio_pika.exceptions.AMQPError,
                        aio_pika.exceptions.ChannelInvalidStateError,
                    ):
                        await message.nack(requeue=True)
                    raise
                await message.ack()

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
