"""Consume a queue on a robust channel, handing over raw deliveries; resubscribe on recovery."""

from __future__ import annotations

import structlog
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel as UnderlayChannel
from aiormq.abc import DeliveredMessage

from billing_worker.adapters.amqp.delivery import AmqpDelivery, DeliveryCallback

log = structlog.get_logger(__name__)


class QueueSubscription:
    """A ``basic.consume`` that outlives reconnects.

    aio-pika recovers the connection, the channel, its QoS and the declared queues; it
    restores only consumers registered through its own wrapper, so this one subscribes
    again from the channel's reopen callback.
    """

    def __init__(self, channel: AbstractRobustChannel, queue: str) -> None:
        self._channel = channel
        self.name = queue
        self._callback: DeliveryCallback | None = None
        self._underlay: UnderlayChannel | None = None
        self._tag: str | None = None
        self._cancelled = False

    async def consume(self, callback: DeliveryCallback) -> str:
        """Start delivering to ``callback``; return the consumer tag."""
        self._callback = callback
        self._channel.reopen_callbacks.add(self._on_reopen)
        await self._subscribe()
        return self._tag or ""

    async def cancel(self, consumer_tag: str) -> None:
        """Stop deliveries (those in flight still arrive and must be settled)."""
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        if self._underlay is not None and not self._underlay.is_closed and self._tag:
            await self._underlay.basic_cancel(self._tag)

    async def _subscribe(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.name, self._on_raw, no_ack=False)
        self._underlay, self._tag = underlay, ok.consumer_tag

    async def _on_raw(self, raw: DeliveredMessage) -> None:
        if self._callback is not None:
            self._callback(AmqpDelivery(raw))

    async def _on_reopen(self, *_: object) -> None:
        if not self._cancelled:
            await self._subscribe()
            log.info("consumer_resubscribed", queue=self.name)
