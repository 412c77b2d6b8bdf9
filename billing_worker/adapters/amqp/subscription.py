"""Consume a queue on a robust channel, handing over raw deliveries; resubscribe on recovery."""

from __future__ import annotations

import asyncio

import structlog
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel as UnderlayChannel
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError
from pamqp.commands import Basic

from billing_worker.adapters.amqp.delivery import AmqpDelivery, DeliveryCallback

log = structlog.get_logger(__name__)

RESUBSCRIBE_MAX_DELAY = 10.0


class QueueSubscription:
    """A ``basic.consume`` that outlives reconnects and broker-side cancels.

    aio-pika recovers the connection, the channel, its QoS and the declared queues; it
    restores only consumers registered through its own wrapper, so this one subscribes
    again from the channel's reopen callback, and when the broker cancels it (the queue
    was deleted, say), retrying with backoff until it holds. ``subscribed`` says whether
    deliveries can currently arrive, for readiness.
    """

    def __init__(self, channel: AbstractRobustChannel, queue: str) -> None:
        self._channel = channel
        self.name = queue
        self.subscribed = False
        self._callback: DeliveryCallback | None = None
        self._underlay: UnderlayChannel | None = None
        self._tag: str | None = None
        self._cancelled = False
        self._retrying: asyncio.Task[None] | None = None

    async def consume(self, callback: DeliveryCallback) -> str:
        """Start delivering to ``callback``; return the consumer tag."""
        self._callback = callback
        await self._subscribe()
        self._channel.reopen_callbacks.add(self._on_reopen)
        return self._tag or ""

    async def cancel(self, consumer_tag: str) -> None:
        """Stop deliveries (those in flight still arrive and must be settled)."""
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        if self._retrying is not None:
            self._retrying.cancel()
        self.subscribed = False
        if self._underlay is not None and not self._underlay.is_closed and self._tag:
            await self._underlay.basic_cancel(self._tag)

    async def _subscribe(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.name, self._on_raw, no_ack=False)
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        self._underlay, self._tag = underlay, ok.consumer_tag
        self.subscribed = True

    async def _on_raw(self, raw: DeliveredMessage) -> None:
        if self._callback is not None:
            self._callback(AmqpDelivery(raw))

    def _on_reopen(self, *_: object) -> None:
        self.subscribed = False
        self._resubscribe("channel reopened")

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag == self._tag:
            self.subscribed = False
            self._resubscribe("cancelled by the broker")

    def _resubscribe(self, why: str) -> None:
        if self._cancelled or (self._retrying is not None and not self._retrying.done()):
            return
        self._retrying = asyncio.create_task(self._subscribe_until_it_holds(why))

    async def _subscribe_until_it_holds(self, why: str) -> None:
        delay = 0.5
        while not self._cancelled:
            try:
                await self._subscribe()
            except (AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
                # RuntimeError covers aiormq's ChannelInvalidStateError
                log.warning(
                    "consumer_resubscribe_failed", queue=self.name, why=why, error=repr(exc)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY)
            else:
                log.info("consumer_resubscribed", queue=self.name, why=why)
                return
